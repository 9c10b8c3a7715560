"""The three-way spatial propagation scan as a custom autograd function, in plain PyTorch.

Layout: time-major, (T, N, K, C, L) with the scan axis first and the neighbour axis last, so each time step is a
handful of contiguous vector operations over a (N, K, C, L) block. The hidden states are kept with one zero of
padding on each side of L, which makes the three neighbours (l-1, l, l+1) plain views, with no shifting copies.
The backward is the same recurrence run in reverse time (memory linear in the map size); gate gradients are then
one vectorised product over all steps at once.
"""

from __future__ import annotations

import torch


class ScanFunction(torch.autograd.Function):
    """Left-to-right scan over time-major maps.

    Inputs (contiguous, float32 or float64):
      x: (T, N, K, C, L)
      g: (T, 3, N, 1, C, L) gates already masked: g[0] = 0 (the first step passes x through),
         g[:, 0, ..., 0] = 0 and g[:, 2, ..., L-1] = 0 (neighbours outside the map). The K axis of x shares the gates.
    Output: (T, N, K, C, L), h[t] = (1 - g1 - g2 - g3) x[t] + g1 h[t-1, l-1] + g2 h[t-1, l] + g3 h[t-1, l+1].
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        steps, width = x.shape[0], x.shape[-1]
        hp = x.new_zeros(*x.shape[:-1], width + 2)
        h = hp[..., 1 : width + 1]
        h.copy_((1 - g.sum(1)) * x)
        for t in range(1, steps):
            prev, dst = hp[t - 1], h[t]
            dst.addcmul_(g[t, 0], prev[..., 0:width])
            dst.addcmul_(g[t, 1], prev[..., 1 : width + 1])
            dst.addcmul_(g[t, 2], prev[..., 2 : width + 2])
        ctx.save_for_backward(x, g, hp)
        return h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, g, hp = ctx.saved_tensors
        steps, width = x.shape[0], x.shape[-1]
        # dhp[t] accumulates dLoss/dh[t]; its pad columns collect contributions that fall outside the map.
        dhp = grad.new_zeros(*x.shape[:-1], width + 2)
        dh = dhp[..., 1 : width + 1]
        dh.copy_(grad)
        for t in range(steps - 1, 0, -1):
            d, prev = dh[t], dhp[t - 1]
            prev[..., 0:width].addcmul_(g[t, 0], d)
            prev[..., 1 : width + 1].addcmul_(g[t, 1], d)
            prev[..., 2 : width + 2].addcmul_(g[t, 2], d)
        dx = dg = None
        if ctx.needs_input_grad[0]:
            dx = (1 - g.sum(1)) * dh
        if ctx.needs_input_grad[1]:
            dg = torch.zeros_like(g)
            for k in range(3):
                neighbour = hp[:-1, ..., k : k + width]
                dg[1:, k] = (dh[1:] * (neighbour - x[1:])).sum(dim=2, keepdim=True)
        return dx, dg
