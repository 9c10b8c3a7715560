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
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refine_cli import io, weights
from refine_cli.config import IOConfig, PipelineConfig, Precision
from refine_cli.io import working_size
from refine_cli.labels import IGNORE_INDEX
from refine_cli.errors import UsageError
from refine_cli.models.contract import GivesProbabilities
from refine_cli.models.spn import RESIDUAL_EPS, present_classes, suppress_absent_classes
from refine_cli.ops.class_map import class_map
from refine_cli.transforms import normalize, resize_images, resized_shape
from refine_cli.weights import CheckpointMeta

PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
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
    """Per image of a batch, on the CPU: refined labels (H, W) uint8 (uint16 when K > 256), coarse labels, and the
    refined / coarse probabilities (K, h, w) float32 at the size the networks ran at, when asked for."""

    labels: list[np.ndarray]
    coarse: list[np.ndarray]
    probs: list[np.ndarray] | None
    coarse_probs: list[np.ndarray] | None


def _neighbour_weights(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 4, H, W): how much each pixel takes from its upper, lower, left and right
    neighbour, exp(-|colour difference|^2 / (2 sigma^2)) normalised to sum 1 (across an image edge: near 0)."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    h, w = image.shape[-2:]
    shifted = (padded[..., :h, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :w], padded[..., 1:-1, 2:])
    likeness = torch.stack([((s - image) ** 2).sum(1) for s in shifted], dim=1).div_(-2 * sigma**2).exp_()
    likeness += 1e-6  # a pixel walled in on all four sides takes the plain mean
    return likeness / likeness.sum(1, keepdim=True)


def _neighbour_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) values -> each pixel's weighted mean of its four neighbours (`_neighbour_weights`)."""
    padded = F.pad(values, (1, 1, 1, 1), mode="replicate")
    h, w = values.shape[-2:]
    up, down, left, right = weights[:, :, None].unbind(1)
    return (up * padded[..., :h, 1:-1] + down * padded[..., 2:, 1:-1] + left * padded[..., 1:-1, :w]
            + right * padded[..., 1:-1, 2:])


def fill_unknown(
    probs: torch.Tensor,
    known: torch.Tensor,
    image: torch.Tensor | None = None,
    *,
    sigma: float = 0.1,
    steps: int = 8,
    smooth_side: int = 512,
) -> torch.Tensor:
    """probs: (N, K, H, W) class probabilities, trusted where `known` (N, 1, H, W) bool is set. Returns them with every
    unknown pixel given the probabilities of the known pixels around it; known pixels keep theirs.

    A pyramid ("push-pull"): 2x2 averages of the known values and of their count, down to a level where every cell
    holds some; then back up, each level taking its unknown share from the level above and, with `image` (N, 3, H, W)
    RGB in [0, 1], smoothing that share `steps` times over neighbours weighted by colour likeness
    (`_neighbour_weights`), so labels spread within a region of the image and stop at its edges. An unknown block
    inside one class gets that class; an unknown band between two classes splits where the image changes colour
    (without `image`: halfway). Uniform where nothing is known. Levels with a side above `smooth_side` are only
    upsampled, which bounds the cost: on larger images the split is placed to within their scale to 512 px, and
    the refiner sharpens it."""
    weight = known.to(probs.dtype)
    levels = [(probs * weight, weight, image)]
    while not bool((weight > 0).all()) and (weight.shape[-2] > 1 or weight.shape[-1] > 1):
        values, weight, picture = levels[-1]
        weight = F.avg_pool2d(weight, 2, ceil_mode=True)
        levels.append((F.avg_pool2d(values, 2, ceil_mode=True), weight,
                       None if picture is None else F.avg_pool2d(picture, 2, ceil_mode=True)))
    values, weight, _ = levels[-1]
    filled = torch.where(weight > 0, values / weight.clamp_min(1e-12), torch.full_like(values, 1.0 / probs.shape[1]))
    for values, weight, picture in reversed(levels[:-1]):
        filled = F.interpolate(filled, size=values.shape[-2:], mode="bilinear", align_corners=False)
        unknown = 1 - weight
        if picture is None or max(values.shape[-2:]) > smooth_side:
            filled = values + unknown * filled  # the known share as it is, the rest from the level above
            continue
        weights = _neighbour_weights(picture, sigma)
        for _ in range(steps):
            filled = values + unknown * _neighbour_mean(filled, weights)
    return filled


