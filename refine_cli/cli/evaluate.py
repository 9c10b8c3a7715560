"""`refine-cli evaluate`: the seed paper's table for base, base + SPN and base + dense CRF on a dataset split."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from refine_cli import io
from refine_cli.cli.common import cli_errors, console, err_console, refiner_side, refiner_side_option
from refine_cli.config import CRFConfig
from refine_cli.crf import crf_available
from refine_cli.data import FORMATS, open_dataset
from refine_cli.errors import DataError, UsageError
from refine_cli.evaluation import EvalReport, evaluate
from refine_cli.pipeline import Refiner

CRF_DEFAULT = CRFConfig()
DATA, NETS, CRF_PANEL, RUN = "Data", "Networks", "Dense CRF baseline", "Execution"


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.2f}"


def report_table(report: EvalReport) -> Table:
    table = Table(title=f"{report.dataset}: {report.images} images", box=box.SIMPLE_HEAD)
    table.add_column("method")
    for name in ("pixel acc", "mean acc", "mIoU", f"boundary F ({report.boundary_tolerance_px:g}px)"):
        table.add_column(name, justify="right")
    table.add_column("ms / image", justify="right")
    for m in report.methods:
        table.add_row(m.method, _pct(m.pixel_accuracy), _pct(m.mean_accuracy), _pct(m.miou), _pct(m.boundary_f),
                      f"{m.ms_per_image:.1f}")
    return table


def per_class_table(report: EvalReport) -> Table:
    table = Table(title="IoU per class", box=box.SIMPLE_HEAD)
    table.add_column("class")
    for m in report.methods:
        table.add_column(m.method, justify="right")
    for i, name in enumerate(report.classes):
        table.add_row(name, *(_pct(m.iou[i]) for m in report.methods))
    return table


def evaluate_command(
    data: Annotated[Path, typer.Option("--data", help="Dataset root.", exists=True, file_okay=False,
                                       rich_help_panel=DATA)],
    base: Annotated[str, typer.Option("--base", help="Base segmenter checkpoint (name or path).",
                                      rich_help_panel=NETS)] = "default",
    refiner: Annotated[str, typer.Option("--refiner", help="SPN refiner checkpoint (name or path); 'none' to "
                                         "score the base alone.", rich_help_panel=NETS)] = "default",
    format: Annotated[str, typer.Option("--format", help=f"Dataset layout: {', '.join(FORMATS)}.",
                                        rich_help_panel=DATA)] = "voc",
    split: Annotated[str, typer.Option("--split", help="Split to score.", rich_help_panel=DATA)] = "val",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Score only the first N images.",
                                                 rich_help_panel=DATA)] = None,
    crf: Annotated[bool, typer.Option("--crf", help="Also score base + dense CRF (needs refine-cli\\[crf]).",
                                      rich_help_panel=CRF_PANEL)] = False,
    crf_iterations: Annotated[int, typer.Option("--crf-iterations", min=1, rich_help_panel=CRF_PANEL,
                                                help="Mean-field iterations.")] = 5,
    crf_bilateral_sxy: Annotated[float, typer.Option("--crf-bilateral-sxy", rich_help_panel=CRF_PANEL,
                                                     help="Bilateral kernel's spatial sigma (px).")]
    = CRF_DEFAULT.bilateral_sxy,
    crf_bilateral_srgb: Annotated[float, typer.Option("--crf-bilateral-srgb", rich_help_panel=CRF_PANEL,
                                                      help="Bilateral kernel's colour sigma.")]
    = CRF_DEFAULT.bilateral_srgb,
    crf_bilateral_compat: Annotated[float, typer.Option("--crf-bilateral-compat", rich_help_panel=CRF_PANEL,
                                                        help="Bilateral kernel's weight.")]
    = CRF_DEFAULT.bilateral_compat,
    tolerance: Annotated[float, typer.Option("--boundary-tolerance", min=0, help="Boundary F tolerance in pixels.",
                                             rich_help_panel=DATA)] = 2.0,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also print the IoU of every class.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN)] = "auto",
    side: Annotated[Optional[int], refiner_side_option(RUN)] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the report as JSON to this file ('-': "
                                                    "stdout).")] = None,
) -> None:
    """Score base, base + SPN and (with --crf) base + dense CRF: accuracy, mIoU, boundary F, time per image."""
    view = err_console if json_out == "-" else console
    with cli_errors():
        if crf and not crf_available():
            raise UsageError('--crf needs the optional package pydensecrf2: pip install "refine-cli[crf]"')
        dataset = open_dataset(data, format=format, split=split)
        model = Refiner(base=base, refiner=refiner, device=device, batch_size=1, refiner_side=refiner_side(side))
        classes = model.classes
        if len(dataset.classes) != len(classes):
            raise DataError(
                f"{data} has {len(dataset.classes)} classes but the base network {model.base.path.name} predicts "
                f"{len(classes)}; evaluate a network trained on this label set"
            )
        n = len(dataset) if limit is None else min(limit, len(dataset))
        crf_config = None
        if crf:
            crf_config = replace(CRF_DEFAULT, iterations=crf_iterations, bilateral_sxy=crf_bilateral_sxy,
                                 bilateral_srgb=crf_bilateral_srgb, bilateral_compat=crf_bilateral_compat)
        columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=view, transient=True) as bar:
            task = bar.add_task("", total=n)
            report = evaluate(
                (dataset[i] for i in range(n)), model, num_classes=len(classes), crf=crf_config,
                dataset=f"{data} ({format}, {split})", tolerance_px=tolerance,
                progress=lambda i: bar.update(task, completed=i),
            )
    view.print(f"[bold]device[/]: {report.device}", highlight=False)
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
