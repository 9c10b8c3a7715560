"""Coarse masks made from ground truth, for training refiners on data no base network has seen (or has seen too
well: a network's outputs on its own training images are nearly perfect). The errors imitate what base networks
and masks made elsewhere get wrong: boundaries blurred like a stride-s network's, regions grown or shrunk, borders
warped, holes and spurious blobs, whole regions given another class. Pure torch on (H, W) label maps, deterministic
for a seeded `torch.Generator`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from refine_cli.config import PerturbConfig
from refine_cli.labels import IGNORE_INDEX

_PERTURB = PerturbConfig()


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


def _log_uniform(rng: torch.Generator, low: float, high: float) -> float:
    return math.exp(_uniform(rng, math.log(low), math.log(high)))


def _chance(rng: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=rng)) < p


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(H, W) integer labels -> (K, H, W) float32 one-hot; ignored (255) pixels are all zero."""
    valid = label != IGNORE_INDEX
    safe = torch.where(valid, label, torch.zeros_like(label)).long().clamp_(0, num_classes - 1)
    return F.one_hot(safe, num_classes).permute(2, 0, 1).float() * valid


def fill_ignored(label: torch.Tensor) -> torch.Tensor:
    """Each ignored (255) pixel takes the label of the nearest labelled pixel; a map with no labelled pixel
    becomes class 0. A coarse mask has a class everywhere."""
    ignored = label == IGNORE_INDEX
    if not ignored.any():
        return label
    if ignored.all():
        return torch.zeros_like(label)
    # distanceTransformWithLabels names, for every pixel, the nearest zero pixel (a labelled one here)
    src = ignored.numpy().astype(np.uint8)
    _, nearest = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    zeros = np.flatnonzero(src.ravel() == 0)  # pixel label i (1-based) is the i-th zero pixel in raster order
    flat = label.numpy().ravel()
    filled = flat[zeros[nearest.ravel() - 1]].reshape(label.shape)
    return torch.from_numpy(filled.astype(np.int64))


def stride_probs(label: torch.Tensor, num_classes: int, stride: float, *, blocky: bool = False) -> torch.Tensor:
    """(H, W) labels (no 255) -> (K, H, W) probabilities as a network of output stride `stride` gives them: the
    one-hot area-averaged over stride x stride cells and upsampled bilinearly, or by repeating each cell's value
    (`blocky`, as a mask upscaled by pixel replication)."""
    height, width = label.shape
    x = one_hot(label, num_classes)[None]
    small = (max(1, round(height / stride)), max(1, round(width / stride)))
    if small != (height, width):
        x = F.interpolate(x, size=small, mode="area")
        if blocky:
            x = F.interpolate(x, size=(height, width), mode="nearest")
        else:
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0] / x[0].sum(0, keepdim=True).clamp_min(1e-6)


def warp_labels(label: torch.Tensor, *, rng: torch.Generator, amplitude: float, scale: float) -> torch.Tensor:
    """Move every border by a smooth random displacement field: Gaussian noise on a grid of `scale`-pixel cells,
    upsampled (bicubic) and scaled so its largest displacement is `amplitude` pixels; nearest-label resampling."""
    height, width = label.shape
    cells = (max(2, round(height / scale) + 1), max(2, round(width / scale) + 1))
    field = torch.randn(1, 2, *cells, generator=rng)
    field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True)[0]
    field = field * (amplitude / field.abs().amax().clamp_min(1e-6))
    ys = torch.arange(height, dtype=torch.float32)[:, None] + field[0]
    xs = torch.arange(width, dtype=torch.float32)[None, :] + field[1]
    row = ys.round().long().clamp_(0, height - 1)
    col = xs.round().long().clamp_(0, width - 1)
    return label[row, col]


def morph_labels(label: torch.Tensor, radii: list[int]) -> torch.Tensor:
    """Grow (r > 0) or shrink (r < 0) each class k by radii[k] pixels, one class after the other: a grown class
    takes over its (2r+1)-square neighbourhood; a shrunk class's lost border goes to the nearest other class."""
    out = label.numpy().copy()
    for k, r in enumerate(radii):
        if r == 0:
            continue
        mask = (out == k).astype(np.uint8)
        if not mask.any():
            continue
        kernel = np.ones((2 * abs(r) + 1,) * 2, np.uint8)
        if r > 0:
            out[cv2.dilate(mask, kernel) > 0] = k
        else:
            lost = (mask > 0) & (cv2.erode(mask, kernel, borderType=cv2.BORDER_REPLICATE) == 0)
            if lost.any() and not (mask > 0).all():
                holed = out.copy()
                holed[mask > 0] = IGNORE_INDEX
                out[lost] = fill_ignored(torch.from_numpy(holed)).numpy()[lost]
    return torch.from_numpy(out)


