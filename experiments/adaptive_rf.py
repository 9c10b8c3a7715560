"""Issue 5, adaptive receptive fields (Wei, Sun, Wang, Lai & Liu, CVPR 2017): a small grid search over a fixed
inflation factor f, then two runs whose f is learned, one started from a receptive field far too large (the grid's
smallest f) and one from a receptive field far too small (its largest f). Reports the trajectory of f, the final
receptive fields against the grid's best, and a plot (matplotlib).

    python -m experiments.adaptive_rf --data DIR [--steps 300] [--grid 0.5,0.71,1,1.41,2,2.83]

f scales the map fc6 reads (`refine_cli.models.adaptive_rf`): f > 1 narrows what fc6's kernel covers, f < 1
widens it. On DeepLab-LargeFOV the receptive field is RF(f) = 243 + 192 / f pixels (`receptive_field(f)`): the
243 of the trunk are there whatever f is, so what f tunes is fc6's span, 192 / f pixels (its taps 96 / f pixels
either side of the centre). On 160 px images f = 0.5 puts every tap but the centre beyond the image from every
position (span 384 px: far too large), f = 2.83 leaves fc6 a 68 px window and f = 4 a 48 px one (too small next to
objects up to ~140 px across).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from experiments import common
from refine_cli import models, weights
from refine_cli.config import BaseTrainConfig
from refine_cli.errors import UsageError, WeightsError
from refine_cli.models.adaptive_rf import MAX_FACTOR, MIN_FACTOR
from refine_cli.train import BaseTask
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn

MODULE = "experiments.adaptive_rf"
NAME = "adaptive_rf"
ARCHS = ("deeplab_largefov_vgg16_compact", "fcn8s_vgg16_compact", "dilated_frontend_vgg16_compact")
# Factors a sqrt(2) apart, from 0.5 (fc6 span 384 px on LargeFOV, every tap but the centre off a 160 px image) to
# 2.83 (68 px). f = 4 (48 px) is left out by default: its run costs as much as the other six together on a CPU
# (fc6 and fc7 on a map 16 times larger than at f = 1); add it with --grid where time allows.
GRID = (0.5, 0.71, 1.0, 1.41, 2.0, 2.83)
# f is one scalar among a million weights: at the weights' learning rate Adam moves it by at most ~lr per step
# (2e-3), far too slowly to cross the grid in a few hundred steps. Its own group: lr x this, no weight decay
# (decay would pull f towards 0, i.e. towards an ever larger receptive field).
RF_LR_SCALE = 10.0
FACTOR_KEY = "rf.factor"


@dataclass(frozen=True)
class Settings:
    """What the experiment chooses on top of the recipe."""

    arch: str
    grid: tuple[float, ...]
    start_large_rf: float  # a small f
    start_small_rf: float  # a large f
    rf_lr_scale: float
    init_from: str | None


class AdaptiveRFTask(BaseTask):
    """`BaseTask` on a network built with `adaptive_rf`, whose factor f is either frozen at `rf_init` (the grid)
    or learned in its own optimizer group (learning rate x `rf_lr_scale`, no weight decay). init_from: a
    refine-cli checkpoint of the same network without (or with) the adaptive layers: every weight but f."""

    def __init__(self, config: BaseTrainConfig, info: DistInfo, emit: EventFn, *, learn: bool,
                 rf_lr_scale: float, init_from: str | None = None) -> None:
        super().__init__(config, info, emit)
        rf = getattr(self.model, "rf", None)
        if rf is None:
            raise UsageError(f"'{config.arch}' was built without an adaptive receptive field (arch_args "
                             "adaptive_rf=True)")
        if init_from:
            self.provenance["init"] = _load_all_but_factor(self.model, init_from)
        rf.factor.requires_grad_(learn)
        self.rf_lr_scale = rf_lr_scale
        self.provenance["adaptive_rf"] = {"learned": learn, "rf_init": rf.value, "rf_lr_scale": rf_lr_scale}

    def param_groups(self) -> list[dict[str, Any]]:
        factor = self.model.rf.factor
        rest = [p for p in self.trainable_parameters() if p is not factor]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if factor.requires_grad:
            groups.append({"params": [factor], "lr_scale": self.rf_lr_scale, "weight_decay": 0.0})
        return groups


def _load_all_but_factor(model: nn.Module, path: str) -> str:
    """Copy a checkpoint's weights into `model`, f excepted (it keeps its rf_init). Returns the provenance note."""
    resolved = weights.resolve(path, download=False)
    state = {k: v for k, v in weights.load_checkpoint(resolved).state_dict.items() if k != FACTOR_KEY}
    own = {k: v for k, v in model.state_dict().items() if k != FACTOR_KEY}
    problem = weights.state_dict_mismatch(own, state)
    if problem:
        raise WeightsError(f"--init-from {resolved} does not fit this network: {problem}; give a checkpoint of the "
                           "same arch and width")
    model.load_state_dict(state, strict=False)
    return f"checkpoint:{resolved} (all but {FACTOR_KEY})"


