"""The public `Refiner`: batched, device-aware refinement of images, files and folders, as iterators of results.

The CLI, the examples, the benchmarks and the evaluation all go through it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Literal
from os import PathLike
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from refine_cli import io
from refine_cli.config import IOConfig, PipelineConfig
from refine_cli.device import describe, resolve_device
from refine_cli.errors import InputError, UsageError
from refine_cli.labels import voc_palette
from refine_cli.pipeline.engine import PRECISIONS, Engine, Network, Precision, StageTimes, load_network, stack_images
from refine_cli.pipeline.folder import (
    FileEvent, FolderOptions, FolderSummary, Outputs, OutputsBlocked, find_mask, output_folders, run_folder,
)
from refine_cli.pipeline.stream import Failure, Job, RefineResult, stream

__all__ = [
    "PRECISIONS", "FileEvent", "Failure", "FolderOptions", "FolderSummary", "Outputs", "OutputsBlocked",
    "RefineResult", "Refiner", "StageTimes", "find_mask", "output_folders",
]

DEFAULT = PipelineConfig()
ImageLike = np.ndarray | torch.Tensor | Image.Image | str | PathLike[str]


class Refiner:
    """A base segmenter and an SPN refiner, ready to run.

    base: a checkpoint name (bundled, cached or downloadable) or path; "default" is the bundled one; None when
        coarse masks are always given.
    refiner: likewise; "default" is the bundled colour-gated propagation refiner; None returns the base
        segmenter's output.
    device: "auto" (a CUDA GPU when present, else the CPU), "cpu", "cuda" or "cuda:N". A GPU asked for but absent
        is an error, never a silent CPU run.
    batch_size: images per batch; None: PipelineConfig's GPU / CPU default.
    precision: a `Precision` value: "fp32", or "fp16" / "bf16" autocast (fp16 on CUDA only).
    max_side: long side above which images are decoded scaled down and run at that size (the labels come back at
        the image's full size).
    max_pixels: image and mask files with more pixels are refused before decoding (a guard against decompression
        bombs; `IOConfig.max_image_pixels` by default): raise it for trusted files that large.
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
        precision: str = Precision.fp32.value,
        max_side: int | None = DEFAULT.max_side,
        max_pixels: int = IOConfig().max_image_pixels,
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
            max_pixels=max_pixels,
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

    def refine(
        self,
        image: ImageLike,
        mask: ImageLike | None = None,
        *,
        num_classes: int | None = None,
        return_probs: bool = False,
    ) -> RefineResult:
        """Refine one image: a file path, a PIL image, or an array or tensor in numpy's (H, W, C) order, as
        `io.image_to_rgb` takes it (uint8 RGB, grey, RGBA composited on white, uint16, float 0..1). `mask`: an
        optional coarse label map used instead of the base segmenter, a file (`io.read_mask`), a PIL image or an
        (H, W) array or tensor (`io.mask_labels`: 255 = unknown, a 0/255-only mask is binary), with `num_classes`
        classes (default: from the mask). The labels come back at the image's size; an image whose long side
        exceeds `max_side` runs scaled down, and `result.image` and the probabilities are at that working size."""
        if isinstance(image, (str, PathLike)):
            scaled = io.read_image_scaled(image, self.engine.max_side, max_pixels=self.engine.max_pixels)
        else:
            whole = _as_rgb(image)
            scaled = io.ScaledImage(io.resize_rgb(whole, io.working_size(*whole.shape[:2], self.engine.max_side)),
                                    whole.shape[:2])
        rgb, full = scaled.rgb, scaled.full_size
        labels = None if mask is None else _as_labels(mask, num_classes, self.engine.max_pixels)
        if labels is not None and labels.shape != full:
            raise InputError(f"the mask is {labels.shape} but the image is {full} (height, width); a coarse mask must "
                             f"have its image's size{io.turned_hint(labels.shape, scaled)}")
        out = self.engine.run(
            stack_images([rgb], pin=False),
            None if labels is None else torch.from_numpy(io.resize_labels(labels, rgb.shape[:2]).astype(np.int32)[None]),
            num_classes=num_classes,
            out_sizes=[full],
            want_probs=return_probs,
            want_coarse_probs=return_probs,
        )
        return RefineResult(
            labels=out.labels[0],
            coarse=out.coarse[0] if labels is None else labels,
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
    ) -> Generator[FileEvent, None, None]:
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
    ) -> Generator[FileEvent, None, None]:
        """`refine_folder` on an already listed input set (`io.list_inputs`): a "failed" FileEvent for each folder
        the listing could not read, then one per item. `shard=(rank, world)` takes every world-th item from the
        rank-th on (the unreadable folders go to rank 0), so several processes split one run without overlap; the
        caller then claims `out_dir` once for all of them (`claim_output_folder`) before any starts."""
        listing = items if isinstance(items, io.InputListing) else io.InputListing(tuple(items))
        if shard is not None:
            listing = listing.shard(*shard)
        if self.base is None and masks_dir is None:
            raise UsageError("no base segmenter: give --masks DIR with coarse masks, or a --base network")
        unreadable = [
            FileEvent("failed", folder, PurePosixPath(folder.name), f"cannot read folder '{folder}': {why}")
            for folder, why in listing.unreadable
        ]
        return _after(unreadable, run_folder(
            listing.items,
            Path(out_dir),
            options=options,
            palette=self.palette,
            refine=lambda jobs: self._stream(jobs, num_classes=num_classes, return_probs=options.save_probs),
            masks_dir=Path(masks_dir) if masks_dir is not None else None,
            writers=self.writers,
            times=self.engine.times,
            claim=shard is None,
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


def _after(first: Iterable[FileEvent], events: Generator[FileEvent, None, None]) -> Generator[FileEvent, None, None]:
    """`first`, then `events`, as one generator that hands Ctrl-C handling (throw, close) on to `events`."""
    yield from first
    yield from events


def _load(
    choice: str | PathLike[str] | None, default: str, kind: str, device: torch.device, channels_last: bool
) -> Network | None:
    if choice is None or (isinstance(choice, str) and choice.lower() == "none"):
        return None
    name = default if choice == "default" else choice
    return load_network(name, kind=kind, device=device, channels_last=channels_last)


def _as_array(value: np.ndarray | torch.Tensor | Image.Image) -> np.ndarray | Image.Image:
    """A tensor as the numpy array it holds (any device; half precision widened), anything else as it is."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return value


def _as_rgb(image: np.ndarray | torch.Tensor | Image.Image) -> np.ndarray:
    return io.image_to_rgb(_as_array(image), what="the image")


def _as_labels(mask: ImageLike, num_classes: int | None, max_pixels: int) -> np.ndarray:
    if isinstance(mask, (str, PathLike)):
        return io.read_mask(mask, num_classes=num_classes, max_pixels=max_pixels)
    return io.mask_labels(_as_array(mask), num_classes=num_classes, what="the mask")
