"""What the issue-5 experiments share: one training recipe and its command-line options, training runs that are
skipped when finished and resumed when killed, the machine description, and the JSON / markdown / plot output.
Every experiment trains with `refine_cli.train` (`run_training` / `train_base`) on a world written by
`refine-cli data synth`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import refine_cli
from refine_cli import models, weights
from refine_cli.config import BaseAugmentConfig, BaseTrainConfig, DataConfig, LoopConfig, OptimConfig, Optimizer
from refine_cli.data import open_dataset
from refine_cli.device import cpu_name
from refine_cli.errors import DivergedError, RefineError, UsageError
from refine_cli.io import atomic_write
from refine_cli.train import BaseTask, Event, Note, StepLogged, TrainTask, run_training
from refine_cli.train.common import val_name
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn
from refine_cli.train.metrics_log import read_records
from refine_cli.train.state import LAST, METRICS, MODEL
from refine_cli.weights.locations import now_iso

RESULTS = Path("experiments/results")
RUNS = Path("runs/experiments")  # /runs/ is git-ignored
SETTINGS = "experiment.json"  # what a run folder was started with (config + the experiment's own settings)
DIVERGED = "diverged.json"  # written when a run stopped on a non-finite loss, so a re-run does not repeat it


@dataclass(frozen=True)
class Recipe:
    """The training recipe every run of an experiment shares. Defaults are those of the bundled compact base nets
    (AdamW lr 2e-3, weight decay 1e-4, poly 0.9, batches of 8 random 128 px crops of images rescaled by
    0.75-1.25, flipped); only the step count is the experiment's."""

    steps: int = 600
    batch_size: int = 8
    crop_size: int = 128
    scale_min: float = 0.75
    scale_max: float = 1.25
    optimizer: str = Optimizer.adamw.value
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    grad_clip: float = 0.0
    seed: int = 0
    workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 100


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default."""


def entry_point(main: Callable[[], Any]) -> None:
    """Run an experiment's `main` from the command line: a refine-cli error becomes one line on stderr and its exit
    code, not a traceback."""
    try:
        main()
    except RefineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def report_main(parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
                run: Callable[[argparse.Namespace, Sequence[str] | None], dict[str, Any]],
                argv: Sequence[str] | None, *, plot: bool) -> dict[str, Any]:
    """An experiment's `main`: parse, run, print the table (and the claim, where the report makes one) and the files
    written: the JSON, and the PNG where `plot`."""
    args = parse_args(argv)
    report = run(args, argv)
    print(report["table_markdown"])
    if "claim" in report:
        print("\nclaim holds" if report["claim"]["holds"] else "\nclaim does not hold", "-",
              report["claim"]["statement"])
    written = [args.out / (args.name + ".json")] + ([args.out / (args.name + ".png")] if plot else [])
    print("written:", ", ".join(str(p) for p in written))
    return report


def add_recipe_options(parser: argparse.ArgumentParser, *, steps: int, name: str) -> None:
    """The options every experiment takes (--data, --out, --runs, the recipe, --threads, --name)."""
    r = Recipe()
    parser.add_argument("--data", type=Path, required=True,
                        help="synthetic world written by `refine-cli data synth` (VOC layout, train and val lists)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and plots go")
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="parent of the run folders (finished runs are reused, killed ones resumed)")
    parser.add_argument("--name", default=name, help="names the JSON, the plot and the run folder")
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps of every training run")
    parser.add_argument("--batch-size", type=int, default=r.batch_size, help="images per step")
    parser.add_argument("--crop-size", type=int, default=r.crop_size, help="side of the square training crops")
    parser.add_argument("--optimizer", choices=[o.value for o in Optimizer], default=r.optimizer, help="optimizer")
    parser.add_argument("--lr", type=float, default=r.lr, help="base learning rate (poly schedule, power 0.9)")
    parser.add_argument("--weight-decay", type=float, default=r.weight_decay, help="weight decay")
    parser.add_argument("--grad-clip", type=float, default=r.grad_clip, help="gradient norm clip (0: off)")
    parser.add_argument("--seed", type=int, default=r.seed, help="seed of weights, data order and augmentation")
    parser.add_argument("--workers", type=int, default=r.workers, help="data loading processes")
    parser.add_argument("--log-every", type=int, default=r.log_every, help="steps per metrics line")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's own choice)")
    parser.add_argument("--quiet", action="store_true", help="print no progress lines")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return Recipe(steps=args.steps, batch_size=args.batch_size, crop_size=args.crop_size, optimizer=args.optimizer,
                  lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
                  workers=args.workers, log_every=args.log_every)


def given_checkpoints(items: Sequence[str]) -> list[tuple[str, Path]]:
    """`--base LABEL=CHECKPOINT` items -> (label, resolved checkpoint path) pairs, a clear error for a malformed one."""
    pairs = []
    for item in items:
        label, sep, ckpt = item.partition("=")
        if not sep or not label or not ckpt:
            raise UsageError(f"--base takes LABEL=CHECKPOINT, e.g. fcn8s=weights/synth_fcn8s_compact.pt; got {item!r}")
        pairs.append((label, weights.resolve(ckpt, download=False)))
    return pairs


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(threads)


def base_config(recipe: Recipe, data: Path, arch: str, arch_args: Mapping[str, Any] | None = None, *,
                steps: int | None = None, init_from: str | None = None, stage: str | None = None) -> BaseTrainConfig:
    """The `BaseTrainConfig` of one run: `recipe` on `data` (trained on "train", validated on all of "val" at the
    end), on the CPU."""
    return BaseTrainConfig(
        arch=arch, arch_args=dict(arch_args or {}),
        data=DataConfig(root=str(Path(data).expanduser().resolve()), format="voc", split="train", val_split="val"),
        batch_size=recipe.batch_size,
        augment=BaseAugmentConfig(crop_size=recipe.crop_size, scale_min=recipe.scale_min, scale_max=recipe.scale_max,
                                  flip=True),
        init="scratch", init_from=init_from, stage=stage,
        optim=OptimConfig(optimizer=recipe.optimizer, lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, poly_power=recipe.poly_power, grad_clip=recipe.grad_clip),
        loop=LoopConfig(steps=steps if steps is not None else recipe.steps, seed=recipe.seed, device="cpu",
                        workers=recipe.workers, log_every=recipe.log_every,
                        checkpoint_every=min(recipe.checkpoint_every, steps or recipe.steps), val_every=0),
    )


def transplant(donor: str, arch: str, arch_args: Mapping[str, Any], dest: Path) -> tuple[Path, list[str]]:
    """Write to `dest` the trained checkpoint `donor` (a name or path) less every tensor that has no place of the
    same shape in `arch` built with `arch_args` and the donor's classes (its classifier, typically), so that
    `init_from` starts `arch` from the donor's trunk. Returns the path and the dropped keys."""
    source = weights.load_checkpoint(weights.resolve(donor, download=False))
    own = models.build(arch, num_classes=len(source.meta.classes), **arch_args).state_dict()
    kept = {k: v for k, v in source.state_dict.items() if k in own and own[k].shape == v.shape}
    dropped = sorted(set(source.state_dict) - set(kept))
    if not kept:
        raise UsageError(f"--init-from {donor}: none of its tensors fits '{arch}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    weights.save_checkpoint(dest, replace(source, state_dict=kept))
    return dest, dropped


# ------------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class RunOutcome:
    """One training run as an experiment reports it.

    val: the validation scores at the end (miou, pixel_accuracy, mean_accuracy; fractions), None when diverged.
    diverged_at: the step whose loss was not finite (None: the run finished).
    records: the run's `metrics.jsonl` lines (train lines carry loss, lr and any `training_scalars`).
    reused: True when the run folder already held the finished run and nothing was trained.
    """

    name: str
    run_dir: Path
    model_path: Path | None
    val: dict[str, float] | None
    diverged_at: int | None
    message: str | None
    train_seconds: float | None
    reused: bool
    records: list[dict[str, Any]] = field(default_factory=list)

    def train_series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a key of the train lines, e.g. "loss" or "rf_factor" (missing / null values skipped)."""
        return [(int(r["step"]), float(r[key])) for r in self.records
                if r.get("kind") == "train" and isinstance(r.get(key), (int, float))]

    def summary(self) -> dict[str, Any]:
        """What the experiment JSON keeps of the run."""
        return {"run_dir": str(self.run_dir), "model": None if self.model_path is None else str(self.model_path),
                "val": self.val, "diverged_at": self.diverged_at, "message": self.message,
                "train_seconds": self.train_seconds, "reused": self.reused,
                "loss": self.train_series("loss")}


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _check_settings(run_dir: Path, wanted: Mapping[str, Any]) -> None:
    """A run folder is reused or resumed only for the settings it was started with."""
    path = run_dir / SETTINGS
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if saved != wanted:
        diff = _differences(saved, wanted)
        raise UsageError(f"{run_dir} holds a run started with other settings ({'; '.join(diff[:4])}); delete that "
                         "folder or pass another --runs / --name")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def _val_scores(model_path: Path, config: BaseTrainConfig) -> dict[str, float] | None:
    metrics = weights.load_checkpoint(model_path).meta.metrics
    scores = metrics.get(val_name(config.data) or "", {})
    kept = {k: float(v) for k, v in scores.items() if k in ("miou", "pixel_accuracy", "mean_accuracy")}
    return kept or None


def train_run(
    name: str,
    config: BaseTrainConfig,
    run_dir: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    build_task: Callable[[DistInfo, EventFn], TrainTask] | None = None,
    on_event: EventFn | None = None,
) -> RunOutcome:
    """Train `config` in `run_dir` unless it is already done there.

    A folder holding `model.pt` is reused; one holding `last.pt` only (a killed run) is resumed; one holding
    `diverged.json` is reported as diverged again. `settings` (the experiment's choices that `config` does not
    hold) and `config` are written to `experiment.json`; a folder started with others is refused.
    A non-finite loss or weights (DivergedError from the loop) ends the run as "diverged at step S", not the experiment.
    build_task: the task to train (default `BaseTask`, as `train_base`)."""
    run_dir = Path(run_dir)
    wanted = _plain({"config": asdict(config), "settings": dict(settings or {})})
    _check_settings(run_dir, wanted)
    model_path, diverged = run_dir / MODEL, run_dir / DIVERGED
    if model_path.is_file():
        prov = weights.load_checkpoint(model_path).meta.provenance
        return RunOutcome(name, run_dir, model_path, _val_scores(model_path, config), None, None,
                          prov.get("wall_time_s"), True, read_records(run_dir / METRICS))
    if diverged.is_file():
        saved = json.loads(diverged.read_text())
        return RunOutcome(name, run_dir, None, None, saved["step"], saved["message"], saved.get("train_seconds"),
                          True, read_records(run_dir / METRICS))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / SETTINGS, lambda f: f.write((json.dumps(wanted, indent=1) + "\n").encode()))
    task = build_task or (lambda info, emit: BaseTask(config, info, emit))
    start = time.perf_counter()
    try:
        result = run_training(config=config, run_dir=run_dir, build_task=task, resume=(run_dir / LAST).is_file(),
                              on_event=on_event)
    except DivergedError as exc:
        step, seconds = exc.step, time.perf_counter() - start
        record = {"step": step, "message": str(exc), "train_seconds": seconds}
        atomic_write(diverged, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
        return RunOutcome(name, run_dir, None, None, step, str(exc), seconds, False, read_records(run_dir / METRICS))
    val = {k: float(v) for k, v in (result.val or {}).items() if k in ("miou", "pixel_accuracy", "mean_accuracy")}
    return RunOutcome(name, run_dir, result.model_path, val or None, None, None, result.elapsed_s, False,
                      read_records(run_dir / METRICS))


class Progress:
    """Prints one line per metrics line and each note of a run, prefixed with the run's name."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name, self.quiet = name, quiet

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if isinstance(event, Note):
            print(f"[{self.name}] {event.text}", flush=True)
        elif isinstance(event, StepLogged):
            print(f"[{self.name}] step {event.step}/{event.total_steps} loss {event.loss:.4f} "
                  f"{event.step_s:.2f} s/step, {event.eta_s / 60:.1f} min left", flush=True)


# ------------------------------------------------------------------------------------------------ output


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "refine_cli": getattr(refine_cli, "__version__", "unknown")}


