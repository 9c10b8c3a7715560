"""Time per image of base networks on the CPU, as `refine` runs them: resize rule, normalisation, the network,
logits resized back, softmax (`Engine.base_probs`), batch 1.

    python benchmarks/base_speed.py [--bases espnet_camvid,espnetv2_voc,synth_fcn8s_compact]
        [--sizes 480x360,854x480] [--threads 1,2] [--repeats 7] [--at-size] [--json benchmarks/results/base_speed.json]

For each thread count and image size, every network runs once as a warm-up, then the networks take turns for
`--repeats` rounds, so a machine whose load changes during the run slows them alike; the medians are reported with
each network's ratio to the last one named (`--bases`), measured in the same rounds. `wall_ms` is elapsed time,
`cpu_ms` the process's CPU time (all threads, OpenMP's spin-waiting included) over the same call. `--at-size` turns
the checkpoints' resize rules off, so every network runs at the image's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from refine_cli.pipeline import Refiner
from refine_cli.transforms import resized_shape


def sizes(text: str) -> list[tuple[int, int]]:
    """"480x360,854x480" -> [(360, 480), (480, 854)] as (H, W)."""
    out = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        out.append((int(h), int(w)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", default="espnet_camvid,espnetv2_voc,synth_fcn8s_compact")
    parser.add_argument("--sizes", type=sizes, default=sizes("480x360,854x480"))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--at-size", action="store_true", help="run every network at the image's size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = [n for n in args.bases.split(",") if n]
    models = {n: Refiner(base=n, refiner=None, device="cpu", batch_size=1) for n in names}
    if args.at_size:
        for model in models.values():
            base = model.engine.base
            model.engine.base = replace(base, meta=replace(base.meta, preprocess=replace(
                base.meta.preprocess, resize="none")))
    reference = names[-1]
    rows = []
    print(f"| threads | image (W x H) | network | runs at | wall ms (median) | CPU ms (median) | x {reference} |")
    print("|---|---|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for height, width in args.sizes:
            x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(args.seed))
            wall: dict[str, list[float]] = {n: [] for n in names}
            cpu: dict[str, list[float]] = {n: [] for n in names}
            with torch.inference_mode():
                for n in names:
                    models[n].engine.base_probs(x)  # warm-up
                for _ in range(args.repeats):
                    for n in names:
                        w0, c0 = time.perf_counter(), time.process_time()
                        models[n].engine.base_probs(x)
                        wall[n].append(1e3 * (time.perf_counter() - w0))
                        cpu[n].append(1e3 * (time.process_time() - c0))
            ref_wall = statistics.median(wall[reference])
            for n in names:
                run_h, run_w = resized_shape(height, width, models[n].base.meta.preprocess)
                row = {"threads": threads, "width": width, "height": height, "network": n,
                       "runs_at": [run_w, run_h], "wall_ms": statistics.median(wall[n]),
                       "cpu_ms": statistics.median(cpu[n]), "ratio_to_reference": statistics.median(wall[n]) / ref_wall,
                       "reference": reference, "wall_ms_all": wall[n]}
                rows.append(row)
                print(f"| {threads} | {width} x {height} | {n} | {run_w} x {run_h} | {row['wall_ms']:.0f} | "
                      f"{row['cpu_ms']:.0f} | {row['ratio_to_reference']:.2f} |", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
                "repeats": args.repeats, "at_size": args.at_size, "load_average_at_end": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
