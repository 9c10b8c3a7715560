"""Adaptive receptive fields (Wei, Sun, Wang, Lai & Liu, "Learning Adaptive Receptive Fields for Deep Image
Parsing Network", CVPR 2017): an inflation layer and an interpolation layer sharing one learned factor f,
differentiable in f, and the receptive-field arithmetic of the fc6-fc8 stack they wrap."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Bounds on the effective factor. Outside them the map would shrink to a cell or grow without limit; the
# clamp also stops f's gradient there (a learned f resting on a bound says the range was too narrow).
MIN_FACTOR = 0.25
MAX_FACTOR = 4.0


def _sample_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(len(coords), size) linear-interpolation weights reading a length-`size` axis at real positions
    `coords` (cell centres at 0..size-1; positions beyond the ends read the end cell). Each weight is
    max(0, 1 - |c - j|), piecewise linear in c, so the gradient reaches the coordinates."""
    c = coords.clamp(0.0, float(size - 1))
    cells = torch.arange(size, dtype=coords.dtype, device=coords.device)
    return (1.0 - (c[:, None] - cells[None, :]).abs()).clamp(min=0.0)


def _resample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Separable bilinear resampling of (N, C, H, W) at row positions `rows` and column positions `cols`."""
    wy = _sample_matrix(rows.to(x.dtype), x.shape[-2])
    wx = _sample_matrix(cols.to(x.dtype), x.shape[-1])
    return torch.einsum("yi,ncij,xj->ncyx", wy, x, wx)


def _centres(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, dtype=like.dtype, device=like.device) + 0.5


def inflate(x: torch.Tensor, factor: torch.Tensor, *, min_size: int = 1) -> torch.Tensor:
    """Resize a feature map by `factor` (a 0-d tensor, the learned f).

    The output has max(min_size, round(f * H)) rows (columns alike); output cell i reads the input at
    (i + 0.5) / f - 0.5, the half-pixel convention of `F.interpolate(align_corners=False)`. The size is a
    step function of f but the sampling positions are smooth in f, so dLoss/df flows through them.
    x: (N, C, H, W) float; returns (N, C, h, w) of the same dtype."""
    height, width = x.shape[-2:]
    f = float(factor.detach())
    out_h = max(min_size, round(f * height))
    out_w = max(min_size, round(f * width))
    rows = _centres(out_h, factor) / factor - 0.5
    cols = _centres(out_w, factor) / factor - 0.5
    return _resample(x, rows, cols)


def interpolate(
    x: torch.Tensor,
    factor: torch.Tensor,
    size: tuple[int, int],
    *,
    scale: float = 1.0,
    offset: float = 0.0,
) -> torch.Tensor:
    """Resize a map computed on an inflated grid to the fixed `size`, by the factor g = F / f (F = `scale`).

    Output cell p reads the input at (p + 0.5 + offset) / g - 0.5 - offset. With offset 0 and F = 1 this
    exactly undoes `inflate`; `offset` is the number of cells that unpadded convolutions between the two
    layers trimmed from each side (FCN's 7x7 fc6: 3), which keeps the two grids aligned. f enters only
    through g, so autograd gives the paper's chain rule dLoss/df = dLoss/dg * (-F / f^2).
    x: (N, C, h, w) float; returns (N, C, *size)."""
    g = scale / factor
    rows = (_centres(size[0], factor) + offset) / g - 0.5 - offset
    cols = (_centres(size[1], factor) + offset) / g - 0.5 - offset
    return _resample(x, rows, cols)


class InflationLayer(nn.Module):
    """Parameter-free: resizes its input by the factor it is given (see `inflate`)."""

    def __init__(self, *, min_size: int = 1) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) float; factor: 0-d tensor. Returns (N, C, ~f*H, ~f*W)."""
        return inflate(x, factor, min_size=self.min_size)


class InterpolationLayer(nn.Module):
    """Parameter-free: resizes its input to a fixed size by F / f (see `interpolate`)."""

    def __init__(self, *, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.offset = offset

    def forward(self, x: torch.Tensor, factor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: (N, C, h, w) float; factor: 0-d tensor; size: the fixed output (H, W)."""
        return interpolate(x, factor, size, scale=self.scale, offset=self.offset)


class AdaptiveReceptiveField(nn.Module):
    """The learned factor f and the two layers that use it.

    `inflate` goes before the layers whose receptive field is tuned (fc6), `interpolate` after them (the
    score layer), back to the size the map had before inflation. Inflating by f shrinks what fc6's kernel
    covers in input pixels by 1/f, so f > 1 narrows the receptive field and f < 1 widens it. One scalar
    parameter, `factor` (state-dict key `<name>.factor`); its gradient is the sum of both layers'.

    init: f's starting value (1.0: the wrapped network unchanged, up to floating point).
    min_size: the smallest inflated map (an unpadded k x k fc6 needs k cells).
    offset: cells trimmed from each side between the two layers by unpadded convolutions.
    """

    def __init__(
        self,
        init: float = 1.0,
        *,
        min_size: int = 1,
        offset: float = 0.0,
        min_factor: float = MIN_FACTOR,
        max_factor: float = MAX_FACTOR,
    ) -> None:
        super().__init__()
        if not min_factor <= init <= max_factor:
            raise ValueError(f"rf_init must lie in [{min_factor}, {max_factor}], got {init}")
        self.min_factor = min_factor
        self.max_factor = max_factor
        self.factor = nn.Parameter(torch.tensor(float(init)))
        self.inflation = InflationLayer(min_size=min_size)
        self.interpolation = InterpolationLayer(offset=offset)

    def effective_factor(self) -> torch.Tensor:
        """f clamped to [min_factor, max_factor], as a 0-d tensor in the graph."""
        return self.factor.clamp(self.min_factor, self.max_factor)

    @property
    def value(self) -> float:
        """The factor the layers use now, as a plain float (for logs and plots)."""
        return float(self.effective_factor().detach())

    def inflate(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) float -> (N, C, ~f*H, ~f*W)."""
        return self.inflation(x, self.effective_factor().to(x.dtype))

    def interpolate(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: (N, C, h, w) float computed on the inflated grid -> (N, C, *size)."""
        return self.interpolation(x, self.effective_factor().to(x.dtype), (int(size[0]), int(size[1])))


def fc_receptive_field(
    *, trunk_field: float, stride: float, kernel_extent: int, factor: float = 1.0
) -> float:
    """Receptive field, in input pixels, of a score cell when fc6's input is inflated by `factor`.

    Derivation. The layer feeding fc6 has cells `stride` input pixels apart, each seeing `trunk_field`
    pixels. fc6 spans `kernel_extent` = dilation * (k - 1) + 1 cells of its input (fc7 and the score
    layer are 1x1 and add nothing). On a map inflated by f, neighbouring cells are stride / f input pixels
    apart, so fc6's span covers (kernel_extent - 1) * stride / f pixels beyond one cell's field:

        RF(f) = trunk_field + (kernel_extent - 1) * stride / f.

    The bilinear reads of the two layers widen it by at most stride * (1 + 1/f) more pixels where the
    sampling positions fall between cells (none at f = 1); the formula leaves that out, as the paper's
    receptive-field figures appear to. Examples at f = 1: FCN (pool5: 212 pixels, stride 32, fc6 7x7)
    gives 404; DeepLab-LargeFOV (pool5a: 243, stride 8, fc6 3x3 dilated 12, extent 25) gives 435, and 307
    with fc6 dilated 4. Wei et al. start their runs at fields of 436 and 308;
    that these are one pixel above our counts for dilations 12 and 4 is our reading, suggesting a counting
    convention that differs by one pixel, not a statement of their text.
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    return trunk_field + (kernel_extent - 1) * stride / factor


def vgg_trunk_field(
    *, pools: Sequence[tuple[int, int]], conv5_dilation: int, extra_pool: int = 0
) -> tuple[int, int]:
    """(receptive field in pixels, stride) of the last layer of a VGG-16 trunk: 2, 2, 3, 3, 3 convs of 3x3
    (conv5 dilated by `conv5_dilation`), block b followed by a max pool of (kernel, stride) `pools[b]`
    ((1, 1) for a removed pool); `extra_pool` > 0 adds a stride-1 pool of that kernel (DeepLab's pool5a).
    Standard recursion: a layer of kernel extent e seen at input stride j adds (e - 1) * j pixels to the
    field and multiplies j by its own stride."""
    field, jump = 1, 1
    for block, n in enumerate((2, 2, 3, 3, 3)):
        dilation = conv5_dilation if block == 4 else 1
        field += n * 2 * dilation * jump
        kernel, stride = pools[block]
        field += (kernel - 1) * jump
        jump *= stride
    if extra_pool:
        field += (extra_pool - 1) * jump
    return field, jump


class AdaptiveRFMixin:
    """For networks built with an optional `self.rf` (an AdaptiveReceptiveField, or None): the learned factor and
    what the training loop logs of it."""

    rf: AdaptiveReceptiveField | None

    @property
    def rf_factor(self) -> float | None:
        """The learned inflation factor f (None without `adaptive_rf`)."""
        return None if self.rf is None else self.rf.value

    def training_scalars(self) -> dict[str, float]:
        """What the training loop logs with each metrics line besides the loss: the learned factor f as
        "rf_factor" with `adaptive_rf`, nothing without."""
        return {} if self.rf is None else {"rf_factor": self.rf.value}