def blob_mask(height: int, width: int, *, rng: torch.Generator, radius: float,
              centre: tuple[float, float] | None = None) -> torch.Tensor:
    """A random irregular blob (an ellipse with a wavy border) of about `radius` pixels around `centre` (y, x), or
    somewhere in the map."""
    cy, cx = centre if centre is not None else (_uniform(rng, 0, height), _uniform(rng, 0, width))
    ry, rx = radius * _uniform(rng, 0.5, 1.5), radius * _uniform(rng, 0.5, 1.5)
    angle = _uniform(rng, 0, math.pi)
    ys = torch.arange(height, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(width, dtype=torch.float32)[None, :] - cx
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / rx
    v = (-xs * math.sin(angle) + ys * math.cos(angle)) / ry
    theta = torch.atan2(v, u)
    phase = _uniform(rng, 0, 2 * math.pi)
    wobble = 1 + 0.25 * torch.sin(3 * theta + phase)
    return u * u + v * v <= wobble * wobble


def _pixel_of(mask: torch.Tensor, rng: torch.Generator) -> tuple[float, float] | None:
    """A uniformly drawn (y, x) where `mask` is True, None when it is all False."""
    where = mask.flatten().nonzero().flatten()
    if len(where) == 0:
        return None
    index = int(where[int(torch.randint(len(where), (), generator=rng))])
    return float(index // mask.shape[1]), float(index % mask.shape[1])


def drop_blob(label: torch.Tensor, cls: int, *, rng: torch.Generator, radius: float) -> torch.Tensor:
    """`label` with a blob of class `cls` centred on a pixel of another class: a hole in an object, or a spurious
    region on the background, a region the image says belongs elsewhere. The caller draws `cls` uniformly among
    the present classes, not by area, so holes in small objects are as common as blobs on large backgrounds."""
    centre = _pixel_of(label != cls, rng)
    if centre is None:
        return label
    mask = blob_mask(*label.shape, rng=rng, radius=radius, centre=centre)
    return torch.where(mask, torch.full_like(label, cls), label)


def perturb(
    label: torch.Tensor,
    num_classes: int,
    *,
    rng: torch.Generator,
    config: PerturbConfig = _PERTURB,
) -> torch.Tensor:
    """A coarse version of the ground truth `label` (H, W) int (255 ignored): (K, H, W) float32 probabilities,
    one-hot with probability `config.hard_p` (a mask made elsewhere), else soft (a network's output).

    In order, each with its own probability: ignored pixels filled from their neighbours; borders warped by a
    smooth field; each class grown or shrunk; blobs of a present class dropped in (spurious regions and holes);
    whole connected areas relabelled (class confusions); and the result blurred like a stride-s network's output.
    """
    cfg = config
    height, width = label.shape
    out = fill_ignored(label.long())
    if _chance(rng, cfg.warp_p):
        amplitude = _uniform(rng, 1.0, cfg.warp_px)
        out = warp_labels(out, rng=rng, amplitude=amplitude, scale=_uniform(rng, *cfg.warp_scale))
    if _chance(rng, cfg.morph_p):
        radii = torch.randint(-cfg.morph_px, cfg.morph_px + 1, (num_classes,), generator=rng).tolist()
        out = morph_labels(out, radii)
    present = torch.unique(out).tolist()
    blobs = int(torch.randint(cfg.blobs[0], cfg.blobs[1] + 1, (), generator=rng))
    for _ in range(blobs if len(present) > 1 else 0):
        cls = present[int(torch.randint(len(present), (), generator=rng))]
        out = drop_blob(out, cls, rng=rng, radius=_uniform(rng, *cfg.blob_radius) * min(height, width))
    if _chance(rng, cfg.confuse_p) and len(present) > 1:
        victim = present[int(torch.randint(len(present), (), generator=rng))]
        centre = _pixel_of(out == victim, rng)
        region = (out == victim) & blob_mask(height, width, rng=rng, centre=centre,
                                             radius=_uniform(rng, *cfg.confuse_radius) * min(height, width))
        others = [c for c in present if c != victim]
        out = torch.where(region, torch.full_like(out, others[int(torch.randint(len(others), (), generator=rng))]),
                          out)
    stride = _log_uniform(rng, *cfg.stride) if _chance(rng, cfg.stride_p) else 1.0
    probs = stride_probs(out, num_classes, stride, blocky=_chance(rng, cfg.blocky_p))
    if _chance(rng, cfg.hard_p):
        return one_hot(probs.argmax(0), num_classes)
    if cfg.confidence[0] < 1:
        # a network is never quite sure: mix in some of the uniform distribution
        keep = _uniform(rng, *cfg.confidence)
        probs = keep * probs + (1 - keep) / num_classes
    return probs
