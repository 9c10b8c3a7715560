"""Turn finished training runs into the bundled checkpoints of weights/, with their measured numbers inside.

Each checkpoint is evaluated on the synthetic world's val split (seed 0, 2000 images, 400 val; rendered on the fly,
identical to the files `refine-cli data synth` writes) after it is stored in half precision, so the numbers are those
of the shipped file. The dense CRF baseline's settings are first tuned by a small grid search on training images.
The numbers go into each checkpoint's metadata ("metrics") and are printed as the model card's tables; a test
(tests/weights/test_bundled.py) re-checks the `synth_val_first16` subset.

    .venv/bin/python weights/bundle.py --fcn RUN --lfov RUN --refiner RUN
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from refine_cli import weights
from refine_cli.config import CRFConfig, SynthConfig
from refine_cli.data import SynthDataset
from refine_cli.evaluation import BASE, CRF, SPN, EvalReport, evaluate
from refine_cli.pipeline import Refiner

HERE = Path(__file__).resolve().parent
WORLD = SynthConfig(n=2000, seed=0)
SUBSET = 16  # images of the val split the test re-scores
CRF_GRID = {"bilateral_sxy": (10.0, 20.0, 40.0, 80.0), "bilateral_srgb": (5.0, 13.0, 30.0),
            "bilateral_compat": (3.0, 5.0, 10.0)}
CRF_TUNE_IMAGES = 40


def scores(report: EvalReport, method: str) -> dict[str, Any]:
    row = report.row(method)
    return {"images": report.images, "miou": row.miou, "pixel_accuracy": row.pixel_accuracy,
            "mean_accuracy": row.mean_accuracy, "boundary_f": row.boundary_f, "ms_per_image": row.ms_per_image}


def run_eval(model: Refiner, split: str, limit: int | None, crf: CRFConfig | None = None) -> EvalReport:
    data = SynthDataset(WORLD, split)
    n = len(data) if limit is None else min(limit, len(data))
    return evaluate((data[i] for i in range(n)), model, num_classes=len(data.classes), crf=crf,
                    dataset=f"synthetic world seed {WORLD.seed}, {split}[:{n}]")


def tune_crf(base: Path) -> CRFConfig:
    """Best mIoU over the grid on the first CRF_TUNE_IMAGES training images (5 iterations, as in the speed target)."""
    model = Refiner(base=base, refiner=None, device="cpu", batch_size=1)
    best, best_miou = None, -1.0
    for values in itertools.product(*CRF_GRID.values()):
        config = replace(CRFConfig(), iterations=5, **dict(zip(CRF_GRID, values)))
        miou = run_eval(model, "train", CRF_TUNE_IMAGES, crf=config).row(CRF).miou
        if miou > best_miou:
            best, best_miou = config, miou
    assert best is not None
    print(f"dense CRF tuned on {CRF_TUNE_IMAGES} train images: {best} (mIoU {100 * best_miou:.2f})")
    return best


def bundle(run: Path, name: str, metrics: dict[str, Any]) -> Path:
    ckpt = weights.load_checkpoint(run / "model.pt")
    out = HERE / f"{name}.pt"
    weights.save_checkpoint(out, replace(ckpt, meta=replace(ckpt.meta, metrics=metrics)), half=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fcn", type=Path, required=True, help="run folder of fcn8s_vgg16_compact")
    parser.add_argument("--lfov", type=Path, required=True, help="run folder of deeplab_largefov_vgg16_compact")
    parser.add_argument("--refiner", type=Path, required=True, help="run folder of spn_universal_compact")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    bases = {"synth_fcn8s_compact": args.fcn, "synth_deeplab_largefov_compact": args.lfov}
    # Store the bases first (half precision), then measure the stored files.
    for name, run in bases.items():
        bundle(run, name, {})
    crf = tune_crf(HERE / "synth_fcn8s_compact.pt")
    refiner_path = bundle(args.refiner, "synth_spn_universal_compact", {})

    refiner_metrics: dict[str, Any] = {"synth_val": {}, "synth_val_first16": {},
                                       "crf": {"settings": asdict(crf), "tuned_on": f"train[:{CRF_TUNE_IMAGES}]"}}
    for name, run in bases.items():
        model = Refiner(base=HERE / f"{name}.pt", refiner=refiner_path, device="cpu", batch_size=1)
        full = run_eval(model, "val", None, crf=crf)
        subset = run_eval(model, "val", SUBSET)
        bundle(run, name, {"synth_val": scores(full, BASE), "synth_val_first16": scores(subset, BASE)})
        refiner_metrics["synth_val"][name] = {m: scores(full, m) for m in (BASE, SPN, CRF)}
        refiner_metrics["synth_val_first16"][name] = {m: scores(subset, m) for m in (BASE, SPN)}
        print(f"\n{name} on {full.dataset}")
        for m in full.methods:
            print(f"  {m.method:18s} pixel {100 * m.pixel_accuracy:6.2f}  mean {100 * m.mean_accuracy:6.2f}  "
                  f"mIoU {100 * m.miou:6.2f}  boundary F {100 * m.boundary_f:6.2f}  {m.ms_per_image:7.1f} ms")
    bundle(args.refiner, "synth_spn_universal_compact", refiner_metrics)
    for path in sorted(HERE.glob("*.pt")):
        weights.record_file(path)
    (HERE / "metrics.json").write_text(json.dumps(refiner_metrics, indent=1) + "\n")
    print(f"\nbundled in {time.perf_counter() - start:.0f} s; metrics also in {HERE / 'metrics.json'}")


if __name__ == "__main__":
    main()
