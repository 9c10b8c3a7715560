"""The propagation kernels measured: forward and forward+backward time and peak memory of each backend, the universal
refiner's propagation done per direction (as SpatialPropagation composes it) or fused (`propagate_directions`), and the
memory bandwidth a CUDA kernel achieves."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from refine_cli.bench.timing import extra_peak_mib
from refine_cli.config import BenchConfig
from refine_cli.ops import (
    DIRECTIONS,
    available_backends,
    normalize_gates,
    propagate,
    propagate_directions,
    resolve_backend,
)

_BENCH = BenchConfig()
DEFAULT_SHAPES = _BENCH.kernel_shapes
# The universal refiner at 512 x 512: 3 class maps, each encoded to 16 hidden channels at half resolution,
# 4 directions x 2 passes (refine_cli.models.spn.spn_universal).
UNIVERSAL_512 = (1, 3, 16, 256, 256)
# The shape the GPU kernel is held to: batch 16, 32 channels, 512 x 512, half precision.
BANDWIDTH_SHAPE = (16, 32, 512, 512)


def default_backends(device: str = "cpu") -> tuple[str, ...]:
    """Every backend that runs on `device` except the reference loop (seconds per call at these sizes)."""
    return tuple(b for b in available_backends(device) if b != "reference")


def interleaved_medians(calls: dict[Any, Callable[[], Any]], *, repeats: int = _BENCH.kernel_repeats,
                        warmup: int = _BENCH.warmup) -> dict[Any, float]:
    """Median wall seconds of each call, timed in rounds (every call once per round) so that load drifting on a shared
    machine hits all of them alike; CUDA is synchronised around each call."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass(frozen=True)
class PropagateResult:
    shape: tuple[int, ...]
    backend: str
    forward_ms: float
    forward_backward_ms: float
    forward_peak_mib: float | None
    forward_backward_peak_mib: float | None


def _inputs(shape: Sequence[int], *, grad: bool, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).to(device)
    gates = normalize_gates(torch.randn(n, 3, c, h, w, generator=gen)).to(device)
    return x.requires_grad_(grad), gates.requires_grad_(grad)


def _call(shape: Sequence[int], backend: str, backward: bool, device: str = "cpu") -> Callable[[], Any]:
    resolve_backend(backend, device)  # builds / loads the kernels here, not inside the measured call
    x, gates = _inputs(shape, grad=backward, device=device)

    def run() -> None:
        if backward:
            propagate(x, gates, "left_to_right", backend=backend).sum().backward()
            x.grad = gates.grad = None
        else:
            with torch.no_grad():
                propagate(x, gates, "left_to_right", backend=backend)

    return run


def bench_propagate(
    shapes: Sequence[Sequence[int]] = DEFAULT_SHAPES,
    backends: Sequence[str] | None = None,
    *,
    repeats: int = _BENCH.kernel_repeats,
    memory: bool = True,
    device: str = "cpu",
) -> list[PropagateResult]:
    """One left-to-right scan per measurement (the four directions cost about the same). Times are medians of
    `repeats` interleaved rounds; peak memory is measured in a fresh process (CPU only). backends: default
    `default_backends`."""
    backends = list(backends or default_backends(device))
    results = []
    for shape in shapes:
        calls = {(b, backward): _call(shape, b, backward, device) for b in backends for backward in (False, True)}
        seconds = interleaved_medians(calls, repeats=repeats)
        for backend in backends:
            peak_f = peak_b = None
            if memory and device == "cpu":
                peak_f = extra_peak_mib(functools.partial(_call, tuple(shape), backend, False))
                peak_b = extra_peak_mib(functools.partial(_call, tuple(shape), backend, True))
            results.append(
                PropagateResult(
                    tuple(shape), backend, seconds[backend, False] * 1e3, seconds[backend, True] * 1e3, peak_f, peak_b
                )
            )
    return results


@dataclass(frozen=True)
class RefinerPropagationResult:
    method: str  # "per-direction": normalize_gates + 4 x propagate + max, per pass; "fused": propagate_directions
    backend: str
    forward_ms: float
    forward_backward_ms: float
    forward_peak_mib: float | None
    forward_backward_peak_mib: float | None


def _refiner_call(
    method: str, backend: str, backward: bool, shape: Sequence[int] = UNIVERSAL_512, passes: int = 2,
    gate_norm: str = "bounded", device: str = "cpu",
) -> Callable[[], Any]:
    resolve_backend(backend, device)
    n, k, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, k, c, h, w, generator=gen).to(device).requires_grad_(backward)
    raw = torch.randn(n, len(DIRECTIONS), 3, c, h, w, generator=gen).to(device).requires_grad_(backward)

    def per_direction() -> torch.Tensor:
        # What refine_cli.models.spn.SpatialPropagation does: 4 normalised gate sets, 4 scans + max per pass.
        normed = [normalize_gates(raw[:, d], gate_norm) for d in range(len(DIRECTIONS))]
        y = x
        for _ in range(passes):
            scans = (propagate(y, g, d, backend=backend) for g, d in zip(normed, DIRECTIONS))
            y = functools.reduce(torch.maximum, scans)
        return y

    def fused() -> torch.Tensor:
        y = x
        for _ in range(passes):
            y = propagate_directions(y, raw, gate_norm=gate_norm, backend=backend)
        return y

    body = {"per-direction": per_direction, "fused": fused}[method]

    def run() -> None:
        if backward:
            body().sum().backward()
            x.grad = raw.grad = None
        else:
            with torch.no_grad():
                body()

    return run


