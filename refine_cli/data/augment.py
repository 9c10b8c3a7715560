"""Joint augmentation for refiner training as released (Liu et al. 2017): one random affine for image, label and
coarse probabilities together, then random crops redrawn until they hold enough labels. Pure torch, unbatched
(C, H, W) tensors, deterministic for a seeded `torch.Generator`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from refine_cli.config import AugmentConfig, CropConfig
from refine_cli.labels import IGNORE_INDEX

_AUG = AugmentConfig()
_CROP = CropConfig()


class AffineParams(NamedTuple):
    """The draw: a source point p lands at scale * R(angle) (p - c) + c + (shift_x, shift_y), c the image
    centre, in pixel units with y pointing down (a positive angle turns clockwise as displayed)."""

    angle_deg: float
    scale: float
    shift_x: float
    shift_y: float


class Augmented(NamedTuple):
    image: torch.Tensor  # (3, H, W), dtype of the input
    label: torch.Tensor  # (H, W), dtype of the input, 255 where no source pixel exists
    probs: torch.Tensor | None  # (C, H, W) float, still summing to 1
    params: AffineParams


class Crop(NamedTuple):
    image: torch.Tensor  # (3, size, size)
    label: torch.Tensor  # (size, size)
    probs: torch.Tensor | None  # (C, size, size)
    top: int  # position in the (padded) input
    left: int
    tries: int  # crops drawn, 1..max_tries


class CropBatch(NamedTuple):
    images: torch.Tensor  # (N, 3, size, size)
    labels: torch.Tensor  # (N, size, size)
    probs: torch.Tensor | None  # (N, C, size, size)


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


def _probs_fill(probs: torch.Tensor, how: str) -> torch.Tensor:
    """The distribution put where the source has no pixel: "uniform" (1/C, no class evidence) or
    "background" (one-hot class 0)."""
    c = probs.shape[0]
    if how == "uniform":
        return torch.full((c, 1, 1), 1.0 / c, dtype=probs.dtype, device=probs.device)
    if how == "background":
        fill = torch.zeros((c, 1, 1), dtype=probs.dtype, device=probs.device)
        fill[0] = 1.0
        return fill
    raise ValueError(f"probs_fill must be 'uniform' or 'background', not {how!r}")


def _check(image: torch.Tensor, label: torch.Tensor, probs: torch.Tensor | None) -> None:
    if image.ndim != 3 or label.ndim != 2 or image.shape[1:] != label.shape:
        raise ValueError(f"expected image (3, H, W) and label (H, W), got {tuple(image.shape)} and "
                         f"{tuple(label.shape)}")
    if probs is not None and (probs.ndim != 3 or probs.shape[1:] != label.shape):
        raise ValueError(f"expected probs (C, H, W) matching the label, got {tuple(probs.shape)}")


def joint_affine(
    image: torch.Tensor,
    label: torch.Tensor,
    probs: torch.Tensor | None = None,
    *,
    rng: torch.Generator,
    rotation_deg: float = _AUG.rotation_deg,
    scale: float = _AUG.scale,
    shift_fraction: float = _AUG.shift_fraction,
    image_fill: float = _AUG.image_fill,
    probs_fill: str = _AUG.probs_fill,
) -> Augmented:
    """One random affine about the image centre, applied to all three.

    rotation uniform in +/-rotation_deg, scale uniform in 1 +/- scale, shift uniform in
    +/-shift_fraction * the longer side along each axis (SPN as released). The output keeps the input size.
    image (3, H, W) uint8 or float: bilinear; outside the source it is `image_fill`.
    label (H, W) integer: nearest (the source pixel whose area holds the point; values are never mixed);
        outside the source it is 255 (ignored by the loss).
    probs (C, H, W) float: bilinear; outside the source `probs_fill`, by default uniform: the refiner's input
        stays a distribution everywhere, that area carries no class evidence to propagate (its label is
        ignored anyway), and, unlike a background fill, it does not teach the refiner that what lies beyond
        an image border is background.
    """
    _check(image, label, probs)
    h, w = label.shape
    degrees = _uniform(rng, -rotation_deg, rotation_deg)
    angle = math.radians(degrees)
    factor = _uniform(rng, 1.0 - scale, 1.0 + scale)
    longer = max(h, w)
    tx = _uniform(rng, -shift_fraction, shift_fraction) * longer
    ty = _uniform(rng, -shift_fraction, shift_fraction) * longer

    # Output pixel centres -> source positions (continuous pixel units, pixel j covers [j, j+1)):
    # out = factor * R(angle) (src - c) + c + t, inverted.
    dtype = torch.float64
    ys = torch.arange(h, dtype=dtype) + 0.5 - h / 2 - ty
    xs = torch.arange(w, dtype=dtype) + 0.5 - w / 2 - tx
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cos, sin = math.cos(angle) / factor, math.sin(angle) / factor
    sx = cos * gx + sin * gy + w / 2
    sy = -sin * gx + cos * gy + h / 2

    # label: the pixel containing the point, 255 outside
    col, row = torch.floor(sx), torch.floor(sy)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    index = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).long().to(label.device)
    new_label = label.reshape(-1)[index.reshape(-1)].reshape(h, w)
    new_label = torch.where(inside.to(label.device), new_label, torch.full_like(new_label, IGNORE_INDEX))

    # image and probs: bilinear; sampling (x - fill) with zero padding and adding fill back makes the
    # outside exactly `fill` and blends the border with it
    grid = torch.stack([2 * sx / w - 1, 2 * sy / h - 1], -1)[None].to(torch.float32)

    def warp(x: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
        x = x.to(torch.float32)
        out = F.grid_sample((x - fill)[None], grid.to(x.device), mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
        return out + fill

    warped = warp(image, float(image_fill))
    if not image.is_floating_point():
        info = torch.iinfo(image.dtype)
        warped = warped.round().clamp(info.min, info.max)
    new_image = warped.to(image.dtype)
    new_probs = None
    if probs is not None:
        new_probs = warp(probs, _probs_fill(probs.to(torch.float32), probs_fill)).to(probs.dtype)
    return Augmented(new_image, new_label, new_probs, AffineParams(degrees, factor, tx, ty))


def random_crop_with_labels(
    image: torch.Tensor,
    label: torch.Tensor,
    probs: torch.Tensor | None = None,
    *,
    rng: torch.Generator,
    size: int = _CROP.size,
    min_labels: int = _CROP.min_labels,
    max_tries: int = _CROP.max_tries,
    image_fill: float = _AUG.image_fill,
    probs_fill: str = _AUG.probs_fill,
) -> Crop:
    """A random size x size crop holding at least `min_labels` distinct labels (255 not counted).

    A crop with fewer is redrawn, up to `max_tries` draws in all; when none qualifies, the first crop with
    the most labels is kept. An input smaller than `size` is padded at the bottom and right: label 255,
    image `image_fill`, probs `probs_fill` (see `joint_affine`).
    """
    _check(image, label, probs)
    if max_tries < 1 or size < 1:
        raise ValueError("size and max_tries must be at least 1")
    h, w = label.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=image_fill)
        label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
        if probs is not None:
            fill = _probs_fill(probs, probs_fill)
            probs = F.pad(probs - fill, (0, pw, 0, ph), value=0.0) + fill
    hp, wp = label.shape
    best: tuple[int, int, int] | None = None  # (count, top, left)
    tries = 0
    for tries in range(1, max_tries + 1):
        top = int(torch.randint(0, hp - size + 1, (), generator=rng))
        left = int(torch.randint(0, wp - size + 1, (), generator=rng))
        window = label[top : top + size, left : left + size]
        count = int((torch.unique(window) != IGNORE_INDEX).sum())
        if best is None or count > best[0]:
            best = (count, top, left)
        if count >= min_labels:
            break
    _, top, left = best
    box = (slice(top, top + size), slice(left, left + size))
    return Crop(
        image[(slice(None), *box)],
        label[box],
        None if probs is None else probs[(slice(None), *box)],
        top,
        left,
        tries,
    )


def coarsen_probs(probs: torch.Tensor, factor: float) -> torch.Tensor:
    """(K, H, W) probabilities area-downsampled by `factor` and resized back (bilinear): still probabilities, with
    the detail finer than `factor` pixels gone. A factor below 1.5 changes nothing."""
    height, width = probs.shape[-2:]
    small = (max(1, round(height / factor)), max(1, round(width / factor)))
    if small == (height, width) or factor < 1.5:
        return probs
    x = torch.nn.functional.interpolate(probs[None].float(), size=small, mode="area")
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0].to(probs.dtype)


PROBS_FLOOR = 1e-6  # probabilities below this are taken as this before re-tempering (log of zero)


def displace_probs(probs: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(K, H, W) probabilities with class k's region grown by radii[k] pixels (shrunk where negative), one class
    after the other: p_k max-filtered over a (2r+1) square (min-filtered for r < 0), and the other classes
    rescaled, in their own proportions, to fill the rest (1 - p_k). Still probabilities; radii of 0 change
    nothing."""
    out = probs.float().clamp_min(PROBS_FLOOR)
    out = out / out.sum(0, keepdim=True)
    for k, r in enumerate(radii.tolist()):
        if r == 0:
            continue
        x = out[k][None, None]
        moved = F.max_pool2d(x if r > 0 else -x, 2 * abs(r) + 1, stride=1, padding=abs(r))[0, 0]
        moved = moved if r > 0 else -moved
        rest = torch.cat([out[:k], out[k + 1:]])
        rest = rest / rest.sum(0, keepdim=True) * (1 - moved)
        out = torch.cat([rest[:k], moved[None], rest[k:]])
    return out.to(probs.dtype)


