"""`propagate` (one directional three-way scan of the Spatial Propagation Network), `propagate_directions` (the four
scans merged by element-wise max, gate normalisation fused in), `normalize_gates`, and the choice of kernel.

Backends: "cpp" (C++ CPU kernels, built at first use), "triton" (CUDA; CPU only under TRITON_INTERPRET=1, for tests),
"torch" (plain PyTorch, any device), "reference" (the literal loop, for tests) and "auto": the fastest available for the
tensors' device (CPU: cpp, else torch; CUDA: triton, else torch). A backend asked for by name that cannot run raises
`refine_cli.errors.UsageError` saying what to install; it is never replaced silently.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from refine_cli.errors import UsageError
from refine_cli.ops import cpp, triton_scan
from refine_cli.ops.reference import scan_left_to_right_reference
from refine_cli.ops.scan import oriented, scan_directions, unoriented

Direction = Literal["left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"]
DIRECTIONS: tuple[Direction, ...] = ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top")
Backend = Literal["auto", "torch", "reference", "cpp", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "reference", "cpp", "triton")
GateNorm = Literal["bounded", "unit_sum"]
GATE_NORMS: tuple[str, ...] = ("bounded", "unit_sum")

# What "auto" tries, fastest first, per device type; "reference" is never picked by "auto".
_PREFERENCE: dict[str, tuple[str, ...]] = {"cpu": ("cpp", "torch"), "cuda": ("triton", "torch")}


def _check_direction(direction: str) -> int:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    return DIRECTIONS.index(direction)


def _check_gate_norm(mode: str | None) -> None:
    if mode is not None and mode not in GATE_NORMS:
        raise ValueError(f"unknown gate normalisation {mode!r}; choose 'bounded' or 'unit_sum'")


def unavailable_reason(backend: str, device: torch.device | str = "cpu") -> str | None:
    """Why `backend` cannot run tensors on `device` (and what to install), or None when it can. Asking about "cpp"
    builds the C++ kernels if they are not built yet (tens of seconds, once per machine)."""
    device = torch.device(device)
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS[1:])}")
    if backend in ("torch", "reference"):
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ kernels run CPU tensors only (got {device.type}); use 'triton' or 'torch'"
        if not cpp.available():
            return (
                f"the C++ kernels could not be built ({cpp.build_error()}); install a C++ compiler (g++ or clang) "
                "and `pip install ninja`, or use backend 'torch'"
            )
        return None
    return triton_scan.unavailable_reason(device)


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The backends that can run tensors on `device`, in the order "auto" prefers them, "reference" last.
    On CPU this builds the C++ kernels on first use (see `unavailable_reason`)."""
    device = torch.device(device)
    order = (*_PREFERENCE.get(device.type, ("torch",)), "reference")
    if device.type == "cpu" and triton_scan.interpreting():
        order = (*order, "triton")
    return tuple(b for b in order if unavailable_reason(b, device) is None)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend `propagate` runs for `backend` on `device`: "auto" -> the first available one; a named
    backend that cannot run raises UsageError (never a silent fallback)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return available_backends(device)[0]
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise UsageError(f"propagation backend '{backend}' is not available: {reason}")
    return backend


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs accumulate in float32; float64 stays float64 (gradcheck).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_shapes(x: torch.Tensor, gates: torch.Tensor, sets: int | None) -> None:
    if x.ndim not in (4, 5):
        raise ValueError(f"x must be (N, C, H, W) or (N, K, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    expected = (n, 3, c, h, w) if sets is None else (n, sets, 3, c, h, w)
    if gates.shape != expected:
        raise ValueError(f"gates must be {expected} for x of shape {tuple(x.shape)}, got {tuple(gates.shape)}")


def _kernel(backend: str):
    return cpp.CppScan if backend == "cpp" else triton_scan.TritonScan


def _run_kernel(backend: str, x: torch.Tensor, gates6: torch.Tensor, codes: list[int], norm: str | None, eps: float):
    """x: (N, C, H, W) or (N, K, C, H, W); gates6: (N, D, 3, C, H, W). The kernels read half precision directly and
    accumulate in float32."""
    dtype = torch.promote_types(x.dtype, gates6.dtype)
    x5 = x if x.ndim == 5 else x.unsqueeze(1)
    out = _kernel(backend).apply(x5.to(dtype), gates6.to(dtype), codes, norm, eps)
    out = out.to(x.dtype)
    return out if x.ndim == 5 else out.squeeze(1)


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
    gates: (N, 3, C, H, W), used as given (normalise them first with `normalize_gates`, or use
       `propagate_directions`, which normalises inside the kernels).
    Returns a tensor shaped and typed like x. float16 / bfloat16 inputs are accumulated in float32.
    backend: "auto" (the fastest available for x's device), "cpp", "triton", "torch" or "reference"; see the module
       docstring and `available_backends`.
    """
    code = _check_direction(direction)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _check_shapes(x, gates, None)
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return _propagate_reference(x, gates, code)
    if backend in ("cpp", "triton"):
        return _run_kernel(backend, x, gates.unsqueeze(1), [code], None, 0.0)
    cdt = _compute_dtype(x.dtype)
    x5 = x if x.ndim == 5 else x.unsqueeze(1)
    out = scan_directions(x5.to(cdt), [gates.to(cdt)], [code])[0].to(x.dtype)
    return out if x.ndim == 5 else out.squeeze(1)


def propagate_directions(
    x: torch.Tensor,
    gates: torch.Tensor,
    *,
    gate_norm: GateNorm | None = None,
    eps: float = 1e-6,
    backend: Backend = "auto",
) -> torch.Tensor:
    """The four directional scans merged by element-wise max ("node-wise max pooling", Liu et al. 2017):
    max over d of propagate(x, normalize_gates(gates[:, d], gate_norm, eps=eps), DIRECTIONS[d]).

    x: (N, C, H, W) or (N, K, C, H, W) (K maps sharing the gates).
    gates: (N, 4, 3, C, H, W) raw gates, directions in DIRECTIONS order; normalised inside the kernels when
       `gate_norm` is given (no normalised copy is made), used as given when it is None.
    Returns a tensor shaped and typed like x. The "cpp" and "triton" kernels do the whole thing in one call (the
    backward recomputes or reuses hidden states, see their modules); their gradient of the max goes to one direction
    where several tie (torch's own max splits it), which changes nothing where the tied values are x itself.
    """
    _check_gate_norm(gate_norm)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _check_shapes(x, gates, len(DIRECTIONS))
    backend = resolve_backend(backend, x.device)
    codes = list(range(len(DIRECTIONS)))
    if backend in ("cpp", "triton"):
        return _run_kernel(backend, x, gates, codes, gate_norm, eps)
    # Normalise, scan and take the max in float32 (float64 for float64), round once at the end.
    cdt = _compute_dtype(x.dtype)
    gates = gates.to(cdt)
    sets = [gates[:, d] if gate_norm is None else normalize_gates(gates[:, d], gate_norm, eps=eps) for d in codes]
    if backend == "reference":
        outs = [_propagate_reference(x.to(cdt), g, d) for g, d in zip(sets, codes)]
        return functools.reduce(torch.maximum, outs).to(x.dtype)
    x5 = x if x.ndim == 5 else x.unsqueeze(1)
    out = functools.reduce(torch.maximum, scan_directions(x5.to(cdt), sets, codes)).to(x.dtype)
    return out if x.ndim == 5 else out.squeeze(1)


def _propagate_reference(x: torch.Tensor, gates: torch.Tensor, code: int) -> torch.Tensor:
    cdt = _compute_dtype(x.dtype)
    if x.ndim == 5:
        k = x.shape[1]
        flat = x.flatten(0, 1)
        gates = gates.repeat_interleave(k, dim=0)
    else:
        flat = x
    out = scan_left_to_right_reference(oriented(flat.to(cdt), code), oriented(gates.to(cdt), code))
    out = unoriented(out, code).to(x.dtype)
    return out.reshape(x.shape)


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
