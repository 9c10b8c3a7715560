"""Turn the compact FCN-8s and DeepLab-LargeFOV trained on CamVid into the bundled `camvid_fcn8s_compact.pt` and
`camvid_deeplab_largefov_compact.pt`, with their measured numbers inside.

Each run's model.pt (from `refine-cli train base --format camvid`, recipe in weights/README.md) is scored through the
pipeline (`Refiner`, base network alone) on the 101 CamVid val images at their full 480 x 360, as trained (float32)
and as stored (float16 weights, run in float32); the file keeps float16 only where that costs under 0.2 mIoU. mIoU
over the 11 classes, pixel and mean accuracy, boundary F, per-class IoU, and the training run (steps, time, machine)
go into the checkpoint's metadata, `weights/metrics_camvid.json` and the model card. The subset the tests re-score
(val every 4th image) is recorded too.

    .venv/bin/python weights/bundle_camvid.py --real ../shared/real \\
        --run camvid_fcn8s_compact=runs/camvid_fcn8s --run camvid_deeplab_largefov_compact=runs/camvid_deeplab_largefov
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bundle_pretrained import CAMVID_EVERY, score_camvid
from refine_cli import weights

HERE = Path(__file__).resolve().parent
HALF_TOLERANCE = 0.002  # float16 storage may cost at most this much val mIoU


def training_record(run: Path) -> dict[str, Any]:
    """Steps, wall time and the validations during a finished run, from its last.pt and metrics.jsonl."""
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    return {"steps": int(state["step"]), "elapsed_s": round(float(state["elapsed_s"])), "val_during_training": vals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=HERE.parent.parent / "shared" / "real")
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_FOLDER, repeatable")
    args = parser.parse_args()
    results_path = HERE / "metrics_camvid.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for item in args.run:
            name, _, run = item.partition("=")
            run_dir = Path(run)
            ckpt = weights.load_checkpoint(run_dir / "model.pt")
            fp32 = weights.save_checkpoint(tmp / f"{name}.pt", ckpt)
            fp16 = weights.save_checkpoint(tmp / f"{name}.half.pt", ckpt, half=True)
            scored = {"float32": score_camvid(fp32, args.real), "float16": score_camvid(fp16, args.real)}
            half = scored["float32"]["miou"] - scored["float16"]["miou"] < HALF_TOLERANCE
            stored = "float16" if half else "float32"
            record = training_record(run_dir)
            metrics = {
                "camvid_val": scored[stored],
                f"camvid_val_every{CAMVID_EVERY}": score_camvid(fp16 if half else fp32, args.real, every=CAMVID_EVERY),
                "camvid_val_float32": scored["float32"],
                "stored": stored,
            }
            meta = replace(ckpt.meta, metrics=metrics)  # provenance: the run's recipe, steps, wall time and machine
            weights.save_checkpoint(HERE / f"{name}.pt", replace(ckpt, meta=meta), half=half)
            weights.record_file(HERE / f"{name}.pt")
            results[name] = {**metrics, "training": {**record, "machine": ckpt.meta.provenance.get("machine")}}
            print(f"\n{name}: {json.dumps(results[name], indent=1)}", flush=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nbundled in {time.perf_counter() - start:.0f} s; metrics also in {results_path}")


if __name__ == "__main__":
    main()
