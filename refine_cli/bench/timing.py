"""Small measuring tools: medians of repeated runs and the extra peak memory of a call, in a fresh process."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from refine_cli.config import BenchConfig

_BENCH = BenchConfig()


def median_seconds(fn: Callable[[], Any], *, repeats: int = _BENCH.kernel_repeats, warmup: int = _BENCH.warmup) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs (CUDA synchronised when used)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(setup: Callable[[], Callable[[], Any]], queue: "mp.Queue[float | None]") -> None:
    fn = setup()
    # Reset the high-water mark to the current resident size (Linux: "5" to clear_refs), so the transient
    # allocations of `setup` do not count, then read how far the call pushes it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    fn()
    queue.put(max(0, _status_kib("VmHWM") - base) / 1024)


def extra_peak_mib(setup: Callable[[], Callable[[], Any]]) -> float | None:
    """Peak resident memory (MiB) that one call of `setup()()` adds on top of what `setup` allocated, measured in a
    fresh process so earlier runs do not hide it. `setup` must be picklable (a module-level function or a
    functools.partial of one). CPU only; None where /proc is not available or the child did not finish (for
    instance killed for running out of memory)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    ctx = mp.get_context("spawn")
    queue: mp.Queue[float | None] = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(setup, queue))
    proc.start()
    proc.join()  # the child puts one float: small enough for the queue's buffer, so join cannot deadlock
    if proc.exitcode != 0:
        return None  # killed (e.g. out of memory) or failed: no reading
    return queue.get(timeout=5)
