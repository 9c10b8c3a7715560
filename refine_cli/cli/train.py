"""`refine-cli train base` and `refine-cli train refiner`: options become the frozen configs of
`refine_cli.config` (every default is the dataclass's), the library trains, events are rendered with Rich.
Run under `torchrun --nproc_per_node N -m refine_cli train ...` for several GPUs or nodes.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from refine_cli.cli import INTERRUPTED, heavy_imports
from refine_cli.cli.common import cli_errors, console, err_console
from refine_cli.cli.options import DATA, DatasetFormat, Device, Format
from refine_cli.config import (
    Amp,
    AugmentConfig,
    BaseAugmentConfig,
    BaseTrainConfig,
    CoarseMode,
    CropConfig,
    CropsMode,
    DataConfig,
    Init,
    LoopConfig,
    OptimConfig,
    Optimizer,
    ProbsMode,
    RefinerTrainConfig,
)
from refine_cli.errors import UsageError

if TYPE_CHECKING:
    from refine_cli.train import Event, TrainResult

app = typer.Typer(
    name="train",
    help="Train base segmenters and SPN refiners (checkpoints, resume, metrics, multi-GPU via torchrun).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

BASE, REFINER = BaseTrainConfig(), RefinerTrainConfig()
# The registry's names by kind (`refine_cli.models.names`), written out so that --help need not import the networks;
# tests/cli/test_options.py holds them equal.
BASE_ARCHS = (
    "fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_vgg16_compact", "deeplab_largefov_vgg16",
    "deeplab_largefov_vgg16_compact", "dilated_frontend_vgg16", "dilated_context_vgg16",
    "dilated_frontend_vgg16_compact", "dilated_context_vgg16_compact", "parsenet_vgg16", "parsenet_vgg16_compact",
    "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_resnet50_compact",
    "deeplabv3_mobilenet_v3_large", "espnet", "espnetv2",
)
REFINER_ARCHS = ("spn_universal", "spn_universal_compact", "spn_colour", "spn_voc21")
NETWORK, OPTIM, LOOP, AUG, RUN = "Network", "Optimizer", "Loop", "Augmentation", "Run folder"


# ------------------------------------------------------------------------------- options both commands share

Data = Annotated[Path, typer.Option("--data", help="Dataset root folder.", file_okay=False, rich_help_panel=DATA)]
Split = Annotated[str, typer.Option("--split", help="Training split (list file), e.g. train, train_aug.",
                                    rich_help_panel=DATA)]
ValSplit = Annotated[Optional[str], typer.Option("--val-split", help="Split to validate on (mIoU), e.g. val.",
                                                 rich_help_panel=DATA)]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Drop samples `refine-cli data check` flags instead of "
                                       "stopping.", rich_help_panel=DATA)]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder: last.pt, model.pt, metrics.jsonl, curve.png.",
                                   file_okay=False, rich_help_panel=RUN)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pt (same options).",
                                      rich_help_panel=RUN)]
OverwriteRun = Annotated[bool, typer.Option("--overwrite", help="Start over a run that --out already holds.",
                                            rich_help_panel=RUN)]
ArchArg = Annotated[Optional[list[str]], typer.Option(
    "--arch-arg", help="Builder argument KEY=VALUE (JSON value), repeatable, e.g. --arch-arg width=0.125.",
    rich_help_panel=NETWORK)]
InitOpt = Annotated[Init, typer.Option("--init", help="auto: the arch's ImageNet trunk when it is in the cache "
                                       "(`refine-cli weights fetch vgg16_imagenet`), else from scratch.",
                                       rich_help_panel=NETWORK)]
OptimizerOpt = Annotated[Optimizer, typer.Option("--optimizer", help="sgd (as published), or adam / adamw.",
                                                 rich_help_panel=OPTIM)]
Lr = Annotated[float, typer.Option("--lr", min=0.0, help="Base learning rate (poly schedule).",
                                   rich_help_panel=OPTIM)]
Momentum = Annotated[float, typer.Option("--momentum", min=0.0, max=1.0, help="SGD momentum (Adam's beta1).",
                                         rich_help_panel=OPTIM)]
WeightDecay = Annotated[float, typer.Option("--weight-decay", min=0.0, help="Weight decay.", rich_help_panel=OPTIM)]
PolyPower = Annotated[float, typer.Option("--poly-power", min=0.0, help="lr * (1 - step/steps) ** power.",
                                          rich_help_panel=OPTIM)]
GradClip = Annotated[float, typer.Option("--grad-clip", min=0.0, help="Clip the gradients' global L2 norm (0: off).",
                                         rich_help_panel=OPTIM)]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.", rich_help_panel=LOOP)]
TrainSeed = Annotated[int, typer.Option("--seed", help="Seed of weights, data order and augmentation.",
                                        rich_help_panel=LOOP)]
AmpOpt = Annotated[Amp, typer.Option("--amp", help="auto: bf16 autocast on CUDA, none on CPU; fp16 adds a gradient "
                                     "scaler.", rich_help_panel=LOOP)]
Deterministic = Annotated[bool, typer.Option("--deterministic/--no-deterministic", help="Deterministic kernels "
                                             "(bitwise-repeatable on CPU).", rich_help_panel=LOOP)]
LoaderWorkers = Annotated[int, typer.Option("--workers", min=0, help="Data loading processes per training process.",
                                            rich_help_panel=LOOP)]
LogEvery = Annotated[int, typer.Option("--log-every", min=1, help="Steps per metrics line.", rich_help_panel=LOOP)]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between writes of last.pt.",
                                              rich_help_panel=LOOP)]
ValEvery = Annotated[int, typer.Option("--val-every", min=0, help="Steps between validations (0: at the end only).",
                                       rich_help_panel=LOOP)]
CropSize = Annotated[int, typer.Option("--crop-size", min=2, help="Side of the square training crops.",
                                       rich_help_panel=AUG)]


def _arch_args(items: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; a value is read as JSON (numbers, true/false, null, lists) or else kept as a string."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--arch-arg '{item}' is not KEY=VALUE (e.g. width=0.125)")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _check_arch(arch: str, kind: str) -> None:
    from refine_cli import models

    spec = models.spec(arch)
    if spec.kind != kind:
        raise UsageError(f"'{arch}' is a {spec.kind} network; choose one of: {', '.join(models.names(kind))}")


def _data(data: Path, format: DatasetFormat, split: str, val_split: str | None, skip_bad: bool) -> DataConfig:
    return DataConfig(root=str(data), format=format.value, split=split, val_split=val_split, skip_bad=skip_bad)


def _optim_and_loop_options(optim: OptimConfig, loop: LoopConfig) -> dict[str, tuple[Any, Any]]:
    """The optimizer and loop options by parameter name, the name of the config field each sets: (option, default)."""
    return {
        "optimizer": (OptimizerOpt, Optimizer(optim.optimizer)),
        "lr": (Lr, optim.lr),
        "momentum": (Momentum, optim.momentum),
        "weight_decay": (WeightDecay, optim.weight_decay),
        "poly_power": (PolyPower, optim.poly_power),
        "grad_clip": (GradClip, optim.grad_clip),
        "steps": (Steps, loop.steps),
        "seed": (TrainSeed, loop.seed),
        "device": (Device, loop.device),
        "amp": (AmpOpt, Amp(loop.amp)),
        "deterministic": (Deterministic, loop.deterministic),
        "workers": (LoaderWorkers, loop.workers),
        "log_every": (LogEvery, loop.log_every),
        "checkpoint_every": (CheckpointEvery, loop.checkpoint_every),
        "val_every": (ValEvery, loop.val_every),
    }


Command = TypeVar("Command", bound=Callable[..., None])


def _with_optim_and_loop(optim: OptimConfig, loop: LoopConfig) -> Callable[[Command], Command]:
    """For a command taking keyword arguments `optim` and `loop`: Typer sees the optimizer and loop options in their
    place (after the command's own, their defaults from `optim` and `loop`), and the command gets the configs they
    set."""
    options = _optim_and_loop_options(optim, loop)
    optim_fields = {f.name for f in fields(OptimConfig)}

    def decorate(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        params = [p for name, p in own.parameters.items() if name not in ("optim", "loop")]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=default)
                   for name, (option, default) in options.items()]

        @functools.wraps(command)
        def with_configs(**kwargs: Any) -> None:
            given = {name: _plain(kwargs.pop(name)) for name in options}
            command(**kwargs, optim=replace(optim, **{k: v for k, v in given.items() if k in optim_fields}),
                    loop=replace(loop, **{k: v for k, v in given.items() if k not in optim_fields}))

        with_configs.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        return with_configs  # type: ignore[return-value]

    return decorate


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# ------------------------------------------------------------------------------------------------ rendering


def _is_main_process() -> bool:
    from refine_cli import distributed  # torch is loaded by now: this runs while a command trains

    return distributed.is_main_process()


class _Renderer:
    """Turns training events into a Rich progress bar (step, loss, lr, images/s, ETA) and printed notes."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), console=err_console, transient=False,
        )
        self.task: TaskID | None = None
        self.cache_tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Renderer:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        from refine_cli.train import CacheProgress, Checkpointed, Evaluated, Finished, Note, Started, StepLogged

        p = self.progress
        if isinstance(event, Note):
            p.console.print(f"[dim]•[/] {escape(event.text)}", highlight=False, soft_wrap=True)
        elif isinstance(event, CacheProgress):
            task = self.cache_tasks.get(event.split)
            if task is None:
                task = self.cache_tasks[event.split] = p.add_task(f"coarse probs ({event.split})", total=event.total,
                                                                  info="")
            p.update(task, completed=event.done)
        elif isinstance(event, Started):
            p.console.print(f"[dim]•[/] training {event.trainable:,} of {event.parameters:,} parameters on "
                            f"{event.device}" + (f" x {event.world_size} processes" if event.world_size > 1 else ""),
                            highlight=False)
            self.task = p.add_task("train", total=event.total_steps, completed=event.start_step, info="")
        elif isinstance(event, StepLogged) and self.task is not None:
            info = (f"loss {event.loss:.4f}  lr {event.lr:.3g}  {event.images_per_s:.1f} img/s  "
                    f"ETA {_duration(event.eta_s)}")
            p.update(self.task, completed=event.step, info=info)
        elif isinstance(event, Evaluated):
            shown = "  ".join(f"{k} {v:.4f}" for k, v in event.scores.items())
            p.console.print(f"[dim]•[/] step {event.step} {event.split}: {shown}", highlight=False)
        elif isinstance(event, Checkpointed):
            p.console.print(f"[dim]•[/] step {event.step}: wrote {escape(str(event.path))}", highlight=False)
        elif isinstance(event, Finished) and self.task is not None:
            p.update(self.task, completed=event.result.steps)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _summary(result: TrainResult) -> None:
    if not _is_main_process():
        return
    loss = "-" if result.final_loss is None else f"{result.final_loss:.4f}"
    val = ""
    if result.val:
        val = "; val " + ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    console.print(f"trained {result.steps} steps in {_duration(result.elapsed_s)} (final loss {loss}{val}); "
                  f"model: {result.model_path}", highlight=False, soft_wrap=True, markup=False)
    if result.val and result.val_start:
        shared = [k for k in ("miou", "bf") if k in result.val and k in result.val_start]
        changes = ", ".join(f"{k} {result.val_start[k]:.4f} -> {result.val[k]:.4f}" for k in shared)
        lower = [k for k in shared if result.val[k] < result.val_start[k]]
        verdict = (f"training lowered {' and '.join(lower)}: the --from weights may serve this data better"
                   if lower else "training raised every score")
        if shared:
            console.print(f"against the --from weights on val: {changes} ({verdict})", highlight=False,
                          soft_wrap=True, markup=False)


