"""`refine-cli evaluate`: the seed paper's table for a coarse segmentation (a base network's, or masks made
elsewhere), coarse + SPN and coarse + dense CRF on a dataset split, the CRF optionally tuned on another split."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from refine_cli.cli import heavy_imports
from refine_cli.cli.common import cli_errors, console, err_console, refiner_side
from refine_cli.cli.options import (
    CRF_PANEL, CrfBilateralCompat, CrfBilateralSrgb, CrfBilateralSxy, CrfLabelConfidence, DatasetFormat, Device,
    JsonOut, RefinerSide, crf_config_from,
)
from refine_cli.config import CRFTuneConfig
from refine_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    from refine_cli.data import Sample, SegmentationDataset
    from refine_cli.evaluation import CoarseFolder, EvalReport, TunedCRF

TUNE_DEFAULT = CRFTuneConfig()
DATA, NETS = "Data", "Networks and coarse input"


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}"


def report_table(report: EvalReport) -> Table:
    table = Table(title=f"{escape(report.dataset)}: {report.images} images", box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True)
    two_class = len(report.classes) == 2
    names = ["pixel acc", "mean acc", "mIoU"] + (["fg IoU"] if two_class else [])
    for name in (*names, f"boundary F ({report.boundary_tolerance_px:g}px)"):
        table.add_column(name, justify="right")
    table.add_column("ms / image", justify="right")
    for m in report.methods:
        fg = [_pct(m.foreground_iou)] if two_class else []
        ms = "-" if m.ms_per_image != m.ms_per_image else f"{m.ms_per_image:.1f}"
        table.add_row(m.method, _pct(m.pixel_accuracy), _pct(m.mean_accuracy), _pct(m.miou), *fg, _pct(m.boundary_f),
                      ms)
    return table


def per_class_table(report: EvalReport) -> Table:
    table = Table(title="IoU per class", box=box.SIMPLE_HEAD)
    table.add_column("class")
    for m in report.methods:
        table.add_column(m.method, justify="right")
    for i, name in enumerate(report.classes):
        table.add_row(escape(name), *(_pct(m.iou[i]) for m in report.methods))
    return table


def tuning_table(tuned: TunedCRF, top: int = 5) -> Table:
    """The best `top` grid points, best first, the chosen one marked."""
    hard = tuned.hard_labels
    table = Table(title=f"dense CRF tuned on {escape(tuned.split)} ({len(tuned.images)} images, "
                  f"{len(tuned.results)} settings, by {tuned.criterion})", box=box.SIMPLE_HEAD)
    for name in ("sxy", "srgb", "compat", *(("label conf.",) if hard else ()), "mIoU", "boundary F", "score"):
        table.add_column(name, justify="right")
    order = sorted(range(len(tuned.results)), key=lambda i: -tuned.results[i]["score"])[:top]
    for i in order:
        r = tuned.results[i]
        conf = (f"{r['label_confidence']:g}",) if hard else ()
        table.add_row(f"{r['bilateral_sxy']:g}", f"{r['bilateral_srgb']:g}", f"{r['bilateral_compat']:g}", *conf,
                      _pct(r["miou"]), _pct(r["boundary_f"]), _pct(r["score"]))
    return table


def _progress(view: Console, what: str) -> Progress:
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=view, transient=True)


def _samples(dataset: SegmentationDataset, indices: list[int], coarse: CoarseFolder | None) -> Iterator[Sample]:
    """The samples at `indices` that have a coarse input (all of them in --base mode)."""
    for i in indices:
        if coarse is None or dataset.pairs[i].name in coarse.files:
            yield dataset[i]


def _check_tune_split(scored: SegmentationDataset, tune: SegmentationDataset, split: str, tune_split: str) -> None:
    if tune_split == split:
        raise UsageError(f"--crf-tune-split {tune_split} is the split being scored; tune on another one (e.g. train)")
    shared = {p.image.resolve() for p in scored.pairs} & {p.image.resolve() for p in tune.pairs}
    if shared:
        raise UsageError(f"--crf-tune-split {tune_split} shares {len(shared)} images with --split {split} (e.g. "
                         f"{sorted(shared)[0]}); tune on a split with none of the scored images")


def evaluate_command(
    data: Annotated[Path, typer.Option("--data", help="Dataset root.", exists=True, file_okay=False,
                                       rich_help_panel=DATA)],
    base: Annotated[Optional[str], typer.Option(
        "--base", help="Base segmenter checkpoint (name or path; default: the bundled one) whose outputs are the "
        "coarse input. Not with --masks.", rich_help_panel=NETS)] = None,
    masks: Annotated[Optional[Path], typer.Option(
        "--masks", help="Score coarse input made elsewhere instead of a base network: masks (or .npz probabilities "
        "from refine --save-probs) matched to the samples by the dataset's relative path and stem (e.g. "
        "DIR/<sequence>/<frame>.png for DAVIS) or flat by sample name (DIR/<sequence>_<frame>.png). 255 = unknown.",
        exists=True, file_okay=False, rich_help_panel=NETS)] = None,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Leave out samples without a coarse mask (counted in the report) instead of stopping.",
        rich_help_panel=NETS)] = False,
    refiner: Annotated[str, typer.Option("--refiner", help="SPN refiner checkpoint (name or path); 'none' to "
                                         "score the coarse input alone.", rich_help_panel=NETS)] = "default",
    format: Annotated[str, typer.Option("--format", help="Dataset layout: "
                                        f"{', '.join(f.value for f in DatasetFormat)}.", rich_help_panel=DATA)] = "voc",
    split: Annotated[str, typer.Option("--split", help="Split to score.", rich_help_panel=DATA)] = "val",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Score only the first N images.",
                                                 rich_help_panel=DATA)] = None,
    crf: Annotated[bool, typer.Option("--crf", help="Also score coarse + dense CRF (needs refine-cli\\[crf]).",
                                      rich_help_panel=CRF_PANEL)] = False,
    crf_iterations: Annotated[int, typer.Option("--crf-iterations", min=1, rich_help_panel=CRF_PANEL,
                                                help="Mean-field iterations (also while tuning).")] = 5,
    crf_bilateral_sxy: CrfBilateralSxy = None,
    crf_bilateral_srgb: CrfBilateralSrgb = None,
    crf_bilateral_compat: CrfBilateralCompat = None,
    crf_label_confidence: CrfLabelConfidence = None,
    crf_tune_split: Annotated[Optional[str], typer.Option(
        "--crf-tune-split", rich_help_panel=CRF_PANEL,
        help="Grid-search the CRF's bilateral sxy, srgb, compat (and label confidence for hard masks) on this split "
        "of the same dataset first (its coarse input from the same --masks folder or --base network), then score "
        "with the best by mIoU + boundary F. Implies --crf; never the scored split.")] = None,
    crf_tune_grid: Annotated[Optional[str], typer.Option(
        "--crf-tune-grid", rich_help_panel=CRF_PANEL,
        help="Other values to search, e.g. 'sxy=5,10,20 srgb=3,5 compat=4,10 confidence=0.7,0.9'; parameters not "
        "named keep the default grid's (CRFTuneConfig).")] = None,
    crf_tune_limit: Annotated[int, typer.Option(
        "--crf-tune-limit", min=1, rich_help_panel=CRF_PANEL,
        help="Tune on this many images spread evenly over the tuning split.")] = TUNE_DEFAULT.images,
    tolerance: Annotated[float, typer.Option("--boundary-tolerance", min=0, help="Boundary F tolerance in pixels.",
                                             rich_help_panel=DATA)] = 2.0,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also print the IoU of every class.")] = False,
    device: Device = "auto",
    side: RefinerSide = None,
    json_out: JsonOut = None,
) -> None:
    """Score a coarse segmentation (a base network's, or --masks made elsewhere), + SPN and (with --crf) + dense
    CRF: accuracy, mIoU, boundary F, time per image."""
    with heavy_imports():
        from refine_cli import io
        from refine_cli.crf import crf_available
        from refine_cli.data import open_dataset
        from refine_cli.evaluation import evaluate, match_coarse, parse_grid, spread, tune_crf
        from refine_cli.pipeline import Refiner
    view = err_console if json_out == "-" else console
    crf = crf or crf_tune_split is not None
    with cli_errors():
        if crf and not crf_available():
            raise UsageError('--crf needs the optional package pydensecrf2: pip install "refine-cli[crf]"')
        if skip_missing and masks is None:
            raise UsageError("--skip-missing goes with --masks (a base network has an output for every sample)")
        if masks is not None and base is not None:
            raise UsageError("--masks scores coarse masks made elsewhere; drop --base (or --masks to score a network)")
        given = {"--crf-bilateral-sxy": crf_bilateral_sxy, "--crf-bilateral-srgb": crf_bilateral_srgb,
                 "--crf-bilateral-compat": crf_bilateral_compat, "--crf-label-confidence": crf_label_confidence}
        if crf_tune_split is not None and any(v is not None for v in given.values()):
            chosen = ", ".join(k for k, v in given.items() if v is not None)
            raise UsageError(f"--crf-tune-split chooses the CRF's parameters itself; drop {chosen}")
        if crf_tune_grid is not None and crf_tune_split is None:
            raise UsageError("--crf-tune-grid needs --crf-tune-split, the split to search it on")
        grid = parse_grid(crf_tune_grid, TUNE_DEFAULT) if crf_tune_grid is not None else TUNE_DEFAULT
        dataset = open_dataset(data, format=format, split=split)
        model = Refiner(base=None if masks is not None else (base or "default"), refiner=refiner, device=device,
                        batch_size=1, refiner_side=refiner_side(side))
        num_classes = dataset.num_classes
        if masks is None and len(model.classes) != num_classes:
            assert model.base is not None
            raise DataError(
                f"{data} has {num_classes} classes but the base network {model.base.path.name} predicts "
                f"{len(model.classes)}; evaluate a network trained on this label set"
            )
        indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
        coarse = match_coarse(dataset, indices, masks, skip_missing=skip_missing) if masks is not None else None
        crf_config = None
        if crf:
            crf_config = crf_config_from(crf_iterations, crf_bilateral_sxy, crf_bilateral_srgb, crf_bilateral_compat,
                                         crf_label_confidence)
        tuned = None
        if crf_tune_split is not None:
            assert crf_config is not None
            tune_set = open_dataset(data, format=format, split=crf_tune_split)
            _check_tune_split(dataset, tune_set, split, crf_tune_split)
            tune_indices = spread(len(tune_set), crf_tune_limit)
            tune_coarse = (match_coarse(tune_set, tune_indices, masks, skip_missing=skip_missing)
                           if masks is not None else None)
            count = len(tune_indices) - (len(tune_coarse.missing) if tune_coarse is not None else 0)
            with _progress(view, f"tuning the dense CRF on {crf_tune_split}") as bar:
                task = bar.add_task("", total=count)
                tuned = tune_crf(
                    _samples(tune_set, tune_indices, tune_coarse), model, num_classes=num_classes, base=crf_config,
                    grid=grid, coarse=tune_coarse, split=crf_tune_split, tolerance_px=tolerance,
                    progress=_updater(bar, task),
                )
            crf_config = tuned.config
            view.print(tuning_table(tuned))
            if tuned.coarse is not None:
                view.print(f"without the CRF on these images: mIoU {_pct(tuned.coarse['miou'])}, boundary F "
                           f"{_pct(tuned.coarse['boundary_f'])}, score {_pct(tuned.coarse['score'])}", highlight=False)
            chosen = ", ".join(f"{k} {v:g}" for k, v in tuned.chosen.items())
            view.print(f"[bold]dense CRF[/]: {chosen}", highlight=False)
            if tuned.at_grid_edge:
                view.print(f"[yellow]note[/]: {', '.join(tuned.at_grid_edge)} chosen at the edge of the grid; the "
                           "best setting may lie beyond it (widen it with --crf-tune-grid)", highlight=False)
        count = len(indices) - (len(coarse.missing) if coarse is not None else 0)
        with _progress(view, "evaluating") as bar:
            task = bar.add_task("", total=count)
            report = evaluate(
                _samples(dataset, indices, coarse), model, num_classes=num_classes,
                classes=dataset.classes if masks is not None else None,
                coarse=coarse, crf=crf_config, dataset=f"{data} ({format}, {split})", tolerance_px=tolerance,
                progress=_updater(bar, task), crf_tuning=tuned,
            )
    view.print(f"[bold]device[/]: {report.device}", highlight=False)
    if report.masks is not None:
        view.print(f"[bold]coarse input[/]: {report.coarse} from {escape(report.masks)}", highlight=False)
    if report.skipped:
        view.print(f"[yellow]skipped {len(report.skipped)} samples without a coarse mask[/] (listed in --json)")
    if report.unknown_pixels:
        view.print(f"{report.unknown_pixels} scored pixels are unknown (255) in the given masks: wrong in the "
                   f"{report.methods[0].method} row", highlight=False)
    view.print(report_table(report))
    if per_class:
        view.print(per_class_table(report))
    if json_out is not None:
        text = json.dumps(report.to_dict(), indent=1)
        if json_out == "-":
            typer.echo(text)
        else:
            with cli_errors():
                io.atomic_write(Path(json_out), lambda f: f.write(text.encode()))


def _updater(bar: Progress, task: TaskID) -> Callable[[int], None]:
    return lambda i: bar.update(task, completed=i)
