"""Options that commands in more than one module take, each defined once (an option that only one module's commands
take is defined there), and the help panels they share. Imports typer, `refine_cli.config` and `refine_cli.errors`
only: Typer reads these when the app is built, so `--help` and usage errors stay free of torch."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from refine_cli.config import CRFConfig, PipelineConfig, Precision
from refine_cli.errors import UsageError

DATA, NETWORKS, OUTPUTS, RUN = "Data", "Networks", "Outputs", "Execution"
CRF_PANEL = "Dense CRF baseline"

_PIPELINE = PipelineConfig()


class DatasetFormat(str, Enum):
    """The layouts `refine_cli.data.open_dataset` reads (the keys of its FORMATS, in order)."""

    voc = "voc"
    helen = "helen"
    folders = "folders"
    camvid = "camvid"
    davis = "davis"


Format = Annotated[DatasetFormat, typer.Option("--format", help="Layout of the dataset.", rich_help_panel=DATA)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (a GPU asked for but absent is an "
                                     "error).", rich_help_panel=RUN)]
JsonOut = Annotated[Optional[str], typer.Option("--json", help="Write the results as JSON to this file ('-': "
                                                "stdout, the tables then go to stderr).", rich_help_panel=OUTPUTS)]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per batch (default: "
                      f"{_PIPELINE.gpu_batch_size} on a GPU, {_PIPELINE.cpu_batch_size} on a CPU).",
                      rich_help_panel=RUN)]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="fp32, or fp16 / bf16 autocast (fp16 needs a "
                                                 "GPU).", rich_help_panel=RUN)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile both networks (GPU).", rich_help_panel=RUN)]
DecodeWorkers = Annotated[int, typer.Option("--workers", min=1, help="Threads decoding images.", rich_help_panel=RUN)]
RefinerSide = Annotated[Optional[int], typer.Option(
    "--refiner-side", min=0, rich_help_panel=RUN,
    help="Long side above which a learnt SPN refiner runs on a scaled-down copy, its output resized back; 0: full "
    f"resolution (default: {_PIPELINE.cpu_refiner_side} on a CPU, full resolution on a GPU). The colour-gated "
    "refiner (the default) always runs at full resolution.")]
Masks = Annotated[Optional[Path], typer.Option(
    "--masks", help="Refine coarse masks from this folder instead of running a base segmenter (matched by relative "
    "path and stem; palette, grey-index or binary 0/255 PNGs; 255 in a mask with other labels is unknown).",
    exists=True, file_okay=False, rich_help_panel=NETWORKS)]
NumClasses = Annotated[Optional[int], typer.Option(
    "--num-classes", min=2, help="Class count of the --masks (default: read from each mask).",
    rich_help_panel=NETWORKS)]

_CRF = CRFConfig()
CrfBilateralSxy = Annotated[Optional[float], typer.Option(
    "--crf-bilateral-sxy", rich_help_panel=CRF_PANEL,
    help=f"Bilateral kernel's spatial sigma, px (default {_CRF.bilateral_sxy:g}).")]
CrfBilateralSrgb = Annotated[Optional[float], typer.Option(
    "--crf-bilateral-srgb", rich_help_panel=CRF_PANEL,
    help=f"Bilateral kernel's colour sigma (default {_CRF.bilateral_srgb:g}).")]
CrfBilateralCompat = Annotated[Optional[float], typer.Option(
    "--crf-bilateral-compat", rich_help_panel=CRF_PANEL,
    help=f"Bilateral kernel's weight (default {_CRF.bilateral_compat:g}).")]
CrfLabelConfidence = Annotated[Optional[float], typer.Option(
    "--crf-label-confidence", min=0.0, max=1.0, rich_help_panel=CRF_PANEL,
    help="Hard masks: probability given to a pixel's label in the CRF's unary, the rest shared by the other "
    f"classes (default {_CRF.label_confidence:g}).")]


def crf_config_from(iterations: int, bilateral_sxy: float | None, bilateral_srgb: float | None,
                    bilateral_compat: float | None, label_confidence: float | None) -> CRFConfig:
    """The dense CRF's settings from the --crf-* options: those not given keep `CRFConfig`'s defaults."""
    config = replace(_CRF, iterations=iterations, **{
        name: value for name, value in (
            ("bilateral_sxy", bilateral_sxy), ("bilateral_srgb", bilateral_srgb),
            ("bilateral_compat", bilateral_compat), ("label_confidence", label_confidence),
        ) if value is not None
    })
    if config.label_confidence in (0.0, 1.0):
        raise UsageError("--crf-label-confidence must lie strictly between 0 and 1")
    return config
