"""Issue 5, the SPN paper's "universal" claim (Liu et al. 2017): one refiner, trained on FCN-8s outputs only, applied
unchanged to other base networks raises each one's mIoU. Evaluates every base network on the val split alone and
with the refiner: mIoU and boundary F, and the gain of each.

The base networks are checkpoints given with --base (by default the bundled compact FCN-8s and DeepLab-LargeFOV)
plus the ones this script trains with the shared recipe: the compact DilatedNet in its two stages (front end, then
the context module on the frozen front end; both are scored) and the compact ParseNet.

    python -m experiments.nets_and_refiner --data DIR [--steps 1000] [--context-steps 500] [--limit N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments import common
from refine_cli import weights
from refine_cli.config import PipelineConfig
from refine_cli.data import open_dataset
from refine_cli.errors import UsageError
from refine_cli.evaluation import BASE, SPN, EvalReport, evaluate
from refine_cli.pipeline import Refiner

MODULE = "experiments.nets_and_refiner"
NAME = "nets_and_refiner"
BUNDLED = ("fcn8s_compact=synth_fcn8s_compact", "deeplab_largefov_compact=synth_deeplab_largefov_compact")
TRAINABLE = ("dilated", "parsenet")
FRONTEND, CONTEXT, PARSENET = ("dilated_frontend_vgg16_compact", "dilated_context_vgg16_compact",
                               "parsenet_vgg16_compact")


@dataclass(frozen=True)
class BaseEntry:
    """One base network of the table: its label, checkpoint and where it comes from."""

    label: str
    checkpoint: str
    source: str  # "given" (--base) or "trained here"
    train_steps: int | None  # the optimizer steps that made it (both stages for the context net)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=common.HelpFormatter)
    common.add_recipe_options(parser, steps=1000, name=NAME)
    parser.add_argument("--refiner", default=PipelineConfig().refiner,
                        help="the universal refiner (name or path), trained on FCN-8s outputs; default the bundled one")
    parser.add_argument("--base", action="append", default=None, metavar="LABEL=CHECKPOINT",
                        help=f"a base network to score (repeatable); default: {', '.join(BUNDLED)}")
    parser.add_argument("--train", default=",".join(TRAINABLE),
                        help=f"networks to train and score too, comma-separated among {', '.join(TRAINABLE)} "
                             "('' for none)")
    parser.add_argument("--context-steps", type=int, default=None,
                        help="steps of the DilatedNet context stage (default: half of --steps)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val images (default: all)")
    return parser.parse_args(argv)


def _given(items: Sequence[str]) -> list[BaseEntry]:
    return [BaseEntry(label, str(path), "given", weights.load_checkpoint(path).meta.provenance.get("steps"))
            for label, path in common.given_checkpoints(items)]


def _train(args: argparse.Namespace, recipe: common.Recipe, which: Sequence[str]) -> tuple[list[BaseEntry], dict]:
    """Train the requested networks; returns their table entries and run summaries."""
    entries: list[BaseEntry] = []
    runs: dict[str, Any] = {}
    root = args.runs / args.name

    def progress(tag: str) -> common.Progress:
        return common.Progress(f"{args.name}/{tag}", quiet=args.quiet)

    def finished(outcome: common.RunOutcome) -> str:
        if outcome.model_path is None:
            raise UsageError(f"{outcome.name} diverged at step {outcome.diverged_at}; lower --lr and run again "
                             f"(delete {outcome.run_dir} first)")
        return str(outcome.model_path)

    if "dilated" in which:
        context_steps = args.context_steps if args.context_steps is not None else max(1, recipe.steps // 2)
        front = common.train_run("dilated_frontend", common.base_config(recipe, args.data, FRONTEND),
                                 root / "dilated_frontend", on_event=progress("dilated_frontend"))
        front_ckpt = finished(front)
        # Yu & Koltun's second stage: the context module alone, on the trained front end (frozen, eval mode).
        context = common.train_run(
            "dilated_context",
            common.base_config(recipe, args.data, CONTEXT, steps=context_steps, init_from=front_ckpt, stage="context"),
            root / "dilated_context", on_event=progress("dilated_context"))
        entries.append(BaseEntry("dilated_frontend_compact", front_ckpt, "trained here", recipe.steps))
        entries.append(BaseEntry("dilated_context_compact", finished(context), "trained here",
                                 recipe.steps + context_steps))
        runs["dilated_frontend"], runs["dilated_context"] = front.summary(), context.summary()
    if "parsenet" in which:
        parse = common.train_run("parsenet", common.base_config(recipe, args.data, PARSENET), root / "parsenet",
                                 on_event=progress("parsenet"))
        entries.append(BaseEntry("parsenet_compact", finished(parse), "trained here", recipe.steps))
        runs["parsenet"] = parse.summary()
    return entries, runs


def _scores(report: EvalReport, method: str) -> dict[str, float]:
    row = report.row(method)
    return {"miou": row.miou, "boundary_f": row.boundary_f, "pixel_accuracy": row.pixel_accuracy,
            "mean_accuracy": row.mean_accuracy, "ms_per_image": row.ms_per_image}


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train what is asked, score every base network with and without the refiner; return (and write) the JSON."""
    common.set_threads(args.threads)
    recipe = common.recipe_from_args(args)
    which = [w.strip() for w in args.train.split(",") if w.strip()]
    unknown = [w for w in which if w not in TRAINABLE]
    if unknown:
        raise UsageError(f"--train: unknown {', '.join(unknown)}; choose among {', '.join(TRAINABLE)}")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    refiner_path = weights.resolve(args.refiner, download=False)
    refiner_meta = weights.load_checkpoint(refiner_path).meta
    entries = _given(args.base if args.base is not None else BUNDLED)
    trained, runs = _train(args, recipe, which)
    entries += trained

    val = open_dataset(args.data, split="val")
    n = len(val) if args.limit is None else min(args.limit, len(val))
    rows, tolerance = [], None
    for entry in entries:
        model = Refiner(base=entry.checkpoint, refiner=refiner_path, device="cpu", batch_size=1)
        if tuple(model.classes) != tuple(val.classes):
            raise UsageError(f"{entry.label} ({entry.checkpoint}) predicts {len(model.classes)} classes "
                             f"{list(model.classes)[:4]}..., the val split has {list(val.classes)[:4]}...; give base "
                             "networks trained on this world")
        if not args.quiet:
            print(f"[{args.name}] scoring {entry.label} on {n} val images", flush=True)
        report = evaluate((val[i] for i in range(n)), model, num_classes=len(val.classes),
                          dataset=f"{args.data} val[:{n}]")
        base, spn, tolerance = _scores(report, BASE), _scores(report, SPN), report.boundary_tolerance_px
        rows.append({"label": entry.label, "checkpoint": entry.checkpoint, "source": entry.source,
                     "train_steps": entry.train_steps, "base": base, "spn": spn,
                     "miou_gain": spn["miou"] - base["miou"], "boundary_f_gain": spn["boundary_f"] - base["boundary_f"],
                     "iou": {m.method: dict(zip(report.classes, m.iou)) for m in report.methods}})

    out: dict[str, Any] = common.header(MODULE, argv, args, recipe)
    out["settings"] = {"refiner": str(refiner_path),
                       "refiner_trained_on": refiner_meta.provenance.get("base", {}).get("arch"),
                       "train": which, "context_steps": args.context_steps, "val_images": n,
                       "boundary_tolerance_px": tolerance}
    out["runs"] = runs
    out["nets"] = rows
    out["claim"] = {"statement": "the refiner trained on FCN-8s outputs raises mIoU of every base network",
                    "holds": bool(rows) and all(r["miou_gain"] > 0 for r in rows),
                    "boundary_f_raised_everywhere": bool(rows) and all(r["boundary_f_gain"] > 0 for r in rows)}
    out["table_markdown"] = markdown(rows)
    common.write_json(args.out / f"{args.name}.json", out)
    return out


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    return common.markdown_table(
        ["net", "steps", "mIoU", "+ SPN", "gain", "boundary F", "+ SPN", "gain"],
        [[r["label"], r["train_steps"] if r["train_steps"] is not None else "-", common.pct(r["base"]["miou"]),
          common.pct(r["spn"]["miou"]), common.pct(r["miou_gain"], signed=True), common.pct(r["base"]["boundary_f"]),
          common.pct(r["spn"]["boundary_f"]), common.pct(r["boundary_f_gain"], signed=True)] for r in rows])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return common.report_main(parse_args, run, argv, plot=False)


if __name__ == "__main__":
    common.entry_point(main)