def _run(train: Any, config: Any, out: Path, resume: bool, overwrite: bool) -> None:
    with cli_errors():
        try:
            if _is_main_process():
                with _Renderer() as render:
                    result = train(config, out, resume=resume, overwrite=overwrite, on_event=render)
            else:
                result = train(config, out, resume=resume, overwrite=overwrite)
        except KeyboardInterrupt:
            if _is_main_process():
                last = out / "last.pt"
                what = (f"{last} holds the last checkpoint; run the same command with --resume to continue"
                        if last.is_file() else "no checkpoint was written yet")
                err_console.print(f"[bold yellow]interrupted:[/] {escape(what)}", highlight=False, soft_wrap=True)
            raise typer.Exit(INTERRUPTED) from None
    _summary(result)


# ------------------------------------------------------------------------------------------------- commands


@app.command("base")
@_with_optim_and_loop(BASE.optim, BASE.loop)
def base(
    data: Data,
    out: Out,
    arch: Annotated[str, typer.Option("--arch", help=f"Base network: {', '.join(BASE_ARCHS)}.",
                                      rich_help_panel=NETWORK)] = BASE.arch,
    arch_arg: ArchArg = None,
    init: InitOpt = Init(BASE.init),
    init_from: Annotated[Optional[str], typer.Option("--from", help="Start from this refine-cli checkpoint of the "
                                                     "same network (name or path).", rich_help_panel=NETWORK)] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="Train one stage of a staged network (e.g. "
                                                 "context, with --from the trained front end).",
                                                 rich_help_panel=NETWORK)] = BASE.stage,
    aux_weight: Annotated[float, typer.Option("--aux-weight", min=0.0, help="Weight of the auxiliary head's loss.",
                                              rich_help_panel=NETWORK)] = BASE.aux_weight,
    format: Format = DatasetFormat(BASE.data.format),
    split: Split = BASE.data.split,
    val_split: ValSplit = BASE.data.val_split,
    skip_bad: SkipBad = BASE.data.skip_bad,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step (over all processes).",
                                            rich_help_panel=AUG)] = BASE.batch_size,
    crop_size: CropSize = BASE.augment.crop_size,
    scale_min: Annotated[float, typer.Option("--scale-min", min=0.0, help="Smallest random rescale.",
                                             rich_help_panel=AUG)] = BASE.augment.scale_min,
    scale_max: Annotated[float, typer.Option("--scale-max", min=0.0, help="Largest random rescale.",
                                             rich_help_panel=AUG)] = BASE.augment.scale_max,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.",
                                       rich_help_panel=AUG)] = BASE.augment.flip,
    resume: Resume = False,
    overwrite: OverwriteRun = False,
    *,
    optim: OptimConfig,
    loop: LoopConfig,
) -> None:
    """Train a base segmenter (FCN, DeepLab, ...) on a dataset.

    Cross-entropy over labelled pixels (255 ignored) plus 0.5 x the auxiliary head's loss where the network has
    one; random rescale, crop and flip; SGD with the poly schedule (DeepLab's recipe by default).
    """
    with heavy_imports():
        from refine_cli.train import train_base
    with cli_errors():
        _check_arch(arch, "base")
        config = BaseTrainConfig(
            arch=arch, arch_args=_arch_args(arch_arg), data=_data(data, format, split, val_split, skip_bad),
            batch_size=batch_size,
            augment=BaseAugmentConfig(crop_size=crop_size, scale_min=scale_min, scale_max=scale_max, flip=flip),
            aux_weight=aux_weight, init=init.value, init_from=init_from, stage=stage,
            optim=optim, loop=loop,
        )
    _run(train_base, config, out, resume, overwrite)


