"""The propagation written as literally as the paper states it: a loop over columns, autograd building the graph.

This is the specification the fast kernels are tested against and the baseline the benchmarks compare with.
It is deliberately simple; it is not used for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scan_left_to_right_reference(x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """One left-to-right three-way scan (Liu et al. 2017, eq. 3), column by column.

    x: (N, C, H, W); gates: (N, 3, C, H, W) read at the current pixel (h, t): gates[:, 0] weighs the previous
    column's row h-1, gates[:, 1] row h, gates[:, 2] row h+1. A neighbour outside the map contributes nothing and its
    gate is left out of the (1 - sum) term. Column 0 passes x through. Returns (N, C, H, W) in x's dtype.

    Columns are taken with `unbind`, never `x[..., t]`: slicing inside the loop makes the backward allocate a
    full-size zero tensor per step (quadratic in W).
    """
    n, c, h, w = x.shape
    if gates.shape != (n, 3, c, h, w):
        raise ValueError(f"gates must be {(n, 3, c, h, w)}, got {tuple(gates.shape)}")
    inside_up = torch.ones(h, dtype=x.dtype, device=x.device)
    inside_up[0] = 0  # row h-1 does not exist for h = 0
    inside_down = torch.ones(h, dtype=x.dtype, device=x.device)
    inside_down[-1] = 0  # row h+1 does not exist for h = H-1

    xs = x.unbind(-1)
    g1s, g2s, g3s = (gates[:, k].unbind(-1) for k in range(3))
    out = [xs[0]]
    for t in range(1, w):
        prev = out[-1]
        g1 = g1s[t] * inside_up
        g3 = g3s[t] * inside_down
        g2 = g2s[t]
        prev_up = F.pad(prev, (1, 0))[..., :h]  # value of row h-1 at row h (0 at the top)
        prev_down = F.pad(prev, (0, 1))[..., 1:]  # value of row h+1 at row h (0 at the bottom)
        out.append((1 - g1 - g2 - g3) * xs[t] + g1 * prev_up + g2 * prev + g3 * prev_down)
    return torch.stack(out, dim=-1)
