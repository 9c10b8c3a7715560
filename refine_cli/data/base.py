"""What every dataset shares: the `Sample` it returns, the `Pair` of files behind a sample, mask decoding and
the `SegmentationDataset` base class (a list of pairs plus class names, palette and an optional cache of
coarse probabilities). Concrete layouts (VOC, Helen, folders) only build the list of pairs.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from refine_cli.data.cache import ProbsCache
from refine_cli.errors import DataError, InputError
from refine_cli.io import IMAGE_SUFFIXES, read_image, read_mask
from refine_cli.labels import IGNORE_INDEX, voc_palette

Color = tuple[int, int, int]
_EXIF_ORIENTATION = 0x0112


class Sample(NamedTuple):
    """One training or evaluation example.

    image: (3, H, W) uint8 RGB as a viewer shows it (EXIF orientation applied, as in inference);
        `image.float() / 255` is what `refine_cli.transforms.normalize` expects.
    label: (H, W) int64 class indices; 255 (`IGNORE_INDEX`) marks pixels to ignore.
    name: the file stem, unique within the dataset.
    probs: (C, H, W) float32 coarse class probabilities summing to 1 per pixel, or None without a cache.
    """

    image: torch.Tensor
    label: torch.Tensor
    name: str
    probs: torch.Tensor | None = None


@dataclass(frozen=True)
class Pair:
    """The files behind one sample. `masks` is empty when the annotation is missing, one index mask for most
    layouts, or one grey-level map per class (Helen's original release)."""

    name: str
    image: Path
    masks: tuple[Path, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one sample (or one file the listing could not pair)."""

    name: str
    kind: str  # missing_image | missing_mask | missing_probs | unreadable | size_mismatch | bad_labels | duplicate
    detail: str


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) as `refine_cli.io.read_image` will return it (EXIF rotations by 90 degrees swap
    the sides), from the file header only: no pixel decoding."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
    except FileNotFoundError:
        raise InputError(f"cannot read '{path}': file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read '{path}': {' '.join(str(exc).split())}") from None
    return height, width


class SegmentationDataset(Dataset[Sample]):
    """A list of image/mask `pairs` with class names and palette.

    Subclasses build `pairs` (and may record `listing_problems`, files the listing could not pair) and may
    override `read_label` for layouts whose annotation is not one index mask. Construction lists files
    only; `refine_cli.data.validate` checks them before training.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        classes: Sequence[str],
        palette: Sequence[Color] | None = None,
        probs_cache: ProbsCache | str | Path | None = None,
    ):
        if not classes:
            raise DataError("a dataset needs at least one class name")
        self.pairs: list[Pair] = list(pairs)
        self.classes: tuple[str, ...] = tuple(classes)
        base = voc_palette()
        given = [tuple(int(v) for v in c) for c in (palette or [])]
        # Classes without a colour of their own take the VOC colour of their index.
        self.palette: tuple[Color, ...] = tuple(given + base[len(given):len(self.classes)])[: len(self.classes)]
        if probs_cache is not None and not isinstance(probs_cache, ProbsCache):
            probs_cache = ProbsCache(probs_cache)
        self.probs_cache: ProbsCache | None = probs_cache
        self.listing_problems: list[Problem] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        pair = self.pairs[index]
        if not pair.masks:
            raise DataError(f"'{pair.name}' has no mask; run `refine-cli data check` and fix or skip it")
        image = self.read_image(pair)
        label = self.read_label(pair)
        if label.shape != image.shape[:2]:
            raise DataError(f"'{pair.name}': mask is {label.shape[1]}x{label.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}; run `refine-cli data check`")
        probs = None
        if self.probs_cache is not None:
            probs = self.probs_cache.load(pair.name, size=image.shape[:2], num_classes=self.num_classes)
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            label=torch.from_numpy(label.astype(np.int64)),
            name=pair.name,
            probs=probs,
        )

    def read_image(self, pair: Pair) -> np.ndarray:
        """(H, W, 3) uint8 RGB, EXIF orientation applied (`refine_cli.io.read_image`)."""
        return read_image(pair.image)

    def read_label(self, pair: Pair, *, num_classes: int | None = None) -> np.ndarray:
        """(H, W) int64 class indices, 255 = ignore, read by `refine_cli.io.read_mask` with this dataset's
        palette for RGB masks (VOC colours beyond it, so VOC's ignore colour reads as 255).

        `num_classes` defaults to the dataset's: an out-of-range label is an `InputError`, and a
        two-class dataset reads 0/255 masks as 0/1. `validate` passes 256 to read any 8-bit value and
        report the bad ones itself.
        """
        palette = list(self.palette) + voc_palette(256)[len(self.palette):]
        return read_mask(pair.masks[0], palette=palette, num_classes=num_classes or self.num_classes)

    def relative_path(self, pair: Pair) -> PurePosixPath:
        """Where the pair's image sits below the dataset's image folder: the tree that a folder of outputs
        (refined masks, coarse masks, probabilities) mirrors. Flat layouts: the image's file name."""
        return PurePosixPath(pair.image.name)

    def mask_sizes(self, pair: Pair) -> list[tuple[int, int]]:
        """(height, width) of every annotation file, from headers."""
        return [header_size(p) for p in pair.masks]

    def without(self, names: Collection[str]) -> SegmentationDataset:
        """A shallow copy without the named samples (how `skip_bad=True` drops bad pairs)."""
        drop = set(names)
        clone = copy.copy(self)
        clone.pairs = [p for p in self.pairs if p.name not in drop]
        clone.listing_problems = []
        return clone


def read_split_file(path: Path) -> list[str]:
    """Sample names from a list file, one per line, in the forms found in the wild: `stem`,
    `JPEGImages/stem.jpg SegmentationClassAug/stem.png` (DeepLab's lists: the first path's stem) and
    `index , stem` (Helen's exemplars/tuning/testing lists). Blank lines and `#` comments are skipped."""
    names = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "," in line:
            line = line.split(",", 1)[1].strip()
        names.append(Path(line.split()[0]).stem)
    return names


def read_classes_file(path: Path) -> tuple[list[str], list[Color] | None]:
    """Class names, one per line, in index order, each optionally followed by its colour as `r g b` or
    `#rrggbb`. Returns (names, palette), palette None when no line gives a colour (all or none must)."""
    names: list[str] = []
    colours: list[Color | None] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        colour: Color | None = None
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            colour = (int(parts[-3]), int(parts[-2]), int(parts[-1]))
            parts = parts[:-3]
        elif len(parts) >= 2 and parts[-1].startswith("#") and len(parts[-1]) == 7:
            try:
                value = int(parts[-1][1:], 16)
            except ValueError:
                value = -1
            if value >= 0:
                colour = (value >> 16, (value >> 8) & 255, value & 255)
                parts = parts[:-1]
        if colour is not None and max(colour) > 255:
            raise DataError(f"{path}:{number}: colour values must be 0..255")
        names.append(" ".join(parts))
        colours.append(colour)
    if not names:
        raise DataError(f"{path} lists no class names; write one name per line, background first")
    given = [c for c in colours if c is not None]
    if given and len(given) != len(colours):
        raise DataError(f"{path}: give a colour on every line or on none")
    return names, (given or None)
