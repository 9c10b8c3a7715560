"""`propagate`: one directional three-way scan of the Spatial Propagation Network, and gate normalisation.

Every direction is the left-to-right scan applied to the flipped / transposed maps and mapped back; here that
mapping is a permutation into the time-major layout the kernels use (see `scan.py`), not extra copies.
"""

from __future__ import annotations

from typing import Literal

import torch

from refine_cli.ops.reference import scan_left_to_right_reference
from refine_cli.ops.scan import ScanFunction

Direction = Literal["left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"]
DIRECTIONS: tuple[Direction, ...] = ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top")
Backend = Literal["auto", "torch", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "reference")
GateNorm = Literal["bounded", "unit_sum"]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")


def _oriented(t: torch.Tensor, direction: Direction) -> torch.Tensor:
    """(..., H, W) -> the same map seen by a left-to-right scan: transposed for the vertical directions
    (transpose H and W for top_to_bottom), flipped along the scan axis for the backward ones."""
    if direction in ("top_to_bottom", "bottom_to_top"):
        t = t.transpose(-1, -2)
    if direction in ("right_to_left", "bottom_to_top"):
        t = t.flip(-1)
    return t


def _unoriented(t: torch.Tensor, direction: Direction) -> torch.Tensor:
    """Inverse of `_oriented`."""
    if direction in ("right_to_left", "bottom_to_top"):
        t = t.flip(-1)
    if direction in ("top_to_bottom", "bottom_to_top"):
        t = t.transpose(-1, -2)
    return t


def _edge_mask(steps: int, width: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, 3, 1, 1, 1, L) multipliers: the first step ignores its gates, and a neighbour outside the map
    (row l-1 at l = 0, row l+1 at l = L-1) has no gate, so it drops out of the (1 - sum) term too."""
    mask = torch.ones(steps, 3, 1, 1, 1, width, dtype=dtype, device=device)
    mask[0] = 0
    mask[:, 0, ..., 0] = 0
    mask[:, 2, ..., width - 1] = 0
    return mask


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs accumulate in float32; float64 stays float64 (gradcheck).
    return torch.float64 if dtype == torch.float64 else torch.float32


def propagate(
    x: torch.Tensor, gates: torch.Tensor, direction: Direction, *, backend: Backend = "auto"
) -> torch.Tensor:
    """One directional scan of the three-way spatial propagation (Liu et al., NIPS 2017).

    For left_to_right, over columns t = 1..W-1, for every row h and channel c:
        out[h, t] = (1 - g1 - g2 - g3) x[h, t] + g1 out[h-1, t-1] + g2 out[h, t-1] + g3 out[h+1, t-1]
    with g1, g2, g3 = gates[:, 0], gates[:, 1], gates[:, 2] read at (h, t); column 0 passes x through; a neighbour
    outside the map contributes nothing and its gate is left out of the (1 - sum) term. The other directions are
    exactly left_to_right applied to the map transposed (top_to_bottom), flipped in W (right_to_left), or
    transposed then flipped (bottom_to_top), and mapped back.

    x: (N, C, H, W), or (N, K, C, H, W) where the K maps share the same gates (the universal refiner propagates
       every class map with the same guidance).
    gates: (N, 3, C, H, W), used as given (normalise them first with `normalize_gates`).
    Returns a tensor shaped and typed like x. float16 / bfloat16 inputs are accumulated in float32.
    backend: "torch" (custom autograd function: backward is the reverse-time recurrence), "reference" (the plain
       autograd loop, for tests and benchmarks) or "auto" (the fastest available for the device).
    """
    _check_direction(direction)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    grouped = x.ndim == 5
    if x.ndim not in (4, 5):
        raise ValueError(f"x must be (N, C, H, W) or (N, K, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    if gates.shape != (n, 3, c, h, w):
        raise ValueError(f"gates must be {(n, 3, c, h, w)} for x of shape {tuple(x.shape)}, got {tuple(gates.shape)}")

    if backend == "reference":
        return _propagate_reference(x, gates, direction)

    cdt = _compute_dtype(x.dtype)
    x5 = x if grouped else x.unsqueeze(1)
    # Time-major: (..., H, W) oriented so the scan runs along the last axis, then that axis moved first.
    xt = _oriented(x5.to(cdt), direction).movedim(-1, 0).contiguous()  # (T, N, K, C, L)
    gt = _oriented(gates.to(cdt).movedim(1, 0).unsqueeze(2), direction).movedim(-1, 0)  # (T, 3, N, 1, C, L)
    steps, width = xt.shape[0], xt.shape[-1]
    gt = gt * _edge_mask(steps, width, dtype=cdt, device=x.device)
    out = ScanFunction.apply(xt, gt.contiguous())
    out = _unoriented(out.movedim(0, -1), direction).to(x.dtype)
    return out if grouped else out.squeeze(1)


def _propagate_reference(x: torch.Tensor, gates: torch.Tensor, direction: Direction) -> torch.Tensor:
    cdt = _compute_dtype(x.dtype)
    if x.ndim == 5:
        n, k = x.shape[:2]
        flat = x.flatten(0, 1)
        gates = gates.repeat_interleave(k, dim=0)
    else:
        flat = x
    out = scan_left_to_right_reference(_oriented(flat.to(cdt), direction), _oriented(gates.to(cdt), direction))
    out = _unoriented(out, direction).to(x.dtype)
    return out.view_as(x)


def normalize_gates(gates: torch.Tensor, mode: GateNorm = "bounded", *, eps: float = 1e-6) -> torch.Tensor:
    """Make the scan stable: |g1| + |g2| + |g3| <= 1 at every pixel. gates: (N, 3, ...), normalised over dim 1.

    "bounded": divide only where the sum of magnitudes exceeds 1 (the authors' PyTorch module), leaving room for
        the (1 - sum) input term.
    "unit_sum": divide everywhere, so the magnitudes sum to 1 (the authors' Caffe VOC model); `eps` keeps an
        all-zero pixel finite.
    """
    if gates.ndim < 2 or gates.shape[1] != 3:
        raise ValueError(f"gates must be (N, 3, ...), got {tuple(gates.shape)}")
    total = gates.abs().sum(dim=1, keepdim=True)
    if mode == "bounded":
        return gates / total.clamp(min=1.0)
    if mode == "unit_sum":
        return gates / (total + eps)
    raise ValueError(f"unknown gate normalisation {mode!r}; choose 'bounded' or 'unit_sum'")
