"""Issue 3, what a universal refiner does to each base network's maps, and why a gain on one net need not carry to
another. No training: every given refiner is scored on every given base network's val outputs, fed four ways:
- coarse: the base network's probabilities, as `refine` and `evaluate` feed them;
- one-hot: their argmax as one-hot maps, the way masks made elsewhere arrive (`refine --masks`);
- smoothed: their log-probabilities area-averaged over SMOOTH x SMOOTH pixels and resized back (bilinear), which
  rounds corners and drops thin parts while keeping the maps confident: can the refiner put boundaries back?
- twice: the refined probabilities refined again: a refiner that snaps to edges changes little the second time, one
  that grows regions grows them further.
For each: mIoU, boundary F, pixel and mean class accuracy, and the share of pixels given to a class other than the
first (background), beside the ground truth's share.

    python -m experiments.refiner_diagnosis --data DIR [--refiner CKPT ...] [--base LABEL=CKPT ...] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from experiments import common
from refine_cli import weights
from refine_cli.config import PipelineConfig
from refine_cli.data import open_dataset
from refine_cli.errors import UsageError
from refine_cli.labels import IGNORE_INDEX
from refine_cli.metrics import BoundaryF, ConfusionMatrix
from refine_cli.ops.class_map import class_map
from refine_cli.pipeline import Refiner
from refine_cli.weights.locations import now_iso

MODULE = "experiments.refiner_diagnosis"
NAME = "refiner_diagnosis"
BUNDLED = ("fcn8s_compact=synth_fcn8s_compact", "deeplab_largefov_compact=synth_deeplab_largefov_compact")
SMOOTH = 4  # the smoothed input's averaging window, pixels
FLOOR = 1e-6  # probabilities below this are taken as this before their log
INPUTS = ("coarse", "one-hot", "smoothed", "twice")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=common.HelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="synthetic world written by `refine-cli data synth` (VOC layout, a val list)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="where the JSON goes")
    parser.add_argument("--name", default=NAME, help="names the JSON")
    parser.add_argument("--refiner", action="append", default=None, metavar="CHECKPOINT",
                        help=f"a refiner to diagnose (repeatable); default the bundled {PipelineConfig().refiner}")
    parser.add_argument("--base", action="append", default=None, metavar="LABEL=CHECKPOINT",
                        help=f"a base network (repeatable); default: {', '.join(BUNDLED)}")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val images (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's own choice)")
    parser.add_argument("--quiet", action="store_true", help="print no progress lines")
    return parser.parse_args(argv)


def one_hot(probs: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) probabilities -> the one-hot maps of their argmax."""
    return F.one_hot(class_map(probs), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)


def smoothed(probs: torch.Tensor, window: int = SMOOTH) -> torch.Tensor:
    """(N, K, H, W) probabilities -> softmax of their log area-averaged over `window` pixels and resized back."""
    height, width = probs.shape[-2:]
    small = (max(1, round(height / window)), max(1, round(width / window)))
    logp = F.interpolate(probs.clamp_min(FLOOR).log(), size=small, mode="area")
    return F.interpolate(logp, size=(height, width), mode="bilinear", align_corners=False).softmax(1)


class _Score:
    """Confusion matrix, boundary F and foreground pixel counts of one (refiner, base, input) cell."""

    def __init__(self, num_classes: int) -> None:
        self.matrix, self.boundary = ConfusionMatrix(num_classes), BoundaryF()
        self.foreground = self.pixels = 0

    def add(self, scores: torch.Tensor, gt: np.ndarray) -> None:
        pred = class_map(scores)[0].cpu().numpy()
        self.matrix.update(pred, gt)
        self.boundary.update(pred, gt)
        valid = gt != IGNORE_INDEX
        self.foreground += int(((pred != 0) & valid).sum())
        self.pixels += int(valid.sum())

    def result(self) -> dict[str, float]:
        s = self.matrix.scores()
        return {"miou": s.miou, "boundary_f": self.boundary.score().f, "pixel_accuracy": s.pixel_accuracy,
                "mean_accuracy": s.mean_accuracy, "foreground_share": self.foreground / max(1, self.pixels)}


