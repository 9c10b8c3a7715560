"""`refine-cli bench ...`: the speed and memory measurements the README cites, on the current machine: folder
throughput and where its time goes, the refiner against the dense CRF, scaling with image size and batch, and
the propagation kernels. Every command renders Rich tables and writes its numbers as JSON with --json."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from refine_cli.cli import heavy_imports
from refine_cli.cli.common import cli_errors, console, err_console, refiner_side
from refine_cli.cli.evaluate import report_table
from refine_cli.cli.options import (
    CRF_PANEL, NETWORKS, OUTPUTS, BatchSize, Compile, CrfBilateralCompat, CrfBilateralSrgb, CrfBilateralSxy,
    CrfLabelConfidence, DecodeWorkers, Device, JsonOut, Masks, NumClasses, PrecisionOpt, RefinerSide,
    crf_config_from,
)
from refine_cli.config import BenchConfig, PipelineConfig, Precision
from refine_cli.errors import UsageError

if TYPE_CHECKING:
    from refine_cli.bench.compare import ComparisonReport
    from refine_cli.bench.pipeline import PipelineReport
    from refine_cli.bench.scaling import ScalingReport

app = typer.Typer(
    name="bench",
    help="Measure speed and memory on this machine: folder throughput, refiner vs dense CRF, scaling, kernels.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

DEFAULT = BenchConfig()
WORKLOAD = "Workload"

N = Annotated[int, typer.Option("--n", min=1, help="Number of synthetic images.", rich_help_panel=WORKLOAD)]
Size = Annotated[int, typer.Option("--size", min=32, help="Side of the square synthetic images, in pixels.",
                                   rich_help_panel=WORKLOAD)]
WorkloadSeed = Annotated[int, typer.Option("--seed", help="Seed of the synthetic world the images are drawn from.",
                                           rich_help_panel=WORKLOAD)]
Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Runs per measurement; the median is reported.",
                                      rich_help_panel=WORKLOAD)]
BaseOrArch = Annotated[str, typer.Option("--base", help="Base segmenter: a checkpoint name or path ('default': "
                                         "bundled); with --random-init a registered architecture.",
                                         rich_help_panel=NETWORKS)]
RefinerOrArch = Annotated[str, typer.Option("--refiner", help="SPN refiner: a checkpoint name or path ('default': "
                                            "bundled); with --random-init a registered architecture.",
                                            rich_help_panel=NETWORKS)]
RandomInit = Annotated[bool, typer.Option(
    "--random-init", help="--base and --refiner name registered architectures, built with seeded random weights "
    "(timing without trained checkpoints; a random base votes for many classes, so the universal refiner is timed "
    "on the heavy side).", rich_help_panel=NETWORKS)]


# ---------------------------------------------------------------------------------------------------- helpers

def _view(json_out: str | None) -> Console:
    return err_console if json_out == "-" else console


def _write_json(json_out: str | None, data: dict[str, Any]) -> None:
    if json_out is None:
        return
    text = json.dumps(data, indent=1)
    if json_out == "-":
        typer.echo(text)
        return
    from refine_cli import io

    with cli_errors():
        io.atomic_write(Path(json_out), lambda f: f.write(text.encode()))


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, e.g. 256,512; got '{text}'") from None
    if not values:
        raise UsageError(f"{option} needs at least one value")
    return values


@contextlib.contextmanager
def _networks(base: str, refiner: str | None, random_init: bool) -> Iterator[tuple[str, str | None]]:
    """The --base / --refiner choices as the Refiner takes them; with --random-init, checkpoints of seeded random
    weights written to a temporary folder for the length of the run."""
    if not random_init:
        yield base, refiner
        return
    if base == "default" or refiner == "default":
        raise UsageError("--random-init needs --base ARCH and --refiner ARCH, registered architectures such as "
                         "fcn8s_vgg16_compact and spn_universal_compact")
    from refine_cli.bench.workload import random_checkpoint

    with tempfile.TemporaryDirectory(prefix="refine-cli-random-") as tmp:
        base_path = str(random_checkpoint(base, tmp))
        refiner_path = str(random_checkpoint(refiner, tmp)) if refiner is not None else None
        yield base_path, refiner_path


def _ms_share(ms: float, share: float) -> str:
    return f"{ms:.1f} ({100 * share:.0f}%)"


# ---------------------------------------------------------------------------------------------------- pipeline

def pipeline_table(report: PipelineReport) -> Table:
    from refine_cli.bench.pipeline import STAGES

    size = f" of {report.size}x{report.size}" if report.size else ""
    table = Table(
        title=f"{report.images} images{size}, batch {report.batch_size}, {report.precision}: medians of "
              f"{report.repeats} runs", caption="stages: ms per image (share of the summed stage time)",
        box=box.SIMPLE_HEAD)
    table.add_column("run")
    table.add_column("img/s", justify="right")
    table.add_column("vs bare base", justify="right")
    for stage in STAGES:
        table.add_column(stage, justify="right")
    for run in report.runs:
        ratio = report.ratio_to_bare(run.mode)
        table.add_row(run.mode, f"{run.images_per_s:.2f}", f"{100 * ratio:.0f}%" if ratio is not None else "-",
                      *(_ms_share(getattr(run.ms_per_image, s), getattr(run.shares, s)) for s in STAGES))
    if report.bare_base_images_per_s is not None:
        table.add_row("bare base forward", f"{report.bare_base_images_per_s:.2f}", "100%", *("" for _ in STAGES))
    if report.crf_ms_per_image is not None:
        assert report.crf is not None
        table.add_row(f"dense CRF ({report.crf.iterations} iterations)", f"{1e3 / report.crf_ms_per_image:.2f}", "-",
                      "", "", f"{report.crf_ms_per_image:.1f}", "")
    return table


@app.command("pipeline")
def pipeline_command(
    n: N = DEFAULT.images,
    size: Size = DEFAULT.size,
    seed: WorkloadSeed = DEFAULT.seed,
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Time this folder of images instead of synthetic ones (e.g. JPEGImages/ of `refine-cli "
        "data synth`); --n, --size and --seed are then ignored.", exists=True, file_okay=False,
        rich_help_panel=WORKLOAD)] = None,
    repeats: Repeats = DEFAULT.repeats,
    base: BaseOrArch = "default",
    refiner: Annotated[str, typer.Option("--refiner", help="SPN refiner: a checkpoint name or path ('default': "
                                         "bundled; 'none': time the base network only); with --random-init a "
                                         "registered architecture.", rich_help_panel=NETWORKS)] = "default",
    random_init: RandomInit = False,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Also write overlays, as `refine` does by "
                                          "default.", rich_help_panel=WORKLOAD)] = True,
    device: Device = "auto",
    batch_size: BatchSize = None,
    precision: PrecisionOpt = Precision.fp32,
    workers: DecodeWorkers = PipelineConfig().decode_workers,
    compile: Compile = False,
    masks: Masks = None,
    num_classes: NumClasses = None,
    crf_iterations: Annotated[int, typer.Option("--crf-iterations", min=1, help="With --masks: mean-field "
                                                "iterations of the dense CRF timed beside it.",
                                                rich_help_panel=CRF_PANEL)] = DEFAULT.crf_iterations,
    crf_bilateral_sxy: CrfBilateralSxy = None,
    crf_bilateral_srgb: CrfBilateralSrgb = None,
    crf_bilateral_compat: CrfBilateralCompat = None,
    crf_label_confidence: CrfLabelConfidence = None,
    json_out: JsonOut = None,
) -> None:
    """Folder throughput of `refine`: images/s with the base network alone and with the refiner, the time per image
    and share of each stage (decode, base, refiner, write), and the base network's bare forward throughput. With
    --masks (and --images): the whole `refine --masks` run against the dense CRF on the same images and masks."""
    with heavy_imports():
        from refine_cli.bench.pipeline import bench_pipeline, synthetic_folder
    view = _view(json_out)
    with cli_errors(), contextlib.ExitStack() as stack:
        base_choice, refiner_choice = stack.enter_context(_networks(base, None if refiner == "none" else refiner,
                                                                    random_init))
        status = stack.enter_context(view.status("preparing"))
        if masks is not None and images is None:
            raise UsageError("--masks needs --images: the folder of images the masks belong to")
        if images is None:
            folder = stack.enter_context(synthetic_folder(
                n, size, seed=seed, progress=lambda i: status.update(f"rendering image {i} of {n}")))
            source, side = f"synthetic world, seed {seed}", size
        else:
            folder, source, side = images, str(images), None
        report = bench_pipeline(
            [folder], base=base_choice, refiner=refiner_choice, device=device, batch_size=batch_size,
            precision=precision.value, repeats=repeats, workers=workers, overlay=overlay, compile=compile, size=side,
            source=source, masks=masks, num_classes=num_classes, progress=status.update,
            crf=crf_config_from(crf_iterations, crf_bilateral_sxy, crf_bilateral_srgb, crf_bilateral_compat,
                                crf_label_confidence),
        )
    view.print(f"[bold]device[/]: {report.device}", highlight=False)
    view.print(pipeline_table(report))
    crf_ratio = report.ratio_to_crf()
    if crf_ratio is not None:
        view.print(f"refine --masks time per image / dense CRF's: [bold]{crf_ratio:.2f}x[/]", highlight=False)
    view.print(f"[dim]{report.note}.[/]", highlight=False)
    _write_json(json_out, report.to_dict())


# ---------------------------------------------------------------------------------------------- refiner vs CRF

def targets_table(report: ComparisonReport) -> Table:
    table = Table(title="The CPU target", box=box.SIMPLE_HEAD)
    table.add_column("clause")
    table.add_column("measured", justify="right")
    table.add_column("bar", justify="right")
    table.add_column("met")
    for t in report.targets:
        fmt = (lambda v: f"{v:.2f}x") if t.kind == "ratio" else (lambda v: f"{100 * v:+.2f} pts")
        table.add_row(t.claim, fmt(t.value), f"{t.relation} {fmt(t.bar)}", "[green]yes[/]" if t.met else "[red]no[/]")
    return table


@app.command("refiner-vs-crf")
def refiner_vs_crf_command(
    n: N = DEFAULT.compare_images,
    size: Size = DEFAULT.size,
    seed: WorkloadSeed = DEFAULT.seed,
    crf_iterations: Annotated[int, typer.Option("--crf-iterations", min=1, help="Mean-field iterations of the dense "
                                                "CRF.", rich_help_panel=WORKLOAD)] = DEFAULT.crf_iterations,
    tolerance: Annotated[float, typer.Option("--boundary-tolerance", min=0, help="Boundary F tolerance in pixels.",
                                             rich_help_panel=WORKLOAD)] = 2.0,
    base: Annotated[str, typer.Option("--base", help="Base segmenter trained on the synthetic world (name or path).",
                                      rich_help_panel=NETWORKS)] = "default",
    refiner: Annotated[str, typer.Option("--refiner", help="SPN refiner (name or path).",
                                         rich_help_panel=NETWORKS)] = "default",
    device: Device = "auto",
    side: RefinerSide = None,
    json_out: JsonOut = None,
) -> None:
    """The refiner against the dense CRF on the same synthetic images and base probabilities: time per image of
    the base network, the SPN refinement and the CRF (medians), their mIoU and boundary F, and the ratios
    SPN / base time and CRF / SPN time."""
    with heavy_imports():
        from refine_cli.bench.compare import compare_refiner_crf
        from refine_cli.pipeline import Refiner
    view = _view(json_out)
    with cli_errors(), view.status("loading the networks") as status:
        model = Refiner(base, refiner, device=device, batch_size=1, refiner_side=refiner_side(side))
        report = compare_refiner_crf(
            model, n=n, size=size, seed=seed, crf_iterations=crf_iterations, tolerance_px=tolerance,
            progress=lambda i: status.update(f"image {i} of {n}"),
        )
    view.print(f"[bold]device[/]: {report.report.device}", highlight=False)
    view.print(report_table(report.report))
    view.print(f"SPN time / base time: [bold]{report.spn_over_base:.2f}[/]   dense CRF ({report.crf_iterations} "
               f"iterations) time / SPN time: [bold]{report.crf_over_spn:.2f}[/]", highlight=False)
    view.print(targets_table(report))
    _write_json(json_out, report.to_dict())


# ---------------------------------------------------------------------------------------------------- scaling

def scaling_table(report: ScalingReport) -> Table:
    table = Table(title=f"Scaling: {report.precision}, medians of {report.repeats} calls", box=box.SIMPLE_HEAD,
                  caption=f"memory: {report.memory}")
    for name in ("stage", "size", "batch", "ms / image", "peak MiB", "classes propagated"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for p in report.points:
        ms = f"{p.ms_per_image:.1f}" if p.ms_per_image is not None else p.note or "-"
        mib = f"{p.peak_mib:.0f}" if p.peak_mib is not None else "-"
        table.add_row(p.stage, f"{p.size}x{p.size}", str(p.batch), ms, mib,
                      str(p.classes_propagated) if p.classes_propagated is not None else "")
    return table


@app.command("scaling")
def scaling_command(
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated image sides in pixels.",
                                       rich_help_panel=WORKLOAD)] = ",".join(map(str, DEFAULT.scaling_sizes)),
    batches: Annotated[str, typer.Option("--batches", help="Comma-separated batch sizes.",
                                         rich_help_panel=WORKLOAD)] = ",".join(map(str, DEFAULT.scaling_batches)),
    seed: WorkloadSeed = DEFAULT.seed,
    repeats: Repeats = DEFAULT.repeats,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Also measure peak memory (on a CPU: one "
                                         "fresh process per point).", rich_help_panel=WORKLOAD)] = True,
    base: BaseOrArch = "default",
    refiner: RefinerOrArch = "default",
    random_init: RandomInit = False,
    device: Device = "auto",
    precision: PrecisionOpt = Precision.fp32,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw time and memory against size into this "
                                                 "PNG (needs matplotlib: refine-cli\\[plot]).", dir_okay=False,
                                                 rich_help_panel=OUTPUTS)] = None,
    json_out: JsonOut = None,
) -> None:
    """Time per image and peak memory of the base network and of the refiner against image size and batch."""
    with heavy_imports():
        from refine_cli.bench.scaling import bench_scaling, plot_scaling, require_matplotlib
    view = _view(json_out)
    with cli_errors():
        size_list, batch_list = _ints(sizes, "--sizes"), _ints(batches, "--batches")
        if plot is not None:
            require_matplotlib()  # before the measurements, not after them
        with _networks(base, refiner, random_init) as (base_choice, refiner_choice), \
                view.status("loading the networks") as status:
            report = bench_scaling(
                base=base_choice, refiner=refiner_choice, sizes=size_list, batches=batch_list, device=device,
                precision=precision.value, repeats=repeats, memory=memory, seed=seed, progress=status.update,
            )
        view.print(f"[bold]device[/]: {report.device}", highlight=False)
        view.print(scaling_table(report))
        if plot is not None:
            view.print(f"plot: {plot_scaling(report, plot)}", highlight=False, markup=False)
    _write_json(json_out, report.to_dict())


# -------------------------------------------------------------------------------------------------------- ops

def _shape(text: str) -> tuple[int, int, int, int]:
    values = _ints(text, "--shape")
    if len(values) != 4 or min(values) < 1:
        raise UsageError(f"--shape takes N,C,H,W (four positive integers); got '{text}'")
    return values[0], values[1], values[2], values[3]


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@app.command("ops")
def ops_command(
    shapes: Annotated[Optional[list[str]], typer.Option(
        "--shape", help="N,C,H,W of a scan to time (repeatable; default: "
        f"{' '.join(','.join(map(str, s)) for s in DEFAULT.kernel_shapes)}).", rich_help_panel=WORKLOAD)] = None,
    backends: Annotated[Optional[str], typer.Option(
        "--backends", help="Comma-separated kernel backends (default: every available one but 'reference').",
        rich_help_panel=WORKLOAD)] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed rounds; the median is reported.",
                                         rich_help_panel=WORKLOAD)] = 5,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Also the extra peak memory (CPU; a fresh "
                                         "process per measurement).", rich_help_panel=WORKLOAD)] = True,
    refiner: Annotated[bool, typer.Option("--refiner", help="Also the universal refiner's whole propagation at "
                                          "512x512, per direction vs fused.", rich_help_panel=WORKLOAD)] = False,
    bandwidth: Annotated[bool, typer.Option("--bandwidth", help="CUDA: the memory bandwidth one scan reaches at "
                                            "(16, 32, 512, 512) float16.", rich_help_panel=WORKLOAD)] = False,
    device: Device = "auto",
    json_out: JsonOut = None,
) -> None:
    """The propagation kernels: one scan's forward and forward+backward time and peak memory per backend, the
    refiner's propagation per direction vs fused, and on CUDA the memory bandwidth reached."""
    with heavy_imports():
        from refine_cli.bench.propagate import (
            bench_bandwidth, bench_propagate, bench_refiner_propagation, default_backends,
        )
        from refine_cli.device import describe, resolve_device
    view = _view(json_out)
    out: dict[str, Any] = {}
    with cli_errors():
        where = resolve_device(device)
        if bandwidth and where.type != "cuda":
            raise UsageError("--bandwidth measures the CUDA kernels; run it on a machine with a CUDA GPU")
        dev = where.type if where.type == "cpu" else str(where)
        shape_list = [_shape(s) for s in shapes] if shapes else list(DEFAULT.kernel_shapes)
        chosen = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
        with view.status("timing the propagation kernels"):
            names = chosen or list(default_backends(dev))
            out["device"] = describe(where)
            results = bench_propagate(shape_list, names, repeats=repeats, memory=memory and dev == "cpu", device=dev)
            out["propagate"] = [asdict(r) for r in results]
            refined = bench_refiner_propagation(names, repeats=repeats, memory=memory and dev == "cpu",
                                                device=dev) if refiner else []
            out["refiner"] = [asdict(r) for r in refined]
            measured = bench_bandwidth(backends=chosen, repeats=max(repeats, 10)) if bandwidth else []
            out["bandwidth"] = [asdict(r) for r in measured]
    view.print(f"[bold]device[/]: {out['device']}", highlight=False)
    table = Table(title="One directional scan", box=box.SIMPLE_HEAD)
    for name in ("shape", "backend", "forward ms", "fwd+bwd ms", "forward peak MiB", "fwd+bwd peak MiB"):
        table.add_column(name, justify="left" if name in ("shape", "backend") else "right")
    for r in results:
        table.add_row(str(r.shape), r.backend, f"{r.forward_ms:.2f}", f"{r.forward_backward_ms:.2f}",
                      _mib(r.forward_peak_mib), _mib(r.forward_backward_peak_mib))
    view.print(table)
    if refined:
        table = Table(title="Universal refiner propagation at 512x512 (4 directions x 2 passes)", box=box.SIMPLE_HEAD)
        for name in ("method", "backend", "forward ms", "fwd+bwd ms", "forward peak MiB", "fwd+bwd peak MiB"):
            table.add_column(name, justify="left" if name in ("method", "backend") else "right")
        for r in refined:
            table.add_row(r.method, r.backend, f"{r.forward_ms:.1f}", f"{r.forward_backward_ms:.1f}",
                          _mib(r.forward_peak_mib), _mib(r.forward_backward_peak_mib))
        view.print(table)
    if measured:
        table = Table(title="Memory bandwidth of one scan", box=box.SIMPLE_HEAD)
        for name in ("shape", "dtype", "backend", "direction", "pass", "ms", "GB moved", "GB/s"):
            table.add_column(name, justify="right" if name in ("ms", "GB moved", "GB/s") else "left")
        for r in measured:
            table.add_row(str(r.shape), r.dtype, r.backend, r.direction, r.pass_, f"{r.ms:.3f}", f"{r.gigabytes:.2f}",
                          f"{r.gb_per_s:.0f}")
        view.print(table)
    _write_json(json_out, out)
