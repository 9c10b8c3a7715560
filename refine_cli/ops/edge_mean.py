"""`edge_mean`: the colour-gated refiner's step (refine_cli/models/colour_spn.py). For every pixel, the mean of the class
maps along its row or column, each pixel weighted by the product of the links between the two, renormalised over the
classes.

Backends: "cpp" (one fused C++ kernel, csrc/edge_mean_cpu.cpp: forward only), "torch" (two directional scans of
`propagate` with its fastest kernel for the device, differentiable) and "auto": cpp for CPU tensors that need no gradient when it is built, else
torch. A backend asked for by name that cannot run raises `refine_cli.errors.UsageError`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from refine_cli.errors import UsageError
from refine_cli.ops import cpp
from refine_cli.ops.propagate import propagate, resolve_backend

EdgeMeanBackend = Literal["auto", "cpp", "torch"]
EDGE_MEAN_BACKENDS: tuple[str, ...] = ("auto", "cpp", "torch")

# Each scan's links padded to the map: the first pixel of a scan has no neighbour behind it.
_BEHIND = {"left_to_right": (1, 0, 0, 0), "right_to_left": (0, 1, 0, 0), "top_to_bottom": (0, 0, 1, 0),
           "bottom_to_top": (0, 0, 0, 1)}
_SCANS = {3: ("left_to_right", "right_to_left"), 2: ("top_to_bottom", "bottom_to_top")}


def edge_mean(x: torch.Tensor, links: torch.Tensor, dim: int, *, backend: EdgeMeanBackend = "auto") -> torch.Tensor:
    """x: (N, K, H, W) class probabilities (positive, summing to 1 over K); links: the weight between each pair of
    neighbours along `dim`, (N, H, W-1) for dim 3 (along rows) or (N, H-1, W) for dim 2 (along columns), each in
    [0, 1). Returns (N, K, H, W) float32: out[k, t] = T[k, t] / sum_k T[k, t], where T[k, t] is the sum over the
    pixels s of the row (column) of x[k, s] times the product of the links between s and t (1 for s = t).

    Each one-sided sum is the scan h = x + g h_prev run on x / (1 - g) (the SPN's straight-neighbour recurrence,
    whose input term is 1 - g); the two, less x counted twice, divided by the sum of the weights, are the mean.
    (The plain recurrence, an exponential moving average, would give the first pixel after an edge the weight of all
    that follow it, and a stray band along an edge would stay.)"""
    if dim not in _SCANS:
        raise ValueError(f"dim must be 2 (along columns) or 3 (along rows), got {dim}")
    n, _, h, w = x.shape
    expected = (n, h, w - 1) if dim == 3 else (n, h - 1, w)
    if links.shape != expected:
        raise ValueError(f"links must be {expected} for x of shape {tuple(x.shape)} along dim {dim}, "
                         f"got {tuple(links.shape)}")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or links.requires_grad)
    if resolve_cpu_kernel(backend, x.device, needs_grad=needs_grad, kernel="edge_mean kernel") == "cpp":
        return torch.ops.refine_cli_edge.edge_mean(x.float(), links.float(), dim)
    return _edge_mean_torch(x.float(), links.float(), dim)


def resolve_cpu_kernel(backend: str, device: torch.device, *, needs_grad: bool, kernel: str) -> str:
    """"cpp" or "torch" for a forward-only C++ CPU kernel (`kernel` names it in errors): "auto" takes the C++ one for
    CPU tensors that need no gradient when it is built; one asked for by name that cannot run raises UsageError."""
    if backend not in EDGE_MEAN_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(EDGE_MEAN_BACKENDS)}")
    if backend == "auto":
        return "cpp" if device.type == "cpu" and not needs_grad and cpp.available() else "torch"
    if backend == "cpp":
        resolve_backend("cpp", device)  # raises UsageError with what to install when it cannot run
        if needs_grad:
            raise UsageError(f"the C++ {kernel} has no backward; use backend 'torch' to train through it")
    return backend


def _edge_mean_torch(x: torch.Tensor, links: torch.Tensor, dim: int) -> torch.Tensor:
    maps = x.unsqueeze(2)  # (N, K, 1, H, W): the K maps share the links
    sums = []
    for direction in _SCANS[dim]:
        gate = F.pad(links.unsqueeze(1), _BEHIND[direction])  # (N, 1, H, W): each pixel's link to the one behind
        zero = torch.zeros_like(gate)
        gates = torch.cat([zero, gate, zero], 1).unsqueeze(2)  # only the straight neighbour: (N, 3, 1, H, W)
        sums.append(propagate(maps / (1 - gate).unsqueeze(1), gates, direction))
    total = sums[0] + sums[1] - maps
    return (total / total.sum(1, keepdim=True)).squeeze(2)