def diagnose(refiner: Refiner, samples: Sequence[Any], num_classes: int,
             progress: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """Scores of one (refiner, base) pair: the base network alone ("base") and its smoothed maps alone ("smoothed
    base"), the refiner under every input of INPUTS, and the ground truth's foreground share ("truth")."""
    engine = refiner.engine
    cells = {name: _Score(num_classes) for name in ("base", "smoothed base", *INPUTS)}
    truth = [0, 0]
    with torch.inference_mode():
        for sample in samples:
            gt = sample.label.numpy()
            valid = gt != IGNORE_INDEX
            truth[0] += int(((gt != 0) & valid).sum())
            truth[1] += int(valid.sum())
            x = sample.image[None].to(engine.device).float().div_(255)
            coarse = engine.base_probs(x)
            cells["base"].add(coarse, gt)
            refined = engine.refine_logits(x, coarse)
            cells["coarse"].add(refined, gt)
            cells["one-hot"].add(engine.refine_logits(x, one_hot(coarse)), gt)
            blurred = smoothed(coarse)
            cells["smoothed base"].add(blurred, gt)
            cells["smoothed"].add(engine.refine_logits(x, blurred), gt)
            cells["twice"].add(engine.refine_logits(x, refined.softmax(1)), gt)
            if progress is not None:
                progress()
    out = {name: cell.result() for name, cell in cells.items()}
    out["truth"] = {"foreground_share": truth[0] / max(1, truth[1])}
    return out


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    refiners = [weights.resolve(r, download=False) for r in (args.refiner or [PipelineConfig().refiner])]
    bases = common.given_checkpoints(args.base if args.base is not None else BUNDLED)
    val = open_dataset(args.data, split="val")
    n = len(val) if args.limit is None else min(args.limit, len(val))
    samples = [val[i] for i in range(n)]
    rows = []
    for refiner_path in refiners:
        for label, base_path in bases:
            if not args.quiet:
                print(f"[{args.name}] {refiner_path.name} on {label}, {n} val images", flush=True)
            model = Refiner(base=base_path, refiner=refiner_path, device="cpu", batch_size=1)
            if tuple(model.classes) != tuple(val.classes):
                raise UsageError(f"{label} ({base_path}) predicts {len(model.classes)} classes, the val split has "
                                 f"{len(val.classes)}; give base networks trained on this world")
            rows.append({"refiner": str(refiner_path), "base": label, "base_checkpoint": str(base_path),
                         "scores": diagnose(model, samples, len(val.classes))})
    out: dict[str, Any] = {"experiment": args.name, "created": now_iso(),
                           "command": ["python", "-m", MODULE, *(sys.argv[1:] if argv is None else argv)],
                           "data": common.data_summary(args.data), "machine": common.machine(),
                           "settings": {"val_images": n, "smooth_window_px": SMOOTH, "inputs": list(INPUTS)},
                           "rows": rows, "table_markdown": markdown(rows)}
    common.write_json(args.out / f"{args.name}.json", out)
    return out


def _label(path: str) -> str:
    """A refiner's name in the table: the file's stem, or its run folder's name for a run's model.pt."""
    p = Path(path)
    return p.parent.name if p.name == "model.pt" else p.stem


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        s = r["scores"]
        for name in ("base", "smoothed base", *INPUTS):
            c = s[name]
            gain = name != "base"
            table.append([_label(r["refiner"]), r["base"], name, common.pct(c["miou"]),
                          common.pct(c["miou"] - s["base"]["miou"], signed=True) if gain else "",
                          common.pct(c["boundary_f"]),
                          common.pct(c["boundary_f"] - s["base"]["boundary_f"], signed=True) if gain else "",
                          common.pct(c["pixel_accuracy"]), common.pct(c["foreground_share"])])
        table.append([_label(r["refiner"]), r["base"], "ground truth", "", "", "", "", "",
                      common.pct(s["truth"]["foreground_share"])])
    return common.markdown_table(["refiner", "base", "input", "mIoU", "gain", "boundary F", "gain", "pixel acc.",
                                  "foreground %"], table)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return common.report_main(parse_args, run, argv, plot=False)


if __name__ == "__main__":
    common.entry_point(main)
