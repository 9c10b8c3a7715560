"""The propagation benchmark harness on tiny inputs: every available CPU backend runs, numbers are finite and
positive, and the bandwidth arithmetic counts the maps a scan must move."""

from __future__ import annotations

import math

import torch

from refine_cli.bench.propagate import (
    bench_propagate,
    bench_refiner_propagation,
    default_backends,
    interleaved_medians,
    scan_bytes,
)


def test_bench_propagate_runs_every_backend():
    results = bench_propagate(((1, 2, 8, 6),), repeats=1, memory=False)
    assert [r.backend for r in results] == list(default_backends("cpu"))
    for r in results:
        assert r.shape == (1, 2, 8, 6) and r.forward_peak_mib is None
        assert 0 < r.forward_ms < math.inf and 0 < r.forward_backward_ms < math.inf


def test_bench_refiner_propagation_both_methods():
    results = bench_refiner_propagation(("torch",), shape=(1, 2, 3, 8, 8), repeats=1, memory=False)
    assert [(r.method, r.backend) for r in results] == [("per-direction", "torch"), ("fused", "torch")]
    assert all(r.forward_ms > 0 and r.forward_backward_ms > 0 for r in results)


def test_interleaved_medians_times_every_call():
    counts = {"a": 0, "b": 0}

    def call(key):
        def run():
            counts[key] += 1

        return run

    seconds = interleaved_medians({k: call(k) for k in counts}, repeats=3, warmup=1)
    assert counts == {"a": 4, "b": 4} and set(seconds) == {"a", "b"}


def test_scan_bytes_counts_maps():
    # Forward reads x and three gates and writes the output; the backward moves twice as many maps.
    n, c, h, w = 16, 32, 512, 512
    assert scan_bytes((n, c, h, w), torch.float16, "forward") == 5 * n * c * h * w * 2
    assert scan_bytes((n, c, h, w), torch.float32, "backward") == 10 * n * c * h * w * 4