def masks_to_probs(
    masks: torch.Tensor, num_classes: int, *, unknown: int | None = IGNORE_INDEX, image: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, H, W) integer labels -> (N, K, H, W) probabilities: one-hot where a label is given; pixels labelled
    `unknown` (255; None when every value is a class) get the probabilities of the known pixels around them, along
    the regions of `image` (N, 3, H, W) RGB in [0, 1] (`fill_unknown`), so the refiner places their boundaries where
    the image has them, not by breaking a K-way tie."""
    given = masks != unknown if unknown is not None else torch.ones_like(masks, dtype=torch.bool)
    # Scattered into a (N, K, H, W) tensor rather than F.one_hot's (N, H, W, K) permuted: the refiner's per-class
    # passes read each class map as one contiguous plane (a permuted one costs a copy in every pass).
    probs = torch.zeros(masks.shape[0], num_classes, *masks.shape[1:], device=masks.device)
    probs.scatter_(1, masks.masked_fill(~given, 0).long()[:, None], 1.0)
    return probs if bool(given.all()) else fill_unknown(probs, given[:, None], image)


def mask_classes(masks: torch.Tensor, num_classes: int | None) -> tuple[int, int | None]:
    """The class count of coarse label maps and the value that means "unknown" in them. Without `num_classes`: the
    largest label + 1, at least 2, where 255 is unknown and not counted; but when a label exceeds 255 (a 16-bit
    mask) every value is a class. With more than 255 classes no value means unknown."""
    if num_classes is None:
        top = int(masks.max()) if masks.numel() else 0
        if top > IGNORE_INDEX:
            num_classes = top + 1
        else:
            num_classes = max(2, int(masks.masked_fill(masks == IGNORE_INDEX, 0).max()) + 1)
    return num_classes, (IGNORE_INDEX if num_classes <= IGNORE_INDEX else None)


def present_labels(masks: torch.Tensor, num_classes: int, unknown: int | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor, int | None]:
    """Coarse label maps renumbered 0..P-1 over the P labels they hold, when fewer than `num_classes`: a class no
    pixel holds stays at probability 0 through the refiner, so only the present ones are propagated. A 16-bit mask of
    instance ids (labels up to 65535) would otherwise make 65536 class maps: 45 GB at 480 x 360. Returns (the present
    labels in order, or None when all are; the maps; the value meaning unknown in them)."""
    # From a count of each value and a lookup (labels are PNG values, 0..65535): a sort of every pixel (torch.unique)
    # and a binary search for each took 8.2 ms a CamVid mask in `refine --masks`, these 1.2 (two threads).
    counts = torch.bincount(masks.flatten().long())
    if unknown is not None and unknown < len(counts):
        counts[unknown] = 0
    present = counts.nonzero().flatten()
    if len(present) < 2:  # two maps at least, as `mask_classes` keeps: no refiner is asked to split a single class
        spare = [v for v in (0, 1) if v not in present.tolist()][: 2 - len(present)]
        present = torch.unique(torch.cat([present, present.new_tensor(spare)]))
    if len(present) >= num_classes:
        return None, masks, unknown
    lookup = torch.full((max(len(counts), int(present[-1]) + 1),), len(present), device=masks.device)  # unknown: P
    lookup[present] = torch.arange(len(present), device=masks.device)
    return present.to(masks.dtype), lookup[masks.long()], len(present) if unknown is not None else None


def _all_classes(scores: torch.Tensor, present: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, P, h, w) scores over the `present` labels -> (N, num_classes, h, w), 0 for the others."""
    full = scores.new_zeros(scores.shape[0], num_classes, *scores.shape[2:])
    full[:, present] = scores
    return full


def label_dtype(num_classes: int) -> type[np.unsignedinteger]:
    """The type of label maps of `num_classes` classes: uint8 up to 256, else uint16 (16-bit PNG masks)."""
    return np.uint8 if num_classes <= 256 else np.uint16


