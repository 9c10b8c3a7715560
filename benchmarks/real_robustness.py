"""The default refiner on real photographs that come at another size or spoilt: do its gains hold, and does it ever
lower mIoU? The val frames of CamVid and of the held-out DAVIS sequences, each turned into photographs a user may
have (half and double size, JPEG quality 15, Gaussian noise of sigma 12, darkened to 0.3), then segmented by the
base network on that photograph and refined as `refine-cli refine` does:

- CamVid, ESPNet: its probabilities (`refine photos/ --base espnet_camvid`) and its hard mask (`--masks`);
- DAVIS, ESPNetv2-VOC: its probabilities, the refined labels scored as foreground (`refine photos/`, the defaults),
  and its foreground as a binary mask (`--masks`);
- DAVIS, the ground truth coarsened as stride-16 blocks at the photograph's size (`--masks`).

Scores are against the ground truth at the photograph's size (nearest), boundary F within 2 px there.

    python benchmarks/real_robustness.py --json benchmarks/results/real_robustness.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from refine_cli.data import open_dataset
from refine_cli.data.coarsen import coarsen_labels
from refine_cli.metrics import BoundaryF, ConfusionMatrix
from refine_cli.pipeline import Refiner

ROOT = Path(__file__).resolve().parents[1]


def resized(rgb: np.ndarray, factor: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    smaller = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=smaller)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    _, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def noisy(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def darkened(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Condition:
    name: str
    photo: Callable[[np.ndarray, int], np.ndarray]  # (rgb, frame index) -> the photograph
    scale: float = 1.0


CONDITIONS = (
    Condition("as is", lambda rgb, i: rgb),
    Condition("half size", lambda rgb, i: resized(rgb, 0.5), 0.5),
    Condition("double size", lambda rgb, i: resized(rgb, 2.0), 2.0),
    Condition("JPEG quality 15", lambda rgb, i: jpeg(rgb, 15)),
    Condition("noise sigma 12", lambda rgb, i: noisy(rgb, 12, i)),
    Condition("darkened x0.3", lambda rgb, i: darkened(rgb, 0.3)),
)


class Score:
    """mIoU and boundary F of the coarse and the refined labels over one set."""

    def __init__(self, num_classes: int) -> None:
        self.coarse = (ConfusionMatrix(num_classes), BoundaryF(tolerance_px=2))
        self.refined = (ConfusionMatrix(num_classes), BoundaryF(tolerance_px=2))

    def add(self, coarse: np.ndarray, refined: np.ndarray, truth: np.ndarray) -> None:
        for (matrix, boundary), labels in ((self.coarse, coarse), (self.refined, refined)):
            matrix.update(labels, truth)
            boundary.update(labels, truth)

    def row(self) -> dict:
        (m0, b0), (m1, b1) = self.coarse, self.refined
        miou = [100 * float(np.nanmean(m.iou)) for m in (m0, m1)]
        bf = [100 * b.score().f for b in (b0, b1)]
        return {"coarse_miou": miou[0], "refined_miou": miou[1], "miou_gain": miou[1] - miou[0],
                "coarse_bf": bf[0], "refined_bf": bf[1], "bf_gain": bf[1] - bf[0]}


def photographs(dataset, step: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(condition name, photograph, its ground truth) for every step-th frame of `dataset` and every condition."""
    for i in range(0, len(dataset), step):
        sample = dataset[i]
        rgb, truth = sample.image.permute(1, 2, 0).contiguous().numpy(), sample.label.numpy().astype(np.uint8)
        for condition in CONDITIONS:
            yield condition.name, condition.photo(rgb, i), scaled_labels(truth, condition.scale)


def camvid_sets(real: Path, step: int, refiner: str) -> dict[str, dict[str, Score]]:
    dataset = open_dataset(real / "camvid", format="camvid", split="val")
    pipeline = Refiner(base="espnet_camvid", refiner=refiner, device="cpu")
    masks = Refiner(base=None, refiner=refiner, device="cpu")
    scores = {name: {c.name: Score(11) for c in CONDITIONS} for name in ("CamVid, ESPNet probs", "CamVid, ESPNet hard")}
    for condition, photo, gt in photographs(dataset, step):
        result = pipeline.refine(photo)
        scores["CamVid, ESPNet probs"][condition].add(result.coarse, result.labels, gt)
        refined = masks.refine(photo, result.coarse, num_classes=11).labels
        scores["CamVid, ESPNet hard"][condition].add(result.coarse, refined, gt)
    return scores


def davis_sets(real: Path, step: int, refiner: str) -> dict[str, dict[str, Score]]:
    dataset = open_dataset(real / "davis", format="davis", split="val")
    pipeline = Refiner(base="espnetv2_voc", refiner=refiner, device="cpu")
    masks = Refiner(base=None, refiner=refiner, device="cpu")
    names = ("DAVIS, ESPNetv2 probs (foreground)", "DAVIS, ESPNetv2 foreground hard", "DAVIS, stride-16 blocks")
    scores = {name: {c.name: Score(2) for c in CONDITIONS} for name in names}
    for condition, photo, gt in photographs(dataset, step):
        result = pipeline.refine(photo)
        coarse = (result.coarse != 0).astype(np.uint8)
        scores[names[0]][condition].add(coarse, (result.labels != 0).astype(np.uint8), gt)
        scores[names[1]][condition].add(coarse, masks.refine(photo, coarse, num_classes=2).labels, gt)
        blocks = coarsen_labels(gt.astype(np.int64), 2, 16, upsample="nearest").astype(np.uint8)
        scores[names[2]][condition].add(blocks, masks.refine(photo, blocks, num_classes=2).labels, gt)
    return scores


def scaled_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return labels
    height, width = labels.shape
    return cv2.resize(labels, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refiner", default="default", help="refiner checkpoint (name or path)")
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real")
    parser.add_argument("--step", type=int, default=1, help="score every step-th val frame (default: all)")
    parser.add_argument("--sets", default="camvid,davis", choices=["camvid", "davis", "camvid,davis"])
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args()
    if args.step < 1:
        parser.error(f"--step must be at least 1, got {args.step}")
    scores: dict[str, dict[str, Score]] = {}
    if "camvid" in args.sets:
        scores.update(camvid_sets(args.real, args.step, args.refiner))
    if "davis" in args.sets:
        scores.update(davis_sets(args.real, args.step, args.refiner))
    rows = [{"set": name, "condition": condition, **score.row()}
            for name, by_condition in scores.items() for condition, score in by_condition.items()]
    print("| set | photograph | coarse mIoU / BF | refined | gain |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['condition']} | {r['coarse_miou']:.2f} / {r['coarse_bf']:.2f} | "
              f"{r['refined_miou']:.2f} / {r['refined_bf']:.2f} | {r['miou_gain']:+.2f} / {r['bf_gain']:+.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"refiner": args.refiner, "step": args.step, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