def context_span(model: nn.Module, factor: float) -> float:
    """Pixels fc6's kernel spans at `factor`: the receptive field minus that of the layers below fc6, which is
    `receptive_field` at an infinite factor (fc6 then covers a single cell)."""
    return model.receptive_field(factor) - model.receptive_field(math.inf)


def _tag(f: float) -> str:
    return f"{f:g}".replace(".", "p")


def _parse_grid(text: str) -> tuple[float, ...]:
    try:
        grid = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise UsageError(f"--grid takes comma-separated factors, e.g. 0.5,1,2; got {text!r}") from None
    if len(grid) < 2:
        raise UsageError("--grid needs at least two factors")
    return grid


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=common.HelpFormatter)
    common.add_recipe_options(parser, steps=300, name=NAME)
    parser.add_argument("--arch", choices=ARCHS, default=ARCHS[0], help="network with the adaptive layers")
    parser.add_argument("--grid", default=",".join(f"{f:g}" for f in GRID), help="fixed factors f of the grid")
    parser.add_argument("--start-large-rf", type=float, default=None,
                        help="f a learned run starts from with a far too large receptive field (default: grid min)")
    parser.add_argument("--start-small-rf", type=float, default=None,
                        help="f a learned run starts from with a far too small receptive field (default: grid max)")
    parser.add_argument("--rf-lr-scale", type=float, default=RF_LR_SCALE, help="f's learning rate / the weights'")
    parser.add_argument("--init-from", default=None,
                        help="start every run from this checkpoint of --arch (all weights but f); default scratch")
    return parser.parse_args(argv)


def _row(model: nn.Module, f: float) -> dict[str, float]:
    return {"f": f, "receptive_field": model.receptive_field(f), "fc6_span": context_span(model, f)}


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the grid and the two learned runs; return (and write) the experiment's JSON."""
    common.set_threads(args.threads)
    recipe = common.recipe_from_args(args)
    grid = _parse_grid(args.grid)
    settings = Settings(arch=args.arch, grid=grid,
                        start_large_rf=args.start_large_rf if args.start_large_rf is not None else grid[0],
                        start_small_rf=args.start_small_rf if args.start_small_rf is not None else grid[-1],
                        rf_lr_scale=args.rf_lr_scale, init_from=args.init_from)
    if settings.rf_lr_scale <= 0:
        raise UsageError("--rf-lr-scale must be positive")
    outside = [f for f in (*grid, settings.start_large_rf, settings.start_small_rf) if not MIN_FACTOR <= f <= MAX_FACTOR]
    if outside:
        raise UsageError(f"factors must lie in the adaptive layer's range [{MIN_FACTOR:g}, {MAX_FACTOR:g}]; got "
                         f"{', '.join(f'{f:g}' for f in outside)}")
    probe = models.build(args.arch, num_classes=2, adaptive_rf=True)  # receptive-field arithmetic only
    runs_dir = args.runs / args.name

    def train(tag: str, f: float, learn: bool) -> common.RunOutcome:
        config = common.base_config(recipe, args.data, args.arch, {"adaptive_rf": True, "rf_init": f})
        task_settings = {"learn_f": learn, "rf_lr_scale": settings.rf_lr_scale if learn else None,
                         "init_from": settings.init_from}
        return common.train_run(
            tag, config, runs_dir / tag, settings=task_settings,
            build_task=lambda info, emit: AdaptiveRFTask(config, info, emit, learn=learn,
                                                         rf_lr_scale=settings.rf_lr_scale,
                                                         init_from=settings.init_from),
            on_event=common.Progress(f"{args.name}/{tag}", quiet=args.quiet))

    grid_runs = {f: train(f"fixed_f{_tag(f)}", f, False) for f in grid}
    scored = {f: r.val["miou"] for f, r in grid_runs.items() if r.val is not None}
    if not scored:
        raise UsageError("every grid run diverged; lower --lr")
    best = max(scored, key=lambda f: scored[f])
    starts = {"from_large_rf": settings.start_large_rf, "from_small_rf": settings.start_small_rf}
    learned_runs = {key: train(f"learn_f{_tag(f0)}", f0, True) for key, f0 in starts.items()}

    report: dict[str, Any] = common.header(MODULE, argv, args, recipe)
    report["settings"] = asdict(settings)
    report["receptive_field"] = {
        "formula": "RF(f) = receptive_field(f); fc6_span(f) = RF(f) - RF(inf)",
        "trunk_field": probe.receptive_field(math.inf),
        "image_size": report["data"].get("synth", {}).get("height"),
    }
    report["grid"] = [{**_row(probe, f), "miou": None if r.val is None else r.val["miou"],
                       "pixel_accuracy": None if r.val is None else r.val["pixel_accuracy"], "run": r.summary()}
                      for f, r in grid_runs.items()]
    report["best"] = {**_row(probe, best), "miou": scored[best]}
    report["learned"] = {}
    for key, r in learned_runs.items():
        f0 = starts[key]
        trajectory = [(0, f0)] + r.train_series("rf_factor")
        final = trajectory[-1][1]
        d_start, d_final = abs(math.log(f0 / best)), abs(math.log(final / best))
        report["learned"][key] = {
            "start": _row(probe, f0), "final": _row(probe, final), "trajectory": trajectory,
            "miou": None if r.val is None else r.val["miou"], "diverged_at": r.diverged_at,
            "log_distance_to_best": {"start": d_start, "final": d_final},
            "moved_toward_best": d_final < d_start, "run": r.summary(),
        }
    report["claim"] = {
        "statement": "started far too large and far too small, the learned f moves each toward the grid's best",
        "holds": all(v["moved_toward_best"] for v in report["learned"].values()),
        "best_is_interior": grid[0] < best < grid[-1],
    }
    report["table_markdown"] = markdown(report)
    common.write_json(args.out / f"{args.name}.json", report)
    plot(report, args.out / f"{args.name}.png")
    return report


