"""Propagation kernels: per backend, one scan's forward and forward+backward time (medians) and extra peak memory; the
universal refiner's propagation at 512 x 512 per direction vs fused; on CUDA, achieved memory bandwidth.

    .venv/bin/python benchmarks/bench_propagate.py [--repeats 5] [--backends cpp,torch] [--refiner] [--json out.json]
    .venv/bin/python benchmarks/bench_propagate.py --bandwidth          # CUDA: GB/s at (16, 32, 512, 512) float16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict

import torch

from refine_cli.bench.propagate import (
    DEFAULT_SHAPES,
    bench_bandwidth,
    bench_propagate,
    bench_refiner_propagation,
    default_backends,
)
from refine_cli.ops import available_backends, cpp


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", help="comma-separated (default: every available one but 'reference')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    parser.add_argument("--refiner", action="store_true", help="also the universal refiner's propagation at 512")
    parser.add_argument("--no-ops", action="store_true", help="skip the single-scan table")
    parser.add_argument("--bandwidth", action="store_true", help="CUDA only: achieved GB/s of one scan")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    start = time.perf_counter()
    names = available_backends(args.device)  # on CPU this builds the C++ kernels the first time
    if args.device == "cpu":
        build = cpp.load()
        state = f"built/loaded in {build.seconds:.1f} s" if build.ok else f"unavailable: {build.error}"
        print(f"C++ kernels: {state} (this call {time.perf_counter() - start:.1f} s)")
    backends = args.backends.split(",") if args.backends else list(default_backends(args.device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"available on {args.device}: {', '.join(names)}; measuring {', '.join(backends)}")
    out: dict[str, list[dict]] = {}
    memory = not args.no_memory and args.device == "cpu"

    if not args.no_ops:
        results = bench_propagate(DEFAULT_SHAPES, backends, repeats=args.repeats, memory=memory, device=args.device)
        print("\n| shape | backend | forward ms | fwd+bwd ms | forward peak MiB | fwd+bwd peak MiB |")
        print("|---|---|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {tuple(r.shape)} | {r.backend} | {r.forward_ms:.1f} | {r.forward_backward_ms:.1f} | "
                f"{_mib(r.forward_peak_mib)} | {_mib(r.forward_backward_peak_mib)} |"
            )
        out["propagate"] = [asdict(r) for r in results]

    if args.refiner:
        results = bench_refiner_propagation(backends, repeats=args.repeats, memory=memory, device=args.device)
        print("\nUniversal refiner propagation at 512 x 512: x (1, 3, 16, 256, 256), 4 directions x 2 passes")
        print("| method | backend | forward ms | fwd+bwd ms | forward peak MiB | fwd+bwd peak MiB |")
        print("|---|---|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r.method} | {r.backend} | {r.forward_ms:.1f} | {r.forward_backward_ms:.1f} | "
                f"{_mib(r.forward_peak_mib)} | {_mib(r.forward_backward_peak_mib)} |"
            )
        out["refiner"] = [asdict(r) for r in results]

    if args.bandwidth:
        results = bench_bandwidth(backends=backends if args.backends else None, repeats=max(args.repeats, 10))
        print("\n| shape | dtype | backend | direction | pass | ms | GB moved | GB/s |")
        print("|---|---|---|---|---|---:|---:|---:|")
        for r in results:
            print(
                f"| {r.shape} | {r.dtype} | {r.backend} | {r.direction} | {r.pass_} | {r.ms:.3f} | "
                f"{r.gigabytes:.2f} | {r.gb_per_s:.0f} |"
            )
        out["bandwidth"] = [asdict(r) for r in results]

    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
