"""The "triton" backend: when it can run, block sizes, and the autograd function around the kernels of
`_triton_kernels` (imported at first use, so that TRITON_INTERPRET set by a test before that still applies)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import torch

NORM_CODES = {None: 0, "bounded": 1, "unit_sum": 2}
HORIZONTAL = (True, True, False, False)  # per direction code (refine_cli.ops.DIRECTIONS order)
REVERSE = (False, True, False, True)
INSTALL_HINT = "pip install 'refine-cli[gpu]' (or pip install 'triton>=3')"


def installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on CPU tensors, slowly: for tests without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device) -> str | None:
    """Why the triton backend cannot run tensors on `device`, or None when it can."""
    if not installed():
        return f"triton is not installed: {INSTALL_HINT}, on a machine with a CUDA GPU"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return f"the triton kernels run CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got {device.type}"


# Most lanes x maps one program handles: a [BLOCK_K, BLOCK_L, 4] tile then holds at most 4096 values, and the
# backward keeps five such tiles in registers.
LANES_PER_PROGRAM = 1024


def block_sizes(k: int, width: int) -> tuple[int, int, int]:
    """(BLOCK_K, BLOCK_L, num_warps): every neighbour of a step in one program (BLOCK_L >= width); as many of the K
    maps of a plane as fit in LANES_PER_PROGRAM; one warp per 64 lanes x maps, 4 to 16 warps."""
    block_l = max(16, 1 << (width - 1).bit_length())
    block_k = min(1 << (k - 1).bit_length(), max(1, LANES_PER_PROGRAM // block_l))
    num_warps = min(16, max(4, block_k * block_l // 64))
    return block_k, block_l, num_warps


def _acc(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _width(code: int, h: int, w: int) -> int:
    return h if HORIZONTAL[code] else w  # the neighbour axis


class TritonScan(torch.autograd.Function):
    """Max over directional scans with the Triton kernels; same contract as `refine_cli.ops.cpp.CppScan`.

    x: (N, K, C, H, W); gates: (N, D, 3, C, H, W), same dtype, raw when `norm` is given else used as given;
    dirs: D direction codes. When gradients are needed the forward keeps every direction's output (in x's dtype) for
    the backward, which reads the previous step's hidden state from it; the max's gradient goes to the direction
    torch.max reports.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, dirs: Sequence[int], norm: str | None, eps: float):
        from refine_cli.ops import _triton_kernels as kernels

        x, gates = x.contiguous(), gates.contiguous()
        n, k, c, h, w = x.shape
        dirs = list(dirs)
        # Without gradients the directions are merged in place (each launch maxes into `out`); with them every
        # direction's output is kept, since the backward reads its hidden states.
        keep = len(dirs) > 1 and any(ctx.needs_input_grad[:2])
        out = x.new_empty((len(dirs), *x.shape)) if keep else torch.empty_like(x)
        for di, code in enumerate(dirs):
            block_k, block_l, warps = block_sizes(k, _width(code, h, w))
            kernels.scan_forward_kernel[(n * c, -(-k // block_k))](
                x, gates, out[di] if keep else out, k, c, h, w, len(dirs), di, float(eps),
                NORM=NORM_CODES[norm], HORIZONTAL=HORIZONTAL[code], REVERSE=REVERSE[code],
                BLOCK_K=block_k, BLOCK_L=block_l, ACC=_acc(x.dtype), MERGE=di > 0 and not keep, num_warps=warps,
            )
        hidden, winner = out, None
        if keep:
            out, index = hidden.max(0)
            winner = index.to(torch.uint8)
        ctx.save_for_backward(x, gates, hidden, winner)
        ctx.args = (dirs, norm, float(eps))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        from refine_cli.ops import _triton_kernels as kernels

        x, gates, hidden, winner = ctx.saved_tensors
        dirs, norm, eps = ctx.args
        grad = grad.to(x.dtype).contiguous()
        n, k, c, h, w = x.shape
        single = len(dirs) == 1
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        # One direction writes dx straight in x's dtype; several write slices in acc_dtype, summed afterwards.
        dx = torch.empty_like(x) if single else x.new_empty((len(dirs), *x.shape), dtype=acc_dtype)
        sizes = [block_sizes(k, _width(code, h, w)) for code in dirs]
        # Atomic adds (in acc_dtype) only when several programs share a plane's gates (K split in blocks).
        atomic = any(size[0] < k for size in sizes)
        dg = gates.new_zeros(gates.shape, dtype=acc_dtype) if atomic else torch.empty_like(gates)
        for di, (code, (block_k, block_l, warps)) in enumerate(zip(dirs, sizes)):
            k_blocks = -(-k // block_k)
            kernels.scan_backward_kernel[(n * c, k_blocks)](
                grad, x, gates, hidden if single else hidden[di], grad if winner is None else winner,
                dx if single else dx[di], dg, k, c, h, w, len(dirs), di, eps,
                NORM=NORM_CODES[norm], HORIZONTAL=HORIZONTAL[code], REVERSE=REVERSE[code],
                HAS_WINNER=winner is not None, ATOMIC_DG=atomic, BLOCK_K=block_k, BLOCK_L=block_l,
                ACC=_acc(x.dtype), num_warps=warps,
            )
        if not single:
            dx = dx.sum(0).to(x.dtype)
        return dx, dg.to(gates.dtype), None, None, None