def bench_refiner_propagation(
    backends: Sequence[str] | None = None,
    *,
    shape: Sequence[int] = UNIVERSAL_512,
    repeats: int = _BENCH.kernel_repeats,
    memory: bool = True,
    device: str = "cpu",
) -> list[RefinerPropagationResult]:
    """The universal refiner's whole propagation (4 directions x 2 passes, "bounded" gates) at 512 x 512, both ways,
    per backend. Medians of `repeats` interleaved rounds; peak memory in a fresh process (CPU only)."""
    backends = list(backends or default_backends(device))
    methods = ("per-direction", "fused")
    calls = {
        (m, b, backward): _refiner_call(m, b, backward, tuple(shape), device=device)
        for b in backends
        for m in methods
        for backward in (False, True)
    }
    seconds = interleaved_medians(calls, repeats=repeats)
    results = []
    for backend in backends:
        for method in methods:
            peak_f = peak_b = None
            if memory and device == "cpu":
                peak_f = extra_peak_mib(functools.partial(_refiner_call, method, backend, False, tuple(shape)))
                peak_b = extra_peak_mib(functools.partial(_refiner_call, method, backend, True, tuple(shape)))
            results.append(
                RefinerPropagationResult(
                    method, backend, seconds[method, backend, False] * 1e3, seconds[method, backend, True] * 1e3,
                    peak_f, peak_b,
                )
            )
    return results


@dataclass(frozen=True)
class BandwidthResult:
    shape: tuple[int, ...]
    dtype: str
    backend: str
    direction: str
    pass_: str  # "forward" or "backward"
    ms: float
    gigabytes: float  # bytes the pass must move at least, 1e9
    gb_per_s: float


def scan_bytes(shape: Sequence[int], dtype: torch.dtype, pass_: str) -> int:
    """Least bytes one directional scan of (N, C, H, W) maps moves to or from memory. Forward: read x and the three
    gates, write the output (5 maps). Backward: read the output gradient, x, the saved output and the three gates,
    write dx and the three gate gradients (10 maps); the neighbour and previous-step reads hit the caches."""
    n, c, h, w = shape
    maps = {"forward": 5, "backward": 10}[pass_]
    return maps * n * c * h * w * torch.empty((), dtype=dtype).element_size()


def _cuda_median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_bandwidth(
    shape: Sequence[int] = BANDWIDTH_SHAPE,
    *,
    dtype: torch.dtype = torch.float16,
    backends: Sequence[str] | None = None,
    directions: Sequence[str] = DIRECTIONS,
    repeats: int = _BENCH.cuda_kernel_repeats,
) -> list[BandwidthResult]:
    """Achieved memory bandwidth of one directional scan on CUDA: `scan_bytes` over the median CUDA-event time of
    the forward (no grad) and of the backward alone (graph kept, gradient of a fixed random weight). Compare with the
    GPU's peak (H100 SXM: about 3350 GB/s; the bar for the triton kernel is half of that)."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench_bandwidth measures CUDA kernels; no CUDA device is available")
    results = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=gen, device="cuda").to(dtype)
    gates = normalize_gates(torch.randn(n, 3, c, h, w, generator=gen, device="cuda")).to(dtype)
    for backend in backends or default_backends("cuda"):
        for direction in directions:
            with torch.no_grad():
                ms = _cuda_median_ms(lambda: propagate(x, gates, direction, backend=backend), repeats)
            results.append(_bandwidth(shape, dtype, backend, direction, "forward", ms))
            xg, gg = x.clone().requires_grad_(True), gates.clone().requires_grad_(True)
            out = propagate(xg, gg, direction, backend=backend)
            weight = torch.randn_like(out)
            ms = _cuda_median_ms(
                lambda: torch.autograd.grad(out, (xg, gg), weight, retain_graph=True), repeats  # noqa: B023
            )
            results.append(_bandwidth(shape, dtype, backend, direction, "backward", ms))
    return results


def _bandwidth(shape, dtype, backend, direction, pass_, ms) -> BandwidthResult:
    nbytes = scan_bytes(shape, dtype, pass_)
    return BandwidthResult(tuple(shape), str(dtype).removeprefix("torch."), backend, direction, pass_, ms,
                           nbytes / 1e9, nbytes / 1e9 / (ms / 1e3))
