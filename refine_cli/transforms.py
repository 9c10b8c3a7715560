"""Pure tensor preprocessing driven by a checkpoint's metadata (colour order, scale, mean/std, resize).

Images enter as float RGB in [0, 1], shape (N, 3, H, W); what a network sees is decided here only, from its
`Preprocess`, never by a hard-coded mean elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Caffe FCN models take BGR in 0..255 minus this per-channel mean (pytorch-fcn port of Long et al.).
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67891)

ResizeRule = Literal["none", "short_side", "long_side", "square", "multiple"]
# "short_side" stops enlarging where the long side reaches this many times `size` (torchvision's `Resize(max_size=)`):
# a 3000 x 1 strip would otherwise run at 1,440,000 x 480 px under ESPNetv2's rule (18 GB before it was killed).
LONG_SIDE_CAP = 4


@dataclass(frozen=True)
class Preprocess:
    """How a network wants its input.

    color_order: channel order fed to the network.
    scale: the [0, 1] image is multiplied by this before the mean is subtracted (255 for Caffe models).
    mean, std: per channel, in the network's colour order and scale.
    resize: "none", "short_side" (short side to `size`, as torchvision's VOC models, the long side kept within
        `LONG_SIDE_CAP` x `size`), "long_side" (long side to `size` when larger), "square" (`size` x `size`, aspect
        not kept: the test script of EdgeNets' ESPNetv2) or
        "multiple" (each side rounded down to a multiple of `size`, at least `size`: EdgeNets' segmentation demo).
        The network's output is resized back to the input size.
    """

    color_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: ResizeRule = "none"
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        d = dict(d)
        d["mean"] = tuple(float(v) for v in d.get("mean", IMAGENET_MEAN))
        d["std"] = tuple(float(v) for v in d.get("std", IMAGENET_STD))
        return cls(**d)


CAFFE_FCN = Preprocess(color_order="BGR", scale=255.0, mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0))
IMAGENET = Preprocess()
RAW_RGB = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # RGB in [0, 1] as decoded


def normalize(images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(N, 3, H, W) float RGB in [0, 1] -> the network's input: colour order, scale, mean/std applied. Steps that
    change nothing are skipped (no whole-image passes for a network that takes [0, 1] RGB): the result may then be
    `images` itself, never to be modified in place."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
    x = images.flip(1) if pre.color_order == "BGR" else images
    if pre.scale != 1.0:
        x = x * pre.scale
    if any(m != 0.0 for m in pre.mean):
        x = x - torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    if any(s != 1.0 for s in pre.std):
        x = x / torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x


def resized_shape(height: int, width: int, pre: Preprocess) -> tuple[int, int]:
    """The (H, W) the network runs at for an input of (height, width) under `pre.resize`."""
    if pre.resize == "none" or pre.size is None:
        return height, width
    if pre.resize == "short_side":
        s = min(pre.size / min(height, width), LONG_SIDE_CAP * pre.size / max(height, width))
    elif pre.resize == "long_side":
        s = min(1.0, pre.size / max(height, width))
    elif pre.resize == "square":
        return pre.size, pre.size
    elif pre.resize == "multiple":
        return max(pre.size, height // pre.size * pre.size), max(pre.size, width // pre.size * pre.size)
    else:
        raise ValueError(f"unknown resize rule {pre.resize!r}")
    return max(1, round(height * s)), max(1, round(width * s))


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased when shrinking; a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)
