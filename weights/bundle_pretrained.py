"""Turn Sachin Mehta's public ESPNet (CamVid) and ESPNetv2 (PASCAL VOC) files into the bundled checkpoints
`espnet_camvid.pt` and `espnetv2_voc.pt`, with their measured numbers inside.

Each file goes through `refine-cli weights import` (`import_checkpoint`, source "espnet" / "espnetv2"), is stored
in half precision, and is scored through the pipeline (`Refiner`, base network alone) both as imported (float32)
and as stored (float16 weights, run in float32):
- ESPNet on the 101 CamVid val images: mIoU over the 11 classes (void ignored), pixel and mean accuracy, boundary
  F, per-class IoU; also the network as released, with its 12th (void) output kept, where a void prediction counts
  as an error;
- ESPNetv2 on the DAVIS frames: foreground IoU (any non-background VOC class against the object mask), the mean
  over each sequence's frames, then over sequences (the three val sequences and all ten); with `--rules`, also
  the resize rules of EdgeNets' test script (384 x 384) and demo (sides down to multiples of 32) and a short side
  of 384, against the stored rule (short side 480), which they chose.
The numbers go into each checkpoint's metadata ("metrics"), `weights/metrics_pretrained.json` and the model cards.
The subsets the tests re-score (CamVid val every 4th image, DAVIS every 12th frame) are recorded too; the DAVIS
subset's figures come from the full run's frames.

    .venv/bin/python weights/bundle_pretrained.py --real ../shared/real [--rules] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refine_cli import weights
from refine_cli.data import open_dataset
from refine_cli.data.davis import DAVIS_VAL_SEQUENCES
from refine_cli.evaluation import BASE, EvalReport, ForegroundScore, evaluate, foreground_ious
from refine_cli.labels import CAMVID_CLASSES
from refine_cli.pipeline import Refiner
from refine_cli.transforms import Preprocess

HERE = Path(__file__).resolve().parent
ESPNET_FILE = "espnet_p_2_q_8_camvid.pth"
ESPNETV2_FILE = "espnetv2_s_2.0_pascal_384x384.pth"
CAMVID_EVERY = 4  # tests/weights/test_bundled_pretrained.py re-scores val[::4]
DAVIS_EVERY = 12  # and DAVIS all[::12]
RULES = {
    "square 384 (EdgeNets test script)": Preprocess(resize="square", size=384),
    "multiples of 32 (EdgeNets demo)": Preprocess(resize="multiple", size=32),
    "short side 384": Preprocess(resize="short_side", size=384),
}
REPORTED_ESPNET = {"camvid_test_miou": 0.5564, "camvid_test_class_average_accuracy": 0.6830,
                   "source": "sacmehta/ESPNet README (CamVid test split, 233 images, not measured here)"}
REPORTED_ESPNETV2 = {"voc2012_val_miou": 0.6701, "voc2012_test_miou": 0.6795, "input": "384x384",
                     "source": "sacmehta/EdgeNets model/segmentation/model_zoo/README.md (not measured here)"}


def camvid_scores(report: EvalReport, classes: Sequence[str] = CAMVID_CLASSES) -> dict[str, Any]:
    """mIoU over the 11 CamVid classes (a 12th, void, output is left out of the mean: its IoU is that of
    predictions on pixels whose truth is ignored, always 0)."""
    row = report.row(BASE)
    iou = np.array(row.iou[: len(classes)], dtype=np.float64)
    return {"images": report.images, "miou": float(np.nanmean(iou)), "pixel_accuracy": row.pixel_accuracy,
            "mean_accuracy": row.mean_accuracy, "boundary_f": row.boundary_f, "ms_per_image": row.ms_per_image,
            "iou": {c: float(v) for c, v in zip(classes, iou)}}


def score_camvid(path: Path, real: Path, every: int = 1) -> dict[str, Any]:
    data = open_dataset(real / "camvid", format="camvid", split="val")
    model = Refiner(base=path, refiner=None, device="cpu", batch_size=1)
    k = len(model.classes)
    report = evaluate((data[i] for i in range(0, len(data), every)), model, num_classes=k,
                      dataset=f"CamVid val[::{every}]")
    return camvid_scores(report)


def davis_scores(scores: list[ForegroundScore]) -> dict[str, Any]:
    """Per sequence, the mean of its frames' foreground IoU (DAVIS's J); then the mean over sequences; and the mean
    over frames."""
    by_sequence: dict[str, list[float]] = defaultdict(list)
    for s in scores:
        by_sequence[s.name.rsplit("_", 1)[0]].append(s.iou)
    per = {seq: float(np.nanmean(v)) for seq, v in sorted(by_sequence.items())}
    val = [per[s] for s in DAVIS_VAL_SEQUENCES if s in per]
    return {"frames": len(scores), "per_sequence": per, "mean_all": float(np.mean(list(per.values()))),
            "mean_val": float(np.mean(val)) if val else float("nan"),
            "mean_over_frames": float(np.nanmean([s.iou for s in scores]))}


def davis_frames(path: Path, real: Path, preprocess: Preprocess | None = None) -> tuple[list[ForegroundScore], float]:
    """Every DAVIS frame's foreground IoU, and the seconds per frame it took."""
    data = open_dataset(real / "davis", format="davis", split="all")
    model = Refiner(base=path, refiner=None, device="cpu", batch_size=1)
    if preprocess is not None:
        base = model.engine.base
        model.engine.base = replace(base, meta=replace(base.meta, preprocess=preprocess))
    start = time.perf_counter()
    scores = foreground_ious((data[i] for i in range(len(data))), model)
    return scores, (time.perf_counter() - start) / len(scores)


