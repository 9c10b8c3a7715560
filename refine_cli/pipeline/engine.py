"""Batched, device-aware inference on decoded images: base segmenter (or given masks) -> SPN refiner -> labels.

Everything here works on one batch of same-size images already in memory; streaming over files lives in
`stream.py`, writing outputs in `folder.py`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refine_cli import weights
from refine_cli.errors import UsageError
from refine_cli.models.spn import class_map, present_classes, suppress_absent_classes
from refine_cli.transforms import normalize, resize_images, resized_shape
from refine_cli.weights import CheckpointMeta

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Network:
    """A loaded network with the metadata that says how to feed it."""

    module: nn.Module
    meta: CheckpointMeta
    arch: str
    path: Path


def load_network(name_or_path: str | Path, *, kind: str, device: torch.device, channels_last: bool = False) -> Network:
    """Resolve a bundled / cached / downloadable name or a path, check it is a `kind` checkpoint, build it in eval
    mode on `device`."""
    path = weights.resolve(name_or_path)
    ckpt = weights.load_checkpoint(path)
    if ckpt.kind != kind:
        flag = "--base" if kind == "base" else "--refiner"
        raise UsageError(f"{path} holds a {ckpt.kind} network ({ckpt.arch}); {flag} needs a {kind} checkpoint")
    module = weights.build_model(ckpt).eval().to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return Network(module=module, meta=ckpt.meta, arch=ckpt.arch, path=path)


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over the run (stages on other threads overlap with these)."""

    decode: float = 0.0
    base: float = 0.0
    refiner: float = 0.0
    write: float = 0.0
    images: int = 0

    def add(self, other: StageTimes) -> None:
        for name in ("decode", "base", "refiner", "write", "images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class BatchOutput:
    """Per image of a batch, on the CPU: refined labels (H, W) uint8 or int64 when K > 256, coarse labels, and the
    refined / coarse probabilities (K, H, W) float32 when asked for."""

    labels: list[np.ndarray]
    coarse: list[np.ndarray]
    probs: list[np.ndarray] | None
    coarse_probs: list[np.ndarray] | None


def masks_to_probs(masks: torch.Tensor, num_classes: int, *, ignore_index: int = 255) -> torch.Tensor:
    """(N, H, W) integer labels -> (N, K, H, W) one-hot probabilities; ignored pixels get the uniform 1/K."""
    ignored = masks == ignore_index
    safe = masks.masked_fill(ignored, 0).long()
    probs = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    return torch.where(ignored[:, None], torch.full_like(probs, 1.0 / num_classes), probs)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The size the networks run at: the image's own, or scaled down so its long side is `max_side`."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(2, round(height * s)), max(2, round(width * s))


# Suppressed classes' -inf logits are floored to this before resizing (interpolating -inf gives NaN), and set back to
# -inf after.
_FLOOR = -1e4


@dataclass
class Engine:
    """The two networks and how to run them. `base` may be None when coarse masks are always given; `refiner`
    None gives the base output."""

    base: Network | None
    refiner: Network | None
    device: torch.device
    precision: Precision = "fp32"
    max_side: int | None = 2048
    refiner_side: int | None = None
    channels_last: bool = False
    times: StageTimes = field(default_factory=StageTimes)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise UsageError("fp16 needs a CUDA device; use --precision bf16 or fp32 on the CPU")

    # ------------------------------------------------------------------------------------------- helpers

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            setattr(self.times, stage, getattr(self.times, stage) + time.perf_counter() - start)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def num_classes(self) -> int | None:
        """The base network's class count (None without a base network)."""
        return len(self.base.meta.classes) if self.base is not None else None

    # ----------------------------------------------------------------------------------------- the stages

    def base_probs(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, h, w) float RGB in [0, 1] on the device -> (N, K, h, w) float32 class probabilities,
        the base network run at the size its resize rule asks for and its logits resized back."""
        if self.base is None:
            raise UsageError("no base segmenter loaded: give coarse masks (--masks) or a --base network")
        pre = self.base.meta.preprocess
        size = resized_shape(images.shape[-2], images.shape[-1], pre)
        x = self._layout(normalize(resize_images(images, size), pre))
        with self._autocast():
            logits = self.base.module(x)
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

    def refine_logits(self, images: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, h, w) float RGB in [0, 1]; coarse: (N, K, h, w) probabilities -> refined logits
        (N, K, h, w) float32, -inf for every class absent from an image's coarse argmax (the released rule).

        With `refiner_side` set and a long side above it, the refiner runs on the image and coarse probabilities
        scaled down to that long side, and its logits are resized back (bilinear): a quarter of the cost at
        half the side, for outputs that stay smooth since the coarse maps come from a 1/8-resolution base net.

        The universal refiner only propagates the classes some image of the batch votes for: the others would be
        suppressed anyway, and each propagated class costs a full set of scans."""
        assert self.refiner is not None
        height, width = images.shape[-2:]
        small = working_size(height, width, self.refiner_side)
        if small == (height, width):
            return self._refine_logits(images, coarse)
        logits = self._refine_logits(resize_images(images, small), resize_images(coarse, small))
        logits = F.interpolate(logits.clamp_min(_FLOOR), size=(height, width), mode="bilinear", align_corners=False)
        return suppress_absent_classes(logits, coarse)

    def _refine_logits(self, images: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        assert self.refiner is not None
        module = self.refiner.module
        x = self._layout(normalize(images, self.refiner.meta.preprocess))
        k = coarse.shape[1]
        per_class = getattr(module, "per_class", True)
        if per_class:
            votes = present_classes(coarse)  # (N, K)
            present = votes.any(0).nonzero().flatten()
            with self._autocast():
                sub = module(x, coarse[:, present])
            logits = torch.full_like(coarse, float("-inf"))
            logits[:, present] = sub.float()
        else:
            expected = getattr(module, "classes", k)
            if expected != k:
                raise UsageError(
                    f"the refiner {self.refiner.path.name} takes exactly {expected} classes, the coarse maps have {k}; "
                    "use a universal refiner"
                )
            with self._autocast():
                logits = module(x, coarse).float()
        return suppress_absent_classes(logits, coarse)

    # ------------------------------------------------------------------------------------------- a batch

    @torch.inference_mode()
    def run(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        *,
        coarse_probs: torch.Tensor | None = None,
        num_classes: int | None = None,
        want_probs: bool = False,
        want_coarse_probs: bool = False,
    ) -> BatchOutput:
        """images: (N, H, W, 3) uint8 (CPU, ideally pinned, or on the device); masks: optional (N, H, W) integer
        coarse labels (255 = unknown) used instead of the base network, with `num_classes` classes (default:
        the largest label + 1, at least 2); coarse_probs: optional (N, K, H, W) float coarse class probabilities (each
        pixel's K values summing to 1) used instead of either. Returns per-image numpy results at the input size;
        the coarse labels are the masks as given, or the coarse probabilities' argmax."""
        if masks is not None and coarse_probs is not None:
            raise UsageError("give coarse masks or coarse probabilities, not both")
        n, height, width = images.shape[:3]
        given = coarse_probs
        if given is not None and (given.ndim != 4 or given.shape[0] != n or tuple(given.shape[2:]) != (height, width)):
            raise UsageError(f"coarse probabilities must be (N, K, H, W) = ({n}, K, {height}, {width}); got "
                             f"{tuple(given.shape)}")
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        work = working_size(height, width, self.max_side)
        xw = resize_images(x, work)
        if given is not None:
            coarse = resize_images(given.to(self.device, non_blocking=True).float(), work)
        elif masks is not None:
            m = masks.to(self.device, non_blocking=True).long()
            k = num_classes or max(2, int(m.masked_fill(m == 255, 0).max()) + 1)
            if work != (height, width):
                m = F.interpolate(m[:, None].float(), size=work, mode="nearest")[:, 0].long()
            coarse = masks_to_probs(m, k)
        else:
            with self._timed("base"):
                coarse = self.base_probs(xw)
        if self.refiner is not None:
            with self._timed("refiner"):
                probs = self.refine_logits(xw, coarse).softmax(dim=1)
        else:
            probs = coarse
        if work != (height, width):
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            coarse = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        label_dtype = torch.uint8 if probs.shape[1] <= 256 else torch.int64
        labels = class_map(probs).to(label_dtype).cpu().numpy()
        if masks is not None:
            coarse_labels = masks.cpu().numpy().astype(labels.dtype)
        else:
            coarse_labels = class_map(coarse).to(label_dtype).cpu().numpy()
        self.times.images += n
        return BatchOutput(
            labels=list(labels),
            coarse=list(coarse_labels),
            probs=list(probs.cpu().numpy()) if want_probs else None,
            coarse_probs=list(coarse.cpu().numpy()) if want_coarse_probs else None,
        )


def stack_images(images: Sequence[np.ndarray], *, pin: bool) -> torch.Tensor:
    """Same-size (H, W, 3) uint8 arrays -> one (N, H, W, 3) uint8 tensor, in pinned memory for fast, asynchronous
    copies to a GPU when `pin`."""
    batch = torch.from_numpy(np.stack(images))
    return batch.pin_memory() if pin else batch