def data_summary(data: Path) -> dict[str, Any]:
    """The world's folder, split sizes and, for a synthetic world, its generator settings."""
    root = Path(data).expanduser().resolve()
    train, val = open_dataset(root, split="train"), open_dataset(root, split="val")
    summary: dict[str, Any] = {"root": str(root), "train": len(train), "val": len(val), "classes": list(train.classes)}
    synth = root / "synth.json"
    if synth.is_file():
        config = json.loads(synth.read_text()).get("config", {})
        summary["synth"] = {k: config.get(k) for k in ("n", "seed", "height", "width")}
    return summary


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """`payload` as indented JSON, atomically (non-finite floats become null)."""
    text = json.dumps(_finite(payload), indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def header(module: str, argv: Sequence[str] | None, args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """The part of every experiment JSON that says how it was made (`module`: e.g. "experiments.adaptive_rf";
    `argv`: the options it was given, None for the command line's)."""
    options = list(sys.argv[1:] if argv is None else argv)
    return {"experiment": args.name, "created": now_iso(), "command": ["python", "-m", module, *options],
            "recipe": asdict(recipe), "data": data_summary(args.data), "machine": machine()}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None, *, signed: bool = False) -> str:
    """A fraction as a percentage with two decimals ("-" for none)."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend; a UsageError saying what to install when it is missing (it is the
    `plot` extra, and part of `dev`)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError('the experiment plots need matplotlib: pip install "refine-cli[plot]"')
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    def write(handle: Any) -> None:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")

    try:
        atomic_write(path, write)
    finally:
        pyplot().close(fig)
    return path