def score_davis(path: Path, real: Path, preprocess: Preprocess | None = None) -> tuple[dict[str, Any], ...]:
    """The full set's scores and those of frames [::DAVIS_EVERY] (the same inference, every DAVIS_EVERY-th frame
    of the listing)."""
    scores, seconds = davis_frames(path, real, preprocess)
    return {**davis_scores(scores), "s_per_frame": seconds}, davis_scores(scores[::DAVIS_EVERY])


def espnet_void_kept(real: Path, tmp: Path) -> dict[str, Any]:
    """The released network unchanged (12 outputs, the 12th void), with the imported checkpoint's input."""
    imported = weights.import_checkpoint(real / "weights" / ESPNET_FILE, source="espnet", save=False)
    raw = torch.load(real / "weights" / ESPNET_FILE, map_location="cpu", weights_only=True)
    state = {**imported.state_dict, "classifier.weight": raw["classifier.weight"]}
    meta = replace(imported.meta, classes=(*CAMVID_CLASSES, "void"), palette=())
    ckpt = weights.Checkpoint(arch="espnet", arch_args={**imported.arch_args, "num_classes": 12}, kind="base",
                              state_dict=state, meta=meta)
    path = weights.save_checkpoint(tmp / "espnet_void_kept.pt", ckpt)
    return score_camvid(path, real)


def percent(x: float) -> str:
    return f"{100 * x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True, help="the shared real-data folder (camvid, davis, weights)")
    parser.add_argument("--rules", action="store_true", help="also score ESPNetv2 under other resize rules")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, source, file in (("espnet_camvid", "espnet", ESPNET_FILE),
                                   ("espnetv2_voc", "espnetv2", ESPNETV2_FILE)):
            ckpt = weights.import_checkpoint(args.real / "weights" / file, source=source, save=False)
            fp32 = weights.save_checkpoint(tmp / f"{name}.pt", ckpt)
            fp16 = weights.save_checkpoint(HERE / f"{name}.pt", ckpt, half=True)
            if source == "espnet":
                metrics = {"camvid_val": score_camvid(fp16, args.real),
                           f"camvid_val_every{CAMVID_EVERY}": score_camvid(fp16, args.real, CAMVID_EVERY),
                           "camvid_val_float32": score_camvid(fp32, args.real),
                           "camvid_val_void_kept_float32": espnet_void_kept(args.real, tmp),
                           "reported": REPORTED_ESPNET}
            else:
                full, subset = score_davis(fp16, args.real)
                metrics = {"davis": full, f"davis_every{DAVIS_EVERY}": subset,
                           "davis_float32": score_davis(fp32, args.real)[0], "reported": REPORTED_ESPNETV2}
                if args.rules:
                    metrics["davis_resize_rules_float32"] = {
                        rule: score_davis(fp32, args.real, replace(ckpt.meta.preprocess, resize=p.resize,
                                                                   size=p.size))[0]
                        for rule, p in RULES.items()}
            weights.save_checkpoint(HERE / f"{name}.pt", replace(ckpt, meta=replace(ckpt.meta, metrics=metrics)),
                                    half=True)
            weights.record_file(HERE / f"{name}.pt")
            results[name] = metrics
            print(f"\n{name}: {json.dumps(metrics, indent=1)}", flush=True)
    (HERE / "metrics_pretrained.json").write_text(json.dumps(results, indent=1) + "\n")

    camvid = results["espnet_camvid"]
    print("\n| ESPNet, CamVid val (101 images) | mIoU | pixel acc. | mean acc. | boundary F |")
    print("|---|---|---|---|---|")
    for key, label in (("camvid_val_float32", "imported, float32"), ("camvid_val", "bundled, float16"),
                       ("camvid_val_void_kept_float32", "as released, void output kept")):
        m = camvid[key]
        print(f"| {label} | {percent(m['miou'])} | {percent(m['pixel_accuracy'])} | {percent(m['mean_accuracy'])} "
              f"| {percent(m['boundary_f'])} |")
    davis = results["espnetv2_voc"]
    runs = {"imported, float32 (short side 480)": davis["davis_float32"],
            "bundled, float16 (short side 480)": davis["davis"], **davis.get("davis_resize_rules_float32", {})}
    sequences = list(davis["davis"]["per_sequence"])
    print("\n| ESPNetv2, DAVIS foreground IoU | " + " | ".join(sequences) + " | mean (val) | mean (all) | s / frame |")
    print("|---" * (len(sequences) + 4) + "|")
    for label, m in runs.items():
        cells = " | ".join(percent(m["per_sequence"][s]) for s in sequences)
        print(f"| {label} | {cells} | {percent(m['mean_val'])} | {percent(m['mean_all'])} | {m['s_per_frame']:.2f} |")
    sub = davis[f"davis_every{DAVIS_EVERY}"]
    print(f"frames [::{DAVIS_EVERY}] ({sub['frames']}), bundled file: mean over frames "
          f"{percent(sub['mean_over_frames'])}, cows {percent(sub['per_sequence']['cows'])}")
    print(f"\nbundled in {time.perf_counter() - start:.0f} s; metrics also in {HERE / 'metrics_pretrained.json'}")


if __name__ == "__main__":
    main()
