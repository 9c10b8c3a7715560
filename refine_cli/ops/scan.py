"""The "torch" backend: the three-way scan as a custom autograd function in plain PyTorch (any device).

Layout: time-major, (T, G, B, K, C, L) with the scan axis first and the neighbour axis last, so each time step is a
handful of contiguous vector operations over a (G, B, K, C, L) block. The G directions whose maps have the same
(T, L) are stacked and scanned together (all four when H == W, on CPU while a step stays small, see CPU_STEP_ELEMENTS),
so the Python loop runs once, not once per direction.
The hidden states are kept with one zero of padding on each side of L, which makes the three neighbours (l-1, l, l+1)
plain views and lets the gates of missing neighbours stay unmasked (they multiply a zero pad). The backward is the
same recurrence run in reverse time (memory linear in the map size); gate gradients are then one vectorised product
over all steps at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

HORIZONTAL_CODES = (0, 1)  # left_to_right, right_to_left in refine_cli.ops.DIRECTIONS order
# On CPU, directions are stacked only while one step's block stays under ATen's grain size (at::internal::GRAIN_SIZE):
# a bigger elementwise op is split over threads, and a 50-microsecond op pays more for the fork/join than it saves
# (on a busy machine, where a thread can be descheduled mid-op, ten times more: measured here).
CPU_STEP_ELEMENTS = 32768


def oriented(t: torch.Tensor, code: int) -> torch.Tensor:
    """(..., H, W) -> the same map seen by a left-to-right scan: transposed for the vertical directions, flipped
    along the scan axis for the backward ones (codes index refine_cli.ops.DIRECTIONS). A view, no copy."""
    if code in (2, 3):
        t = t.transpose(-1, -2)
    if code in (1, 3):
        t = t.flip(-1)
    return t


def unoriented(t: torch.Tensor, code: int) -> torch.Tensor:
    """Inverse of `oriented`."""
    if code in (1, 3):
        t = t.flip(-1)
    if code in (2, 3):
        t = t.transpose(-1, -2)
    return t


def _keep(g: torch.Tensor) -> torch.Tensor:
    """(T, B, 1, C, L) weight of x: 1 - g1 - g2 - g3 without the gates of missing neighbours (g1 at l = 0, g3 at
    l = L-1), and 1 at the first step, which passes x through."""
    keep = 1 - g.sum(1)
    if g.shape[-1] == 1:
        keep[..., 0] = 1 - g[:, 1, ..., 0]
    else:
        keep[..., 0] = 1 - (g[:, 1, ..., 0] + g[:, 2, ..., 0])
        keep[..., -1] = 1 - (g[:, 0, ..., -1] + g[:, 1, ..., -1])
    keep[0] = 1
    return keep


class ScanFunction(torch.autograd.Function):
    """Left-to-right scan over time-major maps of G stacked directions.

    Inputs (contiguous, float32 or float64):
      x: (T, G, B, K, C, L)
      g: (T, 3, G, B, 1, C, L) gates as given, unmasked: the first step's gates, g1 at l = 0 and g3 at l = L-1 are
         ignored (and get no gradient). The K axis of x shares the gates.
    Output: G tensors (T, B, K, C, L), one per direction,
      h[t] = (1 - g1 - g2 - g3) x[t] + g1 h[t-1, l-1] + g2 h[t-1, l] + g3 h[t-1, l+1]
    (separate outputs so that their gradients arrive separately, without a full-size zero fill per direction).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        steps, groups, width = x.shape[0], x.shape[1], x.shape[-1]
        xf, gf = x.flatten(1, 2), g.flatten(2, 3)
        keep = _keep(gf)
        hp = x.new_empty(steps, *xf.shape[1:-1], width + 2)
        hp[..., 0] = 0
        hp[..., -1] = 0
        h = hp[..., 1 : width + 1]
        torch.mul(keep, xf, out=h)
        for t in range(1, steps):
            prev, dst = hp[t - 1], h[t]
            dst.addcmul_(gf[t, 0], prev[..., 0:width])
            dst.addcmul_(gf[t, 1], prev[..., 1 : width + 1])
            dst.addcmul_(gf[t, 2], prev[..., 2 : width + 2])
        ctx.save_for_backward(xf, gf, keep, hp)
        ctx.groups = groups
        return h.unflatten(1, (groups, -1)).unbind(1)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, g, keep, hp = ctx.saved_tensors
        steps, width = x.shape[0], x.shape[-1]
        # dhp[t] accumulates dLoss/dh[t]; its pad columns collect contributions that fall outside the map.
        dhp = x.new_empty(*x.shape[:-1], width + 2)
        dh = dhp[..., 1 : width + 1]
        for part, grad in zip(dh.unflatten(1, (ctx.groups, -1)).unbind(1), grads):
            if grad is None:
                part.zero_()
            else:
                part.copy_(grad)
        for t in range(steps - 1, 0, -1):
            d, prev = dh[t], dhp[t - 1]
            prev[..., 0:width].addcmul_(g[t, 0], d)
            prev[..., 1 : width + 1].addcmul_(g[t, 1], d)
            prev[..., 2 : width + 2].addcmul_(g[t, 2], d)
        dx = dg = None
        if ctx.needs_input_grad[0]:
            dx = (keep * dh).unflatten(1, (ctx.groups, -1))
        if ctx.needs_input_grad[1]:
            dg = torch.empty_like(g)
            dg[0] = 0
            for k in range(3):
                neighbour = hp[:-1, ..., k : k + width]
                torch.sum(dh[1:] * (neighbour - x[1:]), dim=2, keepdim=True, out=dg[1:, k])
            dg[:, 0, ..., 0] = 0
            dg[:, 2, ..., -1] = 0
            dg = dg.unflatten(2, (ctx.groups, -1))
        return dx, dg


def scan_directions(x: torch.Tensor, gates: Sequence[torch.Tensor], codes: Sequence[int]) -> list[torch.Tensor]:
    """Each direction's scan of x. x: (N, K, C, H, W); gates[i]: (N, 3, C, H, W) for direction codes[i], used as
    given; float32 or float64. Returns one (N, K, C, H, W) view per direction."""
    n, k, c, h, w = x.shape
    groups: dict[tuple[int, int], list[int]] = {}
    for i, code in enumerate(codes):
        groups.setdefault((w, h) if code in HORIZONTAL_CODES else (h, w), []).append(i)
    outs: list[torch.Tensor | None] = [None] * len(codes)
    for (_, width), group in groups.items():
        size = len(group) if x.device.type != "cpu" else max(1, CPU_STEP_ELEMENTS // (n * k * c * width))
        for start in range(0, len(group), size):
            members = group[start : start + size]
            # One copy into the time-major layout per direction (stack), then a single scan for them all.
            xt = torch.stack([oriented(x, codes[i]).movedim(-1, 0) for i in members], dim=1)  # (T, G, N, K, C, L)
            gt = torch.stack(
                [oriented(gates[i], codes[i]).movedim(-1, 0).transpose(1, 2) for i in members], dim=2
            )  # (T, 3, G, N, C, L)
            scans = ScanFunction.apply(xt, gt.unsqueeze(4))
            for i, out in zip(members, scans):
                outs[i] = unoriented(out.movedim(0, -1), codes[i])
    return outs  # type: ignore[return-value]
