"""The synthetic world on disk: encoding an image and its label, the train/val split, and `generate`, which writes
the VOC layout with its lists, classes, metadata and README."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from refine_cli.config import SynthConfig
from refine_cli.data.synth.appearance import texture_pool
from refine_cli.data.synth.rendering import SPLIT_STREAM, Rendered, render
from refine_cli.data.synth.shapes import SYNTH_CLASSES
from refine_cli.errors import UsageError
from refine_cli.io import atomic_write
from refine_cli.labels import voc_palette

FORMAT_VERSION = 2  # bump when the same (seed, index) would render differently
SAMPLE_NAME = "synth_{:06d}"
_NAME_RE = re.compile(r"^synth_\d{6}\.(jpg|png)$")


@dataclass(frozen=True)
class SynthSummary:
    out: Path
    train: int
    val: int
    seconds: float


def encode(rendered: Rendered) -> tuple[bytes, bytes]:
    """(JPEG bytes of the image at its quality, palette-PNG bytes of the label with the VOC palette)."""
    jpg = io.BytesIO()
    Image.fromarray(rendered.image).save(jpg, format="JPEG", quality=rendered.jpeg_quality)
    png = io.BytesIO()
    mask = Image.fromarray(rendered.label, mode="P")
    mask.putpalette([v for rgb in voc_palette() for v in rgb])
    mask.save(png, format="PNG")
    return jpg.getvalue(), png.getvalue()


def split_names(config: SynthConfig) -> tuple[list[str], list[str]]:
    """(train, val) sample names; the val draw depends on the seed and n."""
    n = config.n
    n_val = min(n - 1, max(1 if config.val_fraction > 0 and n > 1 else 0, round(n * config.val_fraction)))
    order = np.random.default_rng([config.seed, SPLIT_STREAM]).permutation(n)
    val = set(int(i) for i in order[:n_val])
    names = [SAMPLE_NAME.format(i) for i in range(n)]
    return [m for i, m in enumerate(names) if i not in val], [m for i, m in enumerate(names) if i in val]


def check_config(config: SynthConfig) -> None:
    """UsageError for settings that cannot make a world."""
    if config.n < 1:
        raise UsageError("--n must be at least 1")
    if min(config.height, config.width) < 32:
        raise UsageError("images must be at least 32x32 pixels")
    if not 0.0 <= config.val_fraction < 1.0:
        raise UsageError("--val-fraction must be in [0, 1)")
    if config.n > 999_999:
        raise UsageError("--n is limited to 999999 images (six-digit names)")
    if config.supersample < 1:
        raise UsageError("supersample must be at least 1")


def generate(
    out: str | Path,
    config: SynthConfig = SynthConfig(),
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write the world in the VOC layout:

    OUT/JPEGImages/synth_000000.jpg ...           images (JPEG at a random quality: real artefacts)
    OUT/SegmentationClass/synth_000000.png ...    palette PNG labels (VOC palette, index = class)
    OUT/ImageSets/Segmentation/{train,val}.txt
    OUT/classes.txt, OUT/synth.json, OUT/README.txt

    Every file is written atomically; the lists and metadata come last, so an interrupted run has none.
    A non-empty OUT is refused unless `overwrite`; then the old lists go first, stale synth_* images of a
    larger earlier run are removed, and other files are left alone.
    """
    check_config(config)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; choose a folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; choose a new folder or pass --overwrite")
    start = time.perf_counter()
    lists = out / "ImageSets" / "Segmentation"
    if overwrite:  # an interrupted overwrite must not leave the old lists naming a mix of old and new files
        for stale in (lists / "train.txt", lists / "val.txt", out / "synth.json"):
            stale.unlink(missing_ok=True)
    images, masks = out / "JPEGImages", out / "SegmentationClass"
    for i, (jpg, png) in enumerate(_encoded(config)):
        name = SAMPLE_NAME.format(i)
        _write(images / f"{name}.jpg", jpg)
        _write(masks / f"{name}.png", png)
        if progress is not None:
            progress(i + 1, config.n)
    if overwrite:
        _remove_stale(out, config.n)
    train, val = split_names(config)
    _write(lists / "train.txt", "".join(f"{n}\n" for n in train).encode())
    _write(lists / "val.txt", "".join(f"{n}\n" for n in val).encode())
    palette = voc_palette()
    classes = "".join(f"{c} {palette[i][0]} {palette[i][1]} {palette[i][2]}\n" for i, c in enumerate(SYNTH_CLASSES))
    _write(out / "classes.txt", classes.encode())
    meta = {
        "generator": "refine_cli.data.synth",
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "classes": list(SYNTH_CLASSES),
        "textures": [t.name for t in texture_pool()],
        "train": len(train),
        "val": len(val),
    }
    _write(out / "synth.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    _write(out / "README.txt", _readme(config, len(train), len(val)).encode())
    return SynthSummary(out, len(train), len(val), time.perf_counter() - start)


def _encoded(config: SynthConfig) -> Iterator[tuple[bytes, bytes]]:
    for i in range(config.n):
        yield encode(render(i, config))


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def _remove_stale(out: Path, n: int) -> None:
    for folder in (out / "JPEGImages", out / "SegmentationClass"):
        for path in folder.iterdir():
            if _NAME_RE.match(path.name) and int(path.stem[6:]) >= n:
                path.unlink()


def _readme(config: SynthConfig, n_train: int, n_val: int) -> str:
    return f"""Synthetic segmentation world written by refine-cli (`refine-cli data synth`), format {FORMAT_VERSION}.

{n_train} training and {n_val} validation images of {config.width}x{config.height} pixels, seed {config.seed}.
Layout as PASCAL VOC 2012: JPEGImages/*.jpg, SegmentationClass/*.png (palette PNGs, index = class),
ImageSets/Segmentation/train.txt and val.txt; classes.txt gives the names (index order) and colours.

Classes are shapes, not colours: {", ".join(SYNTH_CLASSES[1:])} on a background. Every surface, objects
and background alike, is a random crop of the same pool of public-domain photographs (see the licence file
in refine_cli/data/textures/), so only shape and context tell the classes apart. Background-class clutter
(irregular blobs, boxes), a second background region behind a wavy edge, occlusion in depth order, cast
shadows, objects cut by the border, thin bars a few pixels wide, blur, noise and JPEG compression at
quality {config.jpeg_quality[0]}-{config.jpeg_quality[1]} make the task hard in the ways real images are.
Edges are antialiased (shapes drawn at {config.supersample}x and area-averaged); labels stay hard (the class
covering most of each pixel). synth.json holds every generator setting: the same settings and seed give
byte-identical files.
"""
