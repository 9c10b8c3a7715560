"""The public `Refiner`: batched, device-aware refinement of images, files and folders, as iterators of results.

The CLI, the examples, the benchmarks and the evaluation all go through it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal
from os import PathLike
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from refine_cli import io
from refine_cli.config import PipelineConfig
from refine_cli.device import describe, resolve_device
from refine_cli.errors import InputError, UsageError
from refine_cli.labels import voc_palette
from refine_cli.pipeline.engine import PRECISIONS, Engine, Network, Precision, StageTimes, load_network, stack_images
from refine_cli.pipeline.folder import (
    FileEvent, FolderOptions, FolderSummary, Outputs, find_mask, output_folders, run_folder,
)
from refine_cli.pipeline.stream import Failure, Job, RefineResult, stream

__all__ = [
    "PRECISIONS", "FileEvent", "Failure", "FolderOptions", "FolderSummary", "Outputs", "RefineResult", "Refiner",
    "StageTimes", "find_mask", "output_folders",
]

DEFAULT = PipelineConfig()
ImageLike = np.ndarray | Image.Image | str | PathLike[str]


class Refiner:
    """A base segmenter and an SPN refiner, ready to run.

    base: a checkpoint name (bundled, cached or downloadable) or path; "default" is the bundled one; None when
        coarse masks are always given.
    refiner: likewise; "default" is the bundled universal refiner; None returns the base segmenter's output.
    device: "auto" (a CUDA GPU when present, else the CPU), "cpu", "cuda" or "cuda:N". A GPU asked for but absent
        is an error, never a silent CPU run.
    batch_size: images per batch; None: PipelineConfig's GPU / CPU default.
    precision: "fp32", or "fp16" / "bf16" autocast (fp16 on CUDA only).
    max_side: long side above which images run scaled down (the result is resized back to the image).
    refiner_side: long side above which the refiner runs on a scaled-down copy of the image and coarse
        probabilities, its logits resized back; None: at the working size; "auto": PipelineConfig's default for the
        device (256 on a CPU, None on a GPU).
    channels_last: NHWC layout for the convolutions; None: on (faster on CUDA and, through oneDNN, on the CPU: the
        compact FCN-8s about 1.6x at 512 px on one thread).
    compile: wrap both networks in torch.compile (GPU; the first batches of each size pay the compile time).
    """

    def __init__(
        self,
        base: str | PathLike[str] | None = "default",
        refiner: str | PathLike[str] | None = "default",
        *,
        device: str = "auto",
        batch_size: int | None = None,
        precision: Precision = "fp32",
        max_side: int | None = DEFAULT.max_side,
        refiner_side: int | None | Literal["auto"] = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        workers: int = DEFAULT.decode_workers,
        writers: int = DEFAULT.write_workers,
    ) -> None:
        self.device = resolve_device(device)
        on_gpu = self.device.type == "cuda"
        channels_last = True if channels_last is None else channels_last
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size or (DEFAULT.gpu_batch_size if on_gpu else DEFAULT.cpu_batch_size)
        if refiner_side == "auto":
            refiner_side = DEFAULT.gpu_refiner_side if on_gpu else DEFAULT.cpu_refiner_side
        if refiner_side is not None and refiner_side < 16:
            raise UsageError(f"the refiner's side must be at least 16 pixels, got {refiner_side}")
        self.workers, self.writers = workers, writers
        base_net = _load(base, DEFAULT.base, "base", self.device, channels_last)
        refiner_net = _load(refiner, DEFAULT.refiner, "refiner", self.device, channels_last)
        if compile:
            for net in (base_net, refiner_net):
                if net is not None:
                    object.__setattr__(net, "module", torch.compile(net.module, dynamic=False))
        self.engine = Engine(
            base=base_net,
            refiner=refiner_net,
            device=self.device,
            precision=precision,
            max_side=max_side,
            refiner_side=refiner_side,
            channels_last=channels_last,
        )

    # ------------------------------------------------------------------------------------------ metadata

    @property
    def base(self) -> Network | None:
        return self.engine.base

    @property
    def refiner(self) -> Network | None:
        return self.engine.refiner

    @property
    def classes(self) -> tuple[str, ...]:
        """The base network's class names (empty without a base network: the masks' labels are the classes)."""
        return self.base.meta.classes if self.base is not None else ()

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """Colours for written masks: the base network's palette, padded with the VOC colour map."""
        voc = voc_palette(256)
        own = list(self.base.meta.palette) if self.base is not None else []
        return own + voc[len(own) :]

    @property
    def times(self) -> StageTimes:
        return self.engine.times

    def describe_device(self) -> str:
        return describe(self.device)

    # ------------------------------------------------------------------------------------------ inference

    def refine(self, image: ImageLike, mask: ImageLike | None = None, *, return_probs: bool = False) -> RefineResult:
        """Refine one image: an (H, W, 3) uint8 RGB array (or (H, W) grey), a PIL image or a file path; `mask` an
        optional coarse label map (array, PIL image or file) used instead of the base segmenter."""
        rgb = _as_rgb(image)
        labels = None if mask is None else _as_labels(mask)
        if labels is not None and labels.shape != rgb.shape[:2]:
            raise InputError(f"mask is {labels.shape[::-1]} but the image is {rgb.shape[1::-1]}; sizes must match")
        out = self.engine.run(
            stack_images([rgb], pin=False),
            None if labels is None else torch.from_numpy(labels[None]),
            want_probs=return_probs,
            want_coarse_probs=return_probs,
        )
        return RefineResult(
            labels=out.labels[0],
            coarse=out.coarse[0],
            image=rgb,
            probs=out.probs[0] if out.probs is not None else None,
            coarse_probs=out.coarse_probs[0] if out.coarse_probs is not None else None,
        )

    def refine_paths(
        self,
        paths: Iterable[str | PathLike[str]],
        masks: Sequence[str | PathLike[str] | None] | None = None,
        *,
        num_classes: int | None = None,
        return_probs: bool = False,
    ) -> Iterator[RefineResult | Failure]:
        """Refine image files, yielding a RefineResult or a Failure per file as batches finish (not necessarily in
        input order: images are batched by size). `masks` optionally gives a coarse mask file per path."""
        path_list = [Path(p) for p in paths]
        if masks is not None and len(masks) != len(path_list):
            raise UsageError(f"got {len(masks)} masks for {len(path_list)} images")
        jobs = [
            Job(p, PurePosixPath(p.name), Path(masks[i]) if masks is not None and masks[i] is not None else None)
            for i, p in enumerate(path_list)
        ]
        return self._stream(jobs, num_classes=num_classes, return_probs=return_probs)

    def refine_folder(
        self,
        inputs: Sequence[str | PathLike[str]],
        out_dir: str | PathLike[str],
        *,
        masks_dir: str | PathLike[str] | None = None,
        num_classes: int | None = None,
        options: FolderOptions = FolderOptions(),
        shard: tuple[int, int] | None = None,
    ) -> Iterator[FileEvent]:
        """Refine files, folders (recursive) and globs into `out_dir`, mirroring the input tree; finished outputs are
        skipped unless `options.overwrite`, and nothing in `out_dir`'s output folders is read as an input. Yields a
        FileEvent per input (see `refine_items`)."""
        listing = io.list_inputs([str(p) for p in inputs], exclude=output_folders(Path(out_dir)))
        return self.refine_items(
            listing, out_dir, masks_dir=masks_dir, num_classes=num_classes, options=options, shard=shard
        )

    def refine_items(
        self,
        items: io.InputListing | Sequence[io.InputItem],
        out_dir: str | PathLike[str],
        *,
        masks_dir: str | PathLike[str] | None = None,
        num_classes: int | None = None,
        options: FolderOptions = FolderOptions(),
        shard: tuple[int, int] | None = None,
    ) -> Iterator[FileEvent]:
        """`refine_folder` on an already listed input set (`io.list_inputs`): a "failed" FileEvent for each folder
        the listing could not read, then one per item. `shard=(rank, world)` takes every world-th item from the
        rank-th on (the unreadable folders go to rank 0), so several processes split one run without overlap."""
        listing = items if isinstance(items, io.InputListing) else io.InputListing(tuple(items))
        if shard is not None:
            listing = listing.shard(*shard)
        if self.base is None and masks_dir is None:
            raise UsageError("no base segmenter: give --masks DIR with coarse masks, or a --base network")
        unreadable = [
            FileEvent("failed", folder, PurePosixPath(folder.name), f"cannot read folder '{folder}': {why}")
            for folder, why in listing.unreadable
        ]
        return itertools.chain(unreadable, run_folder(
            listing.items,
            Path(out_dir),
            options=options,
            palette=self.palette,
            refine=lambda jobs: self._stream(jobs, num_classes=num_classes, return_probs=options.save_probs),
            masks_dir=Path(masks_dir) if masks_dir is not None else None,
            writers=self.writers,
            times=self.engine.times,
        ))

    def _stream(
        self, jobs: Iterable[Job], *, num_classes: int | None, return_probs: bool
    ) -> Iterator[RefineResult | Failure]:
        return stream(
            self.engine,
            jobs,
            batch_size=self.batch_size,
            workers=self.workers,
            num_classes=num_classes,
            want_probs=return_probs,
            want_coarse_probs=False,
        )


def _load(
    choice: str | PathLike[str] | None, default: str, kind: str, device: torch.device, channels_last: bool
) -> Network | None:
    if choice is None or (isinstance(choice, str) and choice.lower() == "none"):
        return None
    name = default if choice == "default" else choice
    return load_network(name, kind=kind, device=device, channels_last=channels_last)


def _as_rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, (str, PathLike)):
        return io.read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"expected an (H, W, 3) RGB image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(f"expected a uint8 image array, got {arr.dtype}; scale it to 0..255 first")
    return np.ascontiguousarray(arr[:, :, :3])


def _as_labels(mask: ImageLike) -> np.ndarray:
    if isinstance(mask, (str, PathLike)):
        return io.read_mask(mask)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"expected an (H, W) label map, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    values = np.unique(arr)
    if 255 in values and set(values.tolist()) <= {0, 255}:
        arr = arr // 255  # a binary 0/255 mask, as io.read_mask reads one from a file
    return arr
