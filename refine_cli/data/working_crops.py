"""Training crops for a refiner at the resolution it runs at: the image and its coarse mask scaled as the pipeline
scales them (long side to the refiner's working side, then a random zoom), a random crop holding enough labels, a
coarse input from a base network's probabilities or made from the ground truth (`refine_cli.data.perturb`), and at
most a few of the crop's classes, so that crops of any label set batch together.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from refine_cli.config import PerturbConfig, WorkingCropConfig
from refine_cli.data.perturb import one_hot, perturb
from refine_cli.labels import IGNORE_INDEX
from refine_cli.transforms import resize_images

_CROP = WorkingCropConfig()


class WorkingCrop(NamedTuple):
    image: torch.Tensor  # (3, c, c) uint8
    label: torch.Tensor  # (c, c) int64, 255 ignored (also where the true class is not among `probs`' maps)
    probs: torch.Tensor  # (M, c, c) float32 coarse probabilities of the kept classes, zero maps padding to M


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


def _window(label: torch.Tensor, side: int, *, rng: torch.Generator, min_labels: int, tries: int) -> tuple[int, int]:
    """Top-left of a side x side window (the map padded when smaller) holding at least `min_labels` labels, or the
    first window with the most labels after `tries` draws."""
    h, w = label.shape
    best = None
    for _ in range(tries):
        top = int(torch.randint(0, max(1, h - side + 1), (), generator=rng))
        left = int(torch.randint(0, max(1, w - side + 1), (), generator=rng))
        count = int((torch.unique(label[top:top + side, left:left + side]) != IGNORE_INDEX).sum())
        if best is None or count > best[0]:
            best = (count, top, left)
        if count >= min_labels:
            break
    return best[1], best[2]


def _region(x: torch.Tensor, top: int, left: int, side: int, fill: float) -> torch.Tensor:
    """x[..., top:top+side, left:left+side], padded with `fill` where the window leaves the map."""
    out = x[..., top:top + side, left:left + side]
    ph, pw = side - out.shape[-2], side - out.shape[-1]
    if ph or pw:
        out = F.pad(out.float() if not out.is_floating_point() else out, (0, pw, 0, ph), value=fill).to(x.dtype)
    return out


def _nearest(label: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()


def keep_classes(probs: torch.Tensor, label: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The coarse maps of the (at most `limit`) classes that win most pixels of the coarse argmax, padded with zero
    maps to `limit`; labels renumbered to them, 255 where the true class is not kept (a class the coarse mask does
    not name is suppressed at inference, so no refiner can recover it)."""
    k = probs.shape[0]
    votes = torch.bincount(probs.argmax(0).flatten(), minlength=k)
    order = torch.argsort(votes, descending=True, stable=True)
    kept = order[:min(limit, int((votes > 0).sum()))]
    out = torch.zeros((limit, *probs.shape[1:]), dtype=torch.float32)
    out[:len(kept)] = probs[kept].float()
    out = out / out.sum(0, keepdim=True).clamp_min(1e-6)
    lookup = torch.full((max(k, 1) + 1,), IGNORE_INDEX, dtype=torch.long)
    lookup[kept] = torch.arange(len(kept))
    safe = torch.where(label == IGNORE_INDEX, torch.full_like(label, k), label.clamp(max=k))
    return out, lookup[safe]


def working_crop(
    image: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    *,
    rng: torch.Generator,
    probs: torch.Tensor | None = None,
    hard_p: float = 0.0,
    perturb_base_p: float = 0.0,
    perturb_config: PerturbConfig | None = None,
    config: WorkingCropConfig = _CROP,
) -> WorkingCrop:
    """One training crop at the refiner's working resolution.

    image (3, H, W) uint8, label (H, W) int (255 ignored) at full size. The coarse input is `probs` (K, H, W) (a
    base network's, made one-hot with chance `hard_p`, or its argmax perturbed further with chance
    `perturb_base_p`) when given, else made from the crop's ground truth with `perturb_config`. The crop covers
    `config.size / f` full-size pixels, f = config.side / max(H, W) (1 without a side) times a zoom log-uniform in
    `config.zoom`, and is scaled to `config.size` as the pipeline scales (antialiased bilinear for the
    image and probabilities; ground truth perturbed at twice the size and area-averaged down, so a hard mask gets
    the same soft edge it gets at inference). Flipped left-right with chance 1/2 when `config.flip`.
    """
    c = config.size
    h, w = label.shape
    zoom = math.exp(_uniform(rng, math.log(config.zoom[0]), math.log(config.zoom[1])))
    f = (1.0 if config.side is None else config.side / max(h, w)) * zoom
    side = max(2, round(c / f))
    top, left = _window(label, side, rng=rng, min_labels=config.min_labels, tries=config.max_tries)
    img = _region(image, top, left, side, 0.0)
    lab = _region(label, top, left, side, IGNORE_INDEX)
    img_c = resize_images(img[None].float(), (c, c))[0].round().clamp(0, 255).to(torch.uint8)
    lab_c = _nearest(lab, c)
    cfg = perturb_config or PerturbConfig()
    if probs is not None:
        region = _region(probs.float(), top, left, side, 0.0)
        if perturb_base_p > 0 and float(torch.rand((), generator=rng)) < perturb_base_p:
            # a network's map on its own training images is too good: its mistakes, and made ones on top
            fine = perturb(_nearest(region.argmax(0), 2 * c), num_classes, rng=rng, config=cfg)
            coarse = F.interpolate(fine[None], size=(c, c), mode="area")[0]
        else:
            if hard_p > 0 and float(torch.rand((), generator=rng)) < hard_p:
                region = one_hot(region.argmax(0), num_classes)
            coarse = resize_images(region[None], (c, c))[0]
    else:
        fine = perturb(_nearest(lab, 2 * c), num_classes, rng=rng, config=cfg)
        coarse = F.interpolate(fine[None], size=(c, c), mode="area")[0]
    if config.flip and float(torch.rand((), generator=rng)) < 0.5:
        img_c, lab_c, coarse = img_c.flip(-1), lab_c.flip(-1), coarse.flip(-1)
    coarse, lab_c = keep_classes(coarse, lab_c, config.max_classes)
    return WorkingCrop(img_c.contiguous(), lab_c.contiguous(), coarse.contiguous())
