"""Issue 5, ParseNet (Liu, Rabinovich & Berg 2015): the compact ParseNet trained three times with the same recipe
and seed: as the paper builds it (global context, L2-normalised fusion), without the global context branch, and
with the context but without the L2 normalisation. Reports val mIoU, the training loss curves (a run whose loss
stops being finite is recorded as diverged at that step) and a plot of the three curves (matplotlib).

    python -m experiments.parsenet_ablation --data DIR [--steps 800] [--fusion early] [--init-from CKPT]

With `--init-from` every variant starts from a trained network's trunk and fc6/fc7 (e.g. the bundled compact
DeepLab-LargeFOV, the net ParseNet adds its context to), its classifier dropped: the paper's setting, where the
context branch is added to a trained net rather than learned together with it from scratch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import common

MODULE = "experiments.parsenet_ablation"
NAME = "parsenet_ablation"
ARCH = "parsenet_vgg16_compact"
# name -> (builder arguments, description). The first is the paper's network; each other one differs from it
# in one switch.
VARIANTS: dict[str, tuple[dict[str, bool], str]] = {
    "context_l2": ({"context": True, "l2norm": True}, "global context, L2-normalised fusion (the paper's)"),
    "no_context": ({"context": False, "l2norm": True}, "no global context (same net, local feature only)"),
    "context_no_l2": ({"context": True, "l2norm": False}, "global context, fused without L2 normalisation"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=common.HelpFormatter)
    common.add_recipe_options(parser, steps=800, name=NAME)
    parser.add_argument("--fusion", choices=("early", "late"), default="early",
                        help="how the global feature joins the local one (the paper's two options)")
    parser.add_argument("--init-from", default=None,
                        help="start every variant from this trained checkpoint's trunk and fc6/fc7 (its classifier "
                             "dropped), e.g. weights/synth_deeplab_largefov_compact.pt")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the three variants; return (and write) the experiment's JSON."""
    common.set_threads(args.threads)
    recipe = common.recipe_from_args(args)
    outcomes: dict[str, common.RunOutcome] = {}
    init: dict[str, Any] | None = None
    for key, (switches, _) in VARIANTS.items():
        arch_args = {**switches, "fusion": args.fusion}
        init_path = None
        if args.init_from:
            init_path, dropped = common.transplant(args.init_from, ARCH, arch_args,
                                                   args.runs / args.name / f"init_{key}.pt")
            init = {"from": args.init_from, "dropped": dropped}
        config = common.base_config(recipe, args.data, ARCH, arch_args,
                                    init_from=None if init_path is None else str(init_path))
        outcomes[key] = common.train_run(key, config, args.runs / args.name / key,
                                         on_event=common.Progress(f"{args.name}/{key}", quiet=args.quiet))

    report: dict[str, Any] = common.header(MODULE, argv, args, recipe)
    report["settings"] = {"arch": ARCH, "fusion": args.fusion, "init": init}
    report["variants"] = {}
    for key, r in outcomes.items():
        losses = r.train_series("loss")
        report["variants"][key] = {
            "arch_args": {**VARIANTS[key][0], "fusion": args.fusion}, "description": VARIANTS[key][1],
            "val": r.val, "miou": None if r.val is None else r.val["miou"], "diverged_at": r.diverged_at,
            "final_loss": losses[-1][1] if losses else None,
            "mean_loss_last_10pct": _tail_mean(losses), "run": r.summary(),
        }
    report["claims"] = claims(report["variants"])
    report["table_markdown"] = markdown(report)
    common.write_json(args.out / f"{args.name}.json", report)
    plot(report, args.out / f"{args.name}.png")
    return report


def _tail_mean(series: list[tuple[int, float]], share: float = 0.1) -> float | None:
    """Mean of the logged losses over the last `share` of the logged steps (less noisy than the last line)."""
    if not series:
        return None
    n = max(1, math.ceil(share * len(series)))
    return sum(v for _, v in series[-n:]) / n


def claims(variants: dict[str, Any]) -> dict[str, Any]:
    """The paper's two claims, checked on the measured numbers (None where a run needed for it diverged)."""
    paper, no_ctx, no_l2 = variants["context_l2"], variants["no_context"], variants["context_no_l2"]

    def gain(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        return None if a["miou"] is None or b["miou"] is None else a["miou"] - b["miou"]

    context_gain = gain(paper, no_ctx)
    l2_gain = gain(paper, no_l2)
    return {
        "context_raises_miou": {"statement": "the global context branch raises mIoU over the same net without it",
                                "miou_gain": context_gain,
                                "holds": None if context_gain is None else context_gain > 0},
        "l2_needed": {"statement": "without L2 normalisation the fusion trains worse or diverges",
                      "miou_gain_of_l2": l2_gain, "without_l2_diverged_at": no_l2["diverged_at"],
                      "holds": (no_l2["diverged_at"] is not None and paper["diverged_at"] is None)
                      or (l2_gain is not None and l2_gain > 0)},
    }


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for key, v in report["variants"].items():
        a = v["arch_args"]
        status = "finished" if v["diverged_at"] is None else f"diverged at step {v['diverged_at']}"
        rows.append([key, "yes" if a["context"] else "no", "yes" if a["l2norm"] else "no", common.pct(v["miou"]),
                     common.pct(None if v["val"] is None else v["val"]["pixel_accuracy"]),
                     "-" if v["mean_loss_last_10pct"] is None else f"{v['mean_loss_last_10pct']:.4g}", status])
    table = common.markdown_table(["variant", "global context", "L2 norm", "val mIoU", "pixel acc.",
                                   "train loss (last 10 %)", "run"], rows)
    c = report["claims"]
    lines = [table, ""]
    for claim in c.values():
        verdict = {True: "holds", False: "does not hold", None: "cannot be judged"}[claim["holds"]]
        lines.append(f"- {claim['statement']}: {verdict}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """The three training-loss curves against the step; a diverged run ends in a cross at its last logged loss."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, v in report["variants"].items():
        series = v["run"]["loss"]
        if not series:
            continue
        steps, losses = zip(*series)
        line = ax.plot(steps, losses, label=f"{key}: {v['description']}")[0]
        if v["diverged_at"] is not None:
            ax.plot([steps[-1]], [losses[-1]], "x", markersize=10, color=line.get_color())
            ax.annotate(f"diverged at step {v['diverged_at']}", (steps[-1], losses[-1]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points", color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean over {report['recipe']['log_every']} steps)")
    ax.set_title(f"ParseNet compact, {report['settings']['fusion']} fusion")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return common.report_main(parse_args, run, argv, plot=True)


if __name__ == "__main__":
    common.entry_point(main)