def markdown(report: dict[str, Any]) -> str:
    """Two tables: the grid (f, receptive field, fc6 span, mIoU) and the learned runs against the grid's best."""
    best = report["best"]["f"]
    grid = common.markdown_table(
        ["f (fixed)", "receptive field (px)", "fc6 span (px)", "val mIoU"],
        [[f"{g['f']:g}" + (" (best)" if g["f"] == best else ""), f"{g['receptive_field']:.0f}",
          f"{g['fc6_span']:.0f}", common.pct(g["miou"])] for g in report["grid"]])
    rows = []
    for key, v in report["learned"].items():
        rows.append([key.replace("_", " "), f"{v['start']['f']:g} -> {v['final']['f']:.3f}",
                     f"{v['start']['receptive_field']:.0f} -> {v['final']['receptive_field']:.0f}",
                     f"{v['final']['fc6_span']:.0f}", common.pct(v["miou"]),
                     "yes" if v["moved_toward_best"] else "no"])
    learned = common.markdown_table(
        ["learned run", "f: start -> final", "receptive field (px)", "final fc6 span (px)", "val mIoU",
         "moved toward best"], rows)
    b = report["best"]
    return (f"{grid}\n\nGrid best: f = {b['f']:g}, receptive field {b['receptive_field']:.0f} px "
            f"(fc6 span {b['fc6_span']:.0f} px), val mIoU {common.pct(b['miou'])}.\n\n{learned}")


def plot(report: dict[str, Any], path: Path) -> Path:
    """Left: f against the step for both learned runs, the grid's best dashed, the receptive field on the right
    axis. Right: val mIoU of the grid against f, the learned runs' final f marked."""
    plt = common.pyplot()
    from matplotlib import ticker  # optional dependency (the `plot` extra): imported only to draw

    fig, (ax, ax_grid) = plt.subplots(1, 2, figsize=(12, 4.5))
    best = report["best"]
    trunk = report["receptive_field"]["trunk_field"]
    spread = best["fc6_span"] * best["f"]  # fc6_span(f) = spread / f
    colours = {"from_large_rf": "tab:blue", "from_small_rf": "tab:red"}
    for key, v in report["learned"].items():
        steps, fs = zip(*v["trajectory"])
        ax.plot(steps, fs, color=colours[key], marker="." if len(steps) <= 60 else None,
                label=f"learned, from f={v['start']['f']:g} ({key.replace('_', ' ')})")
    ax.axhline(best["f"], color="k", linestyle="--", label=f"grid best f={best['f']:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("inflation factor f")
    ax.set_title("learned f during training")
    ax.legend(fontsize=8)

    def to_rf(f: Any) -> Any:  # matplotlib probes the axis ends too: 0 and below are no factors
        with np.errstate(divide="ignore", invalid="ignore"):
            return trunk + spread / np.asarray(f, dtype=float)

    def to_f(rf: Any) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return spread / (np.asarray(rf, dtype=float) - trunk)

    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    factors = [g["f"] for g in report["grid"]]
    ax.set_yticks(factors)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    right = ax.secondary_yaxis("right", functions=(to_rf, to_f))
    right.set_yticks([float(to_rf(f)) for f in factors])
    right.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0f}"))
    right.yaxis.set_minor_formatter(ticker.NullFormatter())
    right.set_ylabel("receptive field (px)")

    grid = [g for g in report["grid"] if g["miou"] is not None]
    ax_grid.plot([g["f"] for g in grid], [100 * g["miou"] for g in grid], "o-", color="k", label="fixed f (grid)")
    for key, v in report["learned"].items():
        if v["miou"] is not None:
            ax_grid.plot([v["final"]["f"]], [100 * v["miou"]], "*", markersize=14, color=colours[key],
                         label=f"learned from f={v['start']['f']:g}: final f={v['final']['f']:.2f}")
    ax_grid.set_xscale("log")
    ax_grid.set_xticks(factors)
    ax_grid.xaxis.set_major_formatter(plain)
    ax_grid.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax_grid.set_xlabel("inflation factor f")
    ax_grid.set_ylabel("val mIoU (%)")
    ax_grid.set_title("grid search")
    ax_grid.legend(fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return common.report_main(parse_args, run, argv, plot=True)


if __name__ == "__main__":
    common.entry_point(main)
