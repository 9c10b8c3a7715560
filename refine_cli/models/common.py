"""Small pieces every network shares: the training output tuple, width scaling, bilinear kernels."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SegOutput(NamedTuple):
    """What a base segmenter's `forward_train` returns: main logits and, where the net has one, the
    auxiliary head's logits (both (N, K, H, W) at the input size)."""

    out: torch.Tensor
    aux: torch.Tensor | None = None


def scaled(channels: int, width: float, minimum: int = 8) -> int:
    """`channels * width` rounded to a multiple of 8 (at least `minimum`): the width multiplier rule."""
    if width == 1.0:
        return channels
    return max(minimum, int(round(channels * width / 8.0)) * 8)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """(C, C, k, k) weights that make a transposed conv with stride k//2 a per-channel bilinear
    upsampler (the initialisation of FCN's `upscore` layers)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    filt2d = filt[:, None] * filt[None, :]
    w = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    w[range(channels), range(channels)] = filt2d
    return w.float()
