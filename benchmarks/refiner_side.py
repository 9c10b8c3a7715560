"""The refiner's working resolution (`--refiner-side`) against its quality and time, on synthetic images.

    python benchmarks/refiner_side.py [--sizes 512,1024] [--sides 0,512,320,256,192] [--n 16] [--seed 2]
        [--json benchmarks/results/refiner_side.json]

For each image size, the bundled base network and refiner (or --base / --refiner) score images 0..n-1 of the
synthetic world of `--seed` rendered at that size, once per refiner side (0: full resolution; sides at or above the
image size are skipped, they are full resolution too), through `refine_cli.evaluation.evaluate`: mIoU and boundary
F of the base network and of base + SPN, and the median ms per image of each. The seed defaults to 2, not the
`bench refiner-vs-crf` images (seed 0), so a side chosen here is not chosen on the images it is reported on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from refine_cli.config import SynthConfig
from refine_cli.data.synth import SYNTH_CLASSES, SynthDataset
from refine_cli.evaluation import BASE, SPN, evaluate
from refine_cli.pipeline import Refiner


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--refiner", default="default")
    parser.add_argument("--sizes", type=ints, default=[512, 1024])
    parser.add_argument("--sides", type=ints, default=[0, 512, 320, 256, 192])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = Refiner(args.base, args.refiner, device="cpu", batch_size=1)
    rows = []
    print("| size | refiner side | base mIoU | + SPN | base boundary F | + SPN | base ms | SPN ms |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        data = SynthDataset(SynthConfig(n=args.n, seed=args.seed, height=size, width=size, val_fraction=0.0),
                            split="all")
        for side in args.sides:
            if side >= size:
                continue
            model.engine.refiner_side = side or None
            report = evaluate((data[i] for i in range(len(data))), model, num_classes=len(SYNTH_CLASSES),
                              dataset=f"synthetic world, seed {args.seed}, {size}x{size}")
            base, spn = report.row(BASE), report.row(SPN)
            row = {"size": size, "refiner_side": side or None, "base_miou": base.miou, "spn_miou": spn.miou,
                   "base_boundary_f": base.boundary_f, "spn_boundary_f": spn.boundary_f,
                   "base_ms": base.ms_per_image, "spn_ms": spn.ms_per_image}
            rows.append(row)
            print(f"| {size} | {side or 'full'} | {100 * base.miou:.2f} | {100 * spn.miou:.2f} "
                  f"({100 * (spn.miou - base.miou):+.2f}) | {100 * base.boundary_f:.2f} | {100 * spn.boundary_f:.2f} "
                  f"({100 * (spn.boundary_f - base.boundary_f):+.2f}) | {base.ms_per_image:.0f} | "
                  f"{spn.ms_per_image:.0f} |", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": ["python", "benchmarks/refiner_side.py", *sys.argv[1:]],
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__},
            "base": str(model.base.path), "refiner": str(model.refiner.path), "n": args.n, "seed": args.seed,
            "rows": rows,
        }, indent=1))


if __name__ == "__main__":
    main()