def refiner_crops(
    image: torch.Tensor,
    label: torch.Tensor,
    probs: torch.Tensor | None = None,
    *,
    rng: torch.Generator,
    augment: AugmentConfig | None = _AUG,
    crop: CropConfig = _CROP,
) -> CropBatch:
    """One image's share of a training batch as released: one joint affine (skipped when `augment` is
    None), then `crop.crops_per_image` crops (4 images x 10 crops made the batch of 40); with
    `augment.hard_probs_p`, that share of the crops gets one-hot coarse probabilities (the argmax); with
    `augment.probs_temperature` T > 1, every other crop's probabilities become softmax(log p / t), t log-uniform in
    [1/T, T] (sharper or flatter, same argmax); with `augment.probs_coarsen` S > 1, every crop's probabilities are
    smoothed: area-downsampled by s, s log-uniform in [1, S], and resized back (bilinear); with
    `augment.probs_displace` R > 0, every class map of every crop is grown or shrunk by a radius uniform in
    [-R, R] (`displace_probs`). The one-hot crops are made last, from the transformed probabilities."""
    if augment is not None:
        image, label, probs, _ = joint_affine(
            image, label, probs, rng=rng, rotation_deg=augment.rotation_deg, scale=augment.scale,
            shift_fraction=augment.shift_fraction, image_fill=augment.image_fill, probs_fill=augment.probs_fill,
        )
    fill = augment.image_fill if augment is not None else _AUG.image_fill
    how = augment.probs_fill if augment is not None else _AUG.probs_fill
    crops = [
        random_crop_with_labels(image, label, probs, rng=rng, size=crop.size, min_labels=crop.min_labels,
                                max_tries=crop.max_tries, image_fill=fill, probs_fill=how)
        for _ in range(crop.crops_per_image)
    ]
    crop_probs = None if probs is None else torch.stack([c.probs for c in crops])
    temperature = augment.probs_temperature if augment is not None else 1.0
    if crop_probs is not None and temperature > 1:
        spread = math.log(temperature)
        t = torch.exp((2 * torch.rand(len(crops), generator=rng) - 1) * spread)[:, None, None, None]
        logp = crop_probs.float().clamp_min(PROBS_FLOOR).log()
        crop_probs = torch.softmax(logp / t, dim=1).to(crop_probs.dtype)
    coarsen = augment.probs_coarsen if augment is not None else 1.0
    if crop_probs is not None and coarsen > 1:
        factors = torch.exp(torch.rand(len(crops), generator=rng) * math.log(coarsen)).tolist()
        crop_probs = torch.stack([coarsen_probs(p, s) for p, s in zip(crop_probs, factors)])
    displace = augment.probs_displace if augment is not None else 0
    if crop_probs is not None and displace > 0:
        radii = torch.randint(-displace, displace + 1, crop_probs.shape[:2], generator=rng)
        crop_probs = torch.stack([displace_probs(p, r) for p, r in zip(crop_probs, radii)])
    hard_p = augment.hard_probs_p if augment is not None else 0.0
    if crop_probs is not None and hard_p > 0:
        hard = torch.rand(len(crops), generator=rng) < hard_p
        onehot = torch.nn.functional.one_hot(crop_probs.argmax(1), crop_probs.shape[1]).permute(0, 3, 1, 2)
        crop_probs = torch.where(hard[:, None, None, None], onehot.to(crop_probs.dtype), crop_probs)
    return CropBatch(torch.stack([c.image for c in crops]), torch.stack([c.label for c in crops]), crop_probs)