def _source_positions(n_out: int, n_in: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `n_out` output positions along an axis of `n_in` inputs: the two input positions that bilinear
    resizing (`align_corners=False`) blends and the weight of the second, as `F.interpolate` computes them."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(n_in - 1)
    return lo, (lo + 1).clamp_max(n_in - 1), (src - lo).float()


def class_map_at(scores: torch.Tensor, size: tuple[int, int], *, band_pixels: int = 1 << 22) -> np.ndarray:
    """(K, h, w) class scores -> (H, W) labels (`label_dtype`): the argmax of the scores resized to `size` (bilinear,
    as `F.interpolate(align_corners=False)`), without a (K, H, W) map at full size. An output pixel whose four
    source pixels share their best class gets it (a convex combination of score vectors that agree on their argmax
    keeps it); only the others, along class boundaries, are blended. Done a band of `band_pixels` output pixels at
    a time, so a 2048 px working size comes back at 11,500 px holding little more than the labels."""
    k, h, w = scores.shape
    height, width = size
    dtype = label_dtype(k)
    small = class_map(scores[None])[0].to(torch.uint8 if k <= 256 else torch.int32)
    if (height, width) == (h, w):
        return small.cpu().numpy().astype(dtype)
    rows_lo, rows_hi, rows_t = _source_positions(height, h, scores.device)
    cols_lo, cols_hi, cols_t = _source_positions(width, w, scores.device)
    # Source row r at the output's columns, and whether output pixels between rows r and r + 1 (the pair an output
    # row blends when it starts at r) see more than one class among their four source pixels.
    left, right = small[:, cols_lo], small[:, cols_hi]
    below = torch.arange(h, device=scores.device).add(1).clamp_max(h - 1)
    mixed_from = (left != right) | (left != left[below]) | (left[below] != right[below])
    flat = scores.reshape(k, h * w)
    out = np.empty((height, width), dtype=dtype)
    band = max(1, band_pixels // width)
    for top in range(0, height, band):
        lo, hi, t = rows_lo[top : top + band], rows_hi[top : top + band], rows_t[top : top + band]
        labels = left[lo]
        y, x = mixed_from[lo].nonzero(as_tuple=True)
        if len(y):
            x0, x1, tx, ty = cols_lo[x], cols_hi[x], cols_t[x], t[y]
            upper, lower = lo[y] * w, hi[y] * w
            first = flat[:, upper + x0] * (1 - tx) + flat[:, upper + x1] * tx
            second = flat[:, lower + x0] * (1 - tx) + flat[:, lower + x1] * tx
            labels[y, x] = (first * (1 - ty) + second * ty).max(0).indices.to(labels.dtype)  # (K, pixels) -> best
        out[top : top + len(lo)] = labels.cpu().numpy()
    return out


def min_side(module: nn.Module) -> int:
    """The smallest height and width `module` takes: its `min_side` attribute, 1 when it has none."""
    return int(getattr(module, "min_side", 1))


def padded_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, h, w) padded at the bottom and right, repeating the edge pixels, to at least `side` each way."""
    h, w = x.shape[-2:]
    if h >= side and w >= side:
        return x
    return F.pad(x, (0, max(0, side - w), 0, max(0, side - h)), mode="replicate")


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
    precision: str = Precision.fp32.value  # a `Precision` value
    max_side: int | None = PipelineConfig().max_side
    max_pixels: int = IOConfig().max_image_pixels  # files over this many pixels are refused before decoding
    refiner_side: int | None = None
    channels_last: bool = False
    times: StageTimes = field(default_factory=StageTimes)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        self.precision = Precision(self.precision).value  # a plain string, also when given the enum
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
        x = self._layout(padded_to(normalize(resize_images(images, size), pre), min_side(self.base.module)))
        with self._autocast():
            logits = self.base.module(x)[..., : size[0], : size[1]]
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

    def refine_logits(self, images: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, h, w) float RGB in [0, 1]; coarse: (N, K, h, w) probabilities -> refined logits
        (N, K, h, w) float32, -inf for every class absent from an image's coarse argmax (the released rule).

        The refiner's logits come in two parts (`SPNRefiner.forward_parts`): how much of log(coarse) they keep,
        and a correction. With `refiner_side` set and a long side above it, the refiner runs on the image and
        coarse probabilities scaled down to that long side, both parts are upsampled (bilinear) and applied to the
        full-size coarse map, so whatever the refiner leaves alone keeps its full-resolution detail.

        The universal refiner only propagates the classes some image of the batch votes for (at full size): the
        others would be suppressed anyway, and each propagated class costs a full set of scans."""
        assert self.refiner is not None
        height, width = images.shape[-2:]
        votes = present_classes(coarse)  # (N, K)
        full = self.refiner.module.full_resolution
        small = (height, width) if full else working_size(height, width, self.refiner_side)
        if small == (height, width):
            keep, correction = self._refine_parts(images, coarse, votes)
        else:
            keep, correction = self._refine_parts(resize_images(images, small), resize_images(coarse, small), votes)
            correction = _upsample(correction.clamp_min(_FLOOR), height, width)
            keep = _upsample(keep, height, width) if keep.ndim else keep
        if keep.ndim == 0 and not keep.item():  # a refiner that returns its own log probabilities: nothing to add
            logits = correction
        else:
            logits = keep * coarse.clamp_min(RESIDUAL_EPS).log() + correction
        return suppress_absent_classes(logits, coarse, present=votes)

    def refine_probs(self, images: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """As `refine_logits`, as probabilities: (N, K, h, w) float32, 0 for every class absent from an image's coarse
        argmax. A full-resolution refiner that gives probabilities (`GivesProbabilities`) is asked for them: no log
        for a softmax to undo."""
        assert self.refiner is not None
        module = self.refiner.module
        if not (isinstance(module, GivesProbabilities) and module.full_resolution):
            return self.refine_logits(images, coarse).softmax(dim=1)
        votes = present_classes(coarse)
        x, given, present, (h, w) = self._refiner_inputs(images, coarse, votes)
        with self._autocast():
            probs = module.refine_probabilities(x, given)[..., :h, :w].float()
        if present is not None:
            probs = coarse.new_zeros(coarse.shape).index_copy_(1, present, probs)
        if bool(votes.all()):
            return probs
        probs = probs.masked_fill_(~votes[:, :, None, None], 0.0)  # absent from this image, present in another
        return probs.div_(probs.sum(1, keepdim=True))

    def _refiner_inputs(self, images: torch.Tensor, coarse: torch.Tensor, votes: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """What the refiner is given: the images normalised and padded to its `min_side`; the coarse maps padded
        alike, a universal (per-class) refiner's only of the classes `votes` (N, K) names in some image of the batch
        (the others would be suppressed anyway, and each costs a full set of scans); the indices of those classes
        (None when they are all of them: no copy of the maps in and out); and the size to crop its outputs back to."""
        assert self.refiner is not None
        module = self.refiner.module
        h, w = images.shape[-2:]
        side = min_side(module)  # smaller images are padded (edge pixels repeated) and the outputs cropped back
        x = padded_to(normalize(images, self.refiner.meta.preprocess), side)
        x = self._layout(x) if module.channels_last else x.contiguous()
        if not module.per_class:
            if module.classes != coarse.shape[1]:
                raise UsageError(
                    f"the refiner {self.refiner.path.name} takes exactly {module.classes} classes, the coarse maps "
                    f"have {coarse.shape[1]}; use a universal refiner"
                )
            return x, padded_to(coarse, side), None, (h, w)
        present = votes.any(0).nonzero().flatten()
        if len(present) == coarse.shape[1]:
            return x, padded_to(coarse, side), None, (h, w)
        return x, padded_to(coarse[:, present], side), present, (h, w)

    def _refine_parts(self, images: torch.Tensor, coarse: torch.Tensor,
                      votes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The refiner's (keep, correction) (`SPNRefiner.forward_parts`), float32, for the classes `votes` (N, K)
        names in some image of the batch; the others get keep 0 and correction -inf."""
        assert self.refiner is not None
        x, given, present, (h, w) = self._refiner_inputs(images, coarse, votes)
        with self._autocast():
            keep, correction = self.refiner.module.forward_parts(x, given)
        correction = correction[..., :h, :w].float()
        if not self.refiner.module.per_class:
            return (keep[..., :h, :w] if keep.ndim else keep).float(), correction
        keep = keep.float().expand_as(correction)[..., :h, :w] if keep.ndim else keep.float()
        if present is None:
            return keep, correction
        full = torch.full_like(coarse, float("-inf"))
        full[:, present] = correction
        if not keep.ndim:  # one number for every class: the absent ones end at -inf whatever it is
            return keep, full
        kept = torch.zeros_like(coarse)
        kept[:, present] = keep
        return kept, full

    # ------------------------------------------------------------------------------------------- a batch

    @torch.inference_mode()
    def run(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        *,
        coarse_probs: torch.Tensor | None = None,
        num_classes: int | None = None,
        out_sizes: Sequence[tuple[int, int]] | None = None,
        want_probs: bool = False,
        want_coarse_probs: bool = False,
    ) -> BatchOutput:
        """images: (N, h, w, 3) uint8 (CPU, ideally pinned, or on the device); masks: optional (N, h, w) integer
        coarse labels used instead of the base network, with `num_classes` classes (default and the meaning of 255:
        `mask_classes`); coarse_probs: optional (N, K, h, w) float coarse class probabilities (each pixel's K values
        summing to 1) used instead of either. The networks run at (h, w), or scaled down to `max_side`. out_sizes: the
        (H, W) to give each image's labels at (default (h, w)), such as the full size of an image decoded scaled
        down. Returns per-image numpy results: labels and coarse labels (the masks as given, or the coarse
        probabilities' argmax) at the out size (`class_map_at`: no full-size probability maps), probabilities
        (K, h', w') at the size the networks ran at."""
        if masks is not None and coarse_probs is not None:
            raise UsageError("give coarse masks or coarse probabilities, not both")
        n, height, width = images.shape[:3]
        if coarse_probs is not None and (coarse_probs.ndim != 4 or coarse_probs.shape[0] != n
                                         or tuple(coarse_probs.shape[2:]) != (height, width)):
            raise UsageError(f"coarse probabilities must be (N, K, H, W) = ({n}, K, {height}, {width}); got "
                             f"{tuple(coarse_probs.shape)}")
        sizes = list(out_sizes) if out_sizes is not None else [(height, width)] * n
        # NCHW planes (a permuted view would stay channels-last through .float(), and every per-channel pass of the
        # refiner would copy or stride through it); the base network's layout is set where it runs (`_layout`).
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float().div_(255)
        work = working_size(height, width, self.max_side)
        xw = resize_images(x, work)
        del x
        if coarse_probs is not None:
            coarse = resize_images(coarse_probs.to(self.device, non_blocking=True).float(), work)
        elif masks is not None:
            m = masks.to(self.device, non_blocking=True).long()
            k, unknown = mask_classes(m, num_classes)
            if work != (height, width):
                m = F.interpolate(m[:, None].float(), size=work, mode="nearest-exact")[:, 0].long()
            present, m, unknown = present_labels(m, k, unknown)
            coarse = masks_to_probs(m, len(present) if present is not None else k, unknown=unknown, image=xw)
        else:
            with self._timed("base"):
                coarse = self.base_probs(xw)
        if self.refiner is not None:
            with self._timed("refiner"):
                if isinstance(self.refiner.module, GivesProbabilities):
                    scores = self.refine_probs(xw, coarse)
                else:
                    scores = self.refine_logits(xw, coarse)
                    # Labels at the working size are the logits' argmax, which the softmax keeps: it runs only when
                    # probabilities are returned or blended into another size (`class_map_at`).
                    if want_probs or any(size != work for size in sizes):
                        scores = scores.softmax(dim=1)
        else:
            scores = coarse
        labels = [class_map_at(p, size) for p, size in zip(scores, sizes)]
        if masks is not None:
            given = masks.cpu().numpy().astype(label_dtype(k))
            coarse_labels = [io.resize_labels(g, size) for g, size in zip(given, sizes)]
            if present is not None:  # back to the masks' own labels, and probabilities over all k classes
                back = present.cpu().numpy().astype(label_dtype(k))
                labels = [back[c] for c in labels]
                scores, coarse = (_all_classes(t, present, k) if want else t
                                  for t, want in ((scores, want_probs), (coarse, want_coarse_probs)))
        else:
            coarse_labels = [class_map_at(c, size) for c, size in zip(coarse, sizes)]
        self.times.images += n
        return BatchOutput(
            labels=labels,
            coarse=coarse_labels,
            probs=list(scores.cpu().numpy()) if want_probs else None,
            coarse_probs=list(coarse.cpu().numpy()) if want_coarse_probs else None,
        )


def _upsample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)


def stack_images(images: Sequence[np.ndarray], *, pin: bool) -> torch.Tensor:
    """Same-size (H, W, 3) uint8 arrays -> one (N, H, W, 3) uint8 tensor, in pinned memory for fast, asynchronous
    copies to a GPU when `pin`."""
    batch = torch.from_numpy(np.stack(images))
    return batch.pin_memory() if pin else batch