WORKING = "Working-resolution training (--crops working)"


@app.command("refiner")
@_with_optim_and_loop(REFINER.optim, REFINER.loop)
def refiner(
    data: Annotated[list[Path], typer.Option("--data", help="Dataset root folder; repeat it to train on several "
                                             "(--crops working draws each equally often).", file_okay=False,
                                             rich_help_panel=DATA)],
    out: Out,
    base_net: Annotated[Optional[list[str]], typer.Option("--base", help="Base segmenter checkpoint whose coarse "
                                                          "probabilities are refined (a name or a .pt path); with "
                                                          "--crops working repeatable, each serving the datasets of "
                                                          "its class count.", rich_help_panel=NETWORK)] = None,
    arch: Annotated[str, typer.Option("--arch", help=f"Refiner: {', '.join(REFINER_ARCHS)}.",
                                      rich_help_panel=NETWORK)] = REFINER.arch,
    arch_arg: ArchArg = None,
    init: InitOpt = Init(REFINER.init),
    init_from: Annotated[Optional[str], typer.Option("--from", help="Fine-tune this refine-cli refiner checkpoint "
                                                     "of the same arch (name or path), e.g. the bundled one.",
                                                     rich_help_panel=NETWORK)] = None,
    format: Annotated[Optional[list[DatasetFormat]], typer.Option("--format", help="Layout of each --data (one "
                                                                  "for all, or one per --data in order).",
                                                                  rich_help_panel=DATA)] = None,
    split: Split = REFINER.data.split,
    val_split: ValSplit = REFINER.data.val_split,
    skip_bad: SkipBad = REFINER.data.skip_bad,
    crops: Annotated[CropsMode, typer.Option("--crops", help="released: the published recipe (crops at the "
                                             "images' size, one base network's probabilities); working: universal "
                                             "refiners trained at the size the pipeline runs them at, on base "
                                             "networks' outputs and ground truth made coarse.",
                                             rich_help_panel=WORKING)] = CropsMode(REFINER.crops),
    coarse: Annotated[CoarseMode, typer.Option("--coarse", help="Coarse maps from the --base networks, from ground "
                                               "truth made coarse (perturb; no --base needed) or mixed.",
                                               rich_help_panel=WORKING)] = CoarseMode(REFINER.coarse),
    perturb_share: Annotated[float, typer.Option("--perturb-share", min=0.0, max=1.0, help="With --coarse mixed, "
                                                 "the share of crops made from ground truth.",
                                                 rich_help_panel=WORKING)] = REFINER.perturb_share,
    perturb_base: Annotated[float, typer.Option("--perturb-base", min=0.0, max=1.0, help="Chance that a base "
                                                "network's map is perturbed further (its outputs on the images it "
                                                "was trained on are too good).", rich_help_panel=WORKING)] = (
        REFINER.perturb_base_p),
    perturb_hard: Annotated[float, typer.Option("--perturb-hard", min=0.0, max=1.0, help="Share of ground-truth "
                                                "coarse maps that are one-hot masks (the rest stay soft).",
                                                rich_help_panel=WORKING)] = REFINER.perturb.hard_p,
    working_side: Annotated[int, typer.Option("--working-side", min=16, help="Images are scaled so that their long "
                                              "side is this (times a random zoom) before cropping: the refiner "
                                              "side they will run at.", rich_help_panel=WORKING)] = (
        REFINER.working.side),
    max_classes: Annotated[int, typer.Option("--max-classes", min=1, help="Class maps per crop at most (the ones "
                                             "the coarse map names most).", rich_help_panel=WORKING)] = (
        REFINER.working.max_classes),
    boundary_weight: Annotated[float, typer.Option("--boundary-weight", min=0.0, help="Pixels within 2 px of a true "
                                                   "label change weigh 1 + this in the loss.",
                                                   rich_help_panel=WORKING)] = REFINER.boundary_weight,
    loss_band: Annotated[Optional[int], typer.Option("--loss-band", min=0, help="Count the loss only within this "
                                                     "many px of the coarse map's boundaries, where a refiner acts "
                                                     "(0: every pixel; default: the refiner's own, 8 for spn_colour, "
                                                     "0 for the others).", rich_help_panel=NETWORK)] = None,
    loss_clip: Annotated[Optional[float], typer.Option("--loss-clip", min=0.0, help="Clip each pixel's loss at this, "
                                                       "so pixels no refiner can fix do not dominate (0: not "
                                                       "clipped; default: the refiner's own, 3 for spn_colour, 0 for "
                                                       "the others).", rich_help_panel=NETWORK)] = None,
    val_limit: Annotated[Optional[int], typer.Option("--val-limit", min=1, help="Validate on at most this many "
                                                     "images per dataset.", rich_help_panel=WORKING)] = None,
    probs: Annotated[ProbsMode, typer.Option("--probs", help="cache: computed once and stored (float16); live: "
                                             "recomputed every step.", rich_help_panel=DATA)] = (
        ProbsMode(REFINER.probs)),
    probs_dir: Annotated[Optional[Path], typer.Option("--probs-dir", help="Where cached probabilities go (default: "
                                                      "the refine-cli cache).", file_okay=False,
                                                      rich_help_panel=DATA)] = None,
    suppress_absent: Annotated[bool, typer.Option("--suppress-absent/--keep-absent", help="Validate with the released "
                                                  "rule: classes absent from the coarse argmax are dropped.",
                                                  rich_help_panel=DATA)] = REFINER.suppress_absent,
    images_per_batch: Annotated[int, typer.Option("--images-per-batch", min=1, help="Images per step (over all "
                                                  "processes).", rich_help_panel=AUG)] = REFINER.images_per_batch,
    crops_per_image: Annotated[int, typer.Option("--crops-per-image", min=1, help="Random crops per image.",
                                                 rich_help_panel=AUG)] = REFINER.crop.crops_per_image,
    crop_size: Annotated[Optional[int], typer.Option("--crop-size", min=2, help="Side of the square training crops "
                                                     f"(default: {REFINER.crop.size} released, "
                                                     f"{REFINER.working.size} working).",
                                                     rich_help_panel=AUG)] = None,
    min_labels: Annotated[int, typer.Option("--min-labels", min=0, help="A crop with fewer labels is redrawn.",
                                            rich_help_panel=AUG)] = REFINER.crop.min_labels,
    max_tries: Annotated[int, typer.Option("--max-tries", min=1, help="Crop draws at most.",
                                           rich_help_panel=AUG)] = REFINER.crop.max_tries,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Joint random affine of image, label and "
                                          "probabilities.", rich_help_panel=AUG)] = REFINER.augment is not None,
    rotation: Annotated[float, typer.Option("--rotation", min=0.0, help="Rotation range, +/- degrees.",
                                            rich_help_panel=AUG)] = AugmentConfig().rotation_deg,
    scale_jitter: Annotated[float, typer.Option("--scale-jitter", min=0.0, max=0.99, help="Scale range, 1 +/- this.",
                                                rich_help_panel=AUG)] = AugmentConfig().scale,
    shift: Annotated[float, typer.Option("--shift", min=0.0, help="Shift range, +/- this x the longer side.",
                                         rich_help_panel=AUG)] = AugmentConfig().shift_fraction,
    hard_probs: Annotated[Optional[float], typer.Option("--hard-probs", min=0.0, max=1.0, help="Share of crops "
                                                        "whose base probabilities become one-hot, as masks made "
                                                        f"elsewhere arrive (default: {AugmentConfig().hard_probs_p:g}"
                                                        f" released, {REFINER.hard_p:g} working).",
                                                        rich_help_panel=AUG)] = None,
    probs_temperature: Annotated[float, typer.Option("--probs-temperature", min=1.0, help="Re-temper each crop's "
                                                     "coarse probabilities, softmax(log p / t), t log-uniform in "
                                                     "[1/T, T], so the refiner does not learn one base network's "
                                                     "calibration (1: off).", rich_help_panel=AUG)
                         ] = AugmentConfig().probs_temperature,
    probs_coarsen: Annotated[float, typer.Option("--probs-coarsen", min=1.0, help="Smooth each crop's coarse "
                                                 "probabilities: area-downsample by s, s log-uniform in [1, S], and "
                                                 "resize back, so the refiner also sees blobbier base networks "
                                                 "(1: off).", rich_help_panel=AUG)] = AugmentConfig().probs_coarsen,
    probs_displace: Annotated[int, typer.Option("--probs-displace", min=0, help="Grow or shrink each class map of "
                                                "each crop by its own radius in [-R, R] pixels, so the refiner "
                                                "learns to move boundaries to the image's edges in both directions "
                                                "(0: off).", rich_help_panel=AUG)] = AugmentConfig().probs_displace,
    resume: Resume = False,
    overwrite: OverwriteRun = False,
    *,
    optim: OptimConfig,
    loop: LoopConfig,
) -> None:
    """Train an SPN refiner on a base network's coarse probabilities.

    The released recipe by default: SGD lr 1e-4, momentum 0.9, weight decay 5e-3, poly 0.5, gradient clipping
    1000, 60k steps of 4 images x 10 random 128x128 crops (redrawn below 2 labels), joint random affine.
    """
    with heavy_imports():
        from refine_cli.train import train_refiner
    with cli_errors():
        _check_arch(arch, "refiner")
        bases = base_net or []
        formats = format or [DatasetFormat(REFINER.data.format)]
        if len(formats) not in (1, len(data)):
            raise UsageError(f"give one --format for all --data, or one per --data ({len(data)}); got {len(formats)}")
        datasets = [_data(d, formats[i if len(formats) > 1 else 0], split, val_split, skip_bad)
                    for i, d in enumerate(data)]
        if crops == CropsMode.released and (len(datasets) > 1 or len(bases) != 1):
            raise UsageError("--crops released trains on one --data with one --base; several are for --crops working")
        size = crop_size or (REFINER.crop.size if crops == CropsMode.released else REFINER.working.size)
        released_hard = AugmentConfig().hard_probs_p if hard_probs is None else hard_probs
        config = RefinerTrainConfig(
            arch=arch, arch_args=_arch_args(arch_arg), base=bases[0] if bases else "", more_bases=tuple(bases[1:]),
            data=datasets[0], more_data=tuple(datasets[1:]), images_per_batch=images_per_batch,
            crops=crops.value, coarse=coarse.value, perturb_share=perturb_share, perturb_base_p=perturb_base,
            perturb=replace(REFINER.perturb, hard_p=perturb_hard),
            working=replace(REFINER.working, size=size, side=working_side, max_classes=max_classes,
                            min_labels=min_labels, max_tries=max_tries),
            hard_p=REFINER.hard_p if hard_probs is None else hard_probs, boundary_weight=boundary_weight,
            loss_band=loss_band, loss_clip=loss_clip, val_limit=val_limit,
            crop=CropConfig(size=size, crops_per_image=crops_per_image, min_labels=min_labels,
                            max_tries=max_tries),
            augment=AugmentConfig(rotation_deg=rotation, scale=scale_jitter, shift_fraction=shift,
                                  hard_probs_p=released_hard, probs_temperature=probs_temperature,
                                  probs_coarsen=probs_coarsen, probs_displace=probs_displace) if augment else None,
            probs=probs.value, probs_dir=None if probs_dir is None else str(probs_dir),
            suppress_absent=suppress_absent, init=init.value, init_from=init_from,
            optim=optim, loop=loop,
        )
    _run(train_refiner, config, out, resume, overwrite)
