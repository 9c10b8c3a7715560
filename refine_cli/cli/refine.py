"""`refine-cli refine` and `refine-cli segment`: folder runs through `Refiner`, with a Rich progress bar and a
summary table. Exit codes: 0 all files done (or already done), 1 some failed (0 under torchrun, see `_exit_code`),
2 usage error, 130 interrupted (after the summary so far)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from refine_cli.cli import INTERRUPTED, heavy_imports
from refine_cli.cli.common import cli_errors, console, err_console, refiner_side
from refine_cli.cli.options import (
    NETWORKS, OUTPUTS, RUN, BatchSize, Compile, DecodeWorkers, Device, JsonOut, Masks, NumClasses, PrecisionOpt,
    RefinerSide,
)
from refine_cli.config import IOConfig, PipelineConfig, Precision

if TYPE_CHECKING:
    from refine_cli import io
    from refine_cli.pipeline import FileEvent, FolderOptions, FolderSummary, Refiner
    from refine_cli.distributed import DistInfo

DEFAULT = PipelineConfig()

Inputs = Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder; the input tree is mirrored inside it.",
                                      file_okay=False, rich_help_panel=OUTPUTS)]
Base = Annotated[str, typer.Option("--base", help="Base segmenter: a checkpoint name or path ('default': bundled).",
                                   rich_help_panel=NETWORKS)]
Overlay = Annotated[bool, typer.Option("--overlay/--no-overlay", help="Also write overlays/<path>.jpg.",
                                       rich_help_panel=OUTPUTS)]
SaveProbs = Annotated[bool, typer.Option("--save-probs", help="Also write probs/<path>.npz (float16).",
                                         rich_help_panel=OUTPUTS)]
SaveCoarse = Annotated[bool, typer.Option("--save-coarse", help="Also write the coarse mask, coarse/<path>.png.",
                                          rich_help_panel=OUTPUTS)]
OverwriteOutputs = Annotated[bool, typer.Option("--overwrite", help="Redo inputs whose outputs exist (default: skip "
                                                "them, so a stopped run resumes).", rich_help_panel=OUTPUTS)]
MaxSide = Annotated[int, typer.Option("--max-side", min=16, help="Images with a longer side are decoded scaled down "
                                      "to it (their masks still come back at full size).", rich_help_panel=RUN)]
MaxMegapixels = Annotated[float, typer.Option(
    "--max-megapixels", min=1e-6, rich_help_panel=RUN,
    help="Image and mask files with more pixels are refused before decoding (a guard against decompression bombs); "
    "raise it for trusted files that large.")]
MAX_MEGAPIXELS = IOConfig().max_image_pixels / 1e6


class _Speed(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s", style="progress.data.speed")


def _summary_table(summary: FolderSummary, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("processed", str(summary.processed))
    table.add_row("skipped (already done)", str(summary.skipped))
    table.add_row("failed", f"[red]{len(summary.failed)}[/]" if summary.failed else "0")
    if summary.left_out:
        table.add_row("left out on purpose", ", ".join(f"{why}: {n}" for why, n in summary.left_out.items()))
    table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("throughput", f"{summary.images_per_s:.2f} img/s")
    table.add_row("device", summary.device)
    return table


def _failures_table(summary: FolderSummary, limit: int = 20) -> Table:
    table = Table(title="Files that could not be refined", box=box.SIMPLE_HEAD, title_style="red")
    table.add_column("file", overflow="fold")
    table.add_column("reason", overflow="fold")
    for path, reason in summary.failed[:limit]:
        table.add_row(escape(path), escape(reason))
    if len(summary.failed) > limit:
        table.add_row(f"... and {len(summary.failed) - limit} more", "(all of them are in --json)")
    return table


def _run(
    inputs: list[str], out: Path, *, base: str, refiner: str, masks: Path | None, num_classes: int | None,
    overlay: bool, save_probs: bool, save_coarse: bool, overwrite: bool, json_out: str | None, device: str,
    batch_size: int | None, precision: str, max_side: int, side: int | None, compile: bool, workers: int,
    max_megapixels: float,
) -> None:
    with heavy_imports():
        from refine_cli import io
        from refine_cli.pipeline import FolderOptions, FolderSummary, Refiner, output_folders
        from refine_cli.pipeline.folder import refuse_masks_among_outputs
        from refine_cli import distributed
        from refine_cli.pipeline.distributed import claim_for_run, gather_summaries
    view: Console = err_console if json_out == "-" else console
    summary = FolderSummary()
    with cli_errors():
        info = distributed.setup(device)
        shard = info if info.enabled else None
        json_path = None if json_out in (None, "-") else io.check_writable_file(json_out, "--json")
        try:
            listing = io.list_inputs(inputs, exclude=output_folders(out))
            if masks is not None:  # before the networks load: refused at once
                refuse_masks_among_outputs(masks, out)
            with claim_for_run(out, info, "--out"):
                try:
                    model = Refiner(
                        base=None if masks is not None else base,
                        refiner=refiner,
                        device=str(info.device) if shard is not None else device,
                        batch_size=batch_size,
                        precision=precision,
                        max_side=max_side,
                        max_pixels=round(max_megapixels * 1e6),
                        refiner_side=refiner_side(side),
                        compile=compile,
                        workers=workers,
                    )
                    options = FolderOptions(overwrite=overwrite, overlay=overlay, save_probs=save_probs,
                                            save_coarse=save_coarse)
                    _refine_all(model, listing, out, summary, view, shard, masks=masks, num_classes=num_classes,
                                options=options)
                except KeyboardInterrupt:
                    summary.interrupted = True
                # Every rank is done writing when this returns: only then is the claim let go.
                summary = gather_summaries(summary, info)
        except distributed.StoppedByRankZero as exc:
            raise typer.Exit(exc.exit_code) from None  # rank 0 reports the reason
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            distributed.teardown(info)
    if shard is not None and shard.rank != 0:
        raise typer.Exit(_exit_code(summary, shard))
    title = ("Interrupted: summary so far" if summary.interrupted
             else "Stopped: summary so far" if summary.stopped else "Summary")
    view.print(_summary_table(summary, title))
    if summary.failed:
        view.print(_failures_table(summary))
        if shard is not None and not summary.interrupted:
            err_console.print(f"[bold red]{len(summary.failed)} file(s) failed[/] (listed above and under \"failed\" "
                              "in --json); the exit status stays 0 under torchrun, which reports any other as a "
                              "crash", highlight=False, soft_wrap=True)
    if summary.stopped:
        err_console.print(f"[bold red]error:[/] {escape(summary.stopped)}", highlight=False, soft_wrap=True)
    if json_out is not None:
        text = json.dumps(summary.to_dict(), indent=1)
        if json_path is None:
            typer.echo(text)
        else:
            with cli_errors():
                io.atomic_write(json_path, lambda f: f.write(text.encode()))
    raise typer.Exit(_exit_code(summary, shard))


def _exit_code(summary: FolderSummary, shard: DistInfo | None) -> int:
    """130 after Ctrl-C; 1 when files failed, except under torchrun (every rank gives the same code there, and any
    but 0 makes torchrun print a crash report after the summary); else 0."""
    if summary.interrupted:
        return INTERRUPTED
    return 1 if (summary.failed or summary.stopped) and shard is None else 0


def _refine_all(
    model: Refiner, listing: io.InputListing, out: Path, summary: FolderSummary, view: Console, shard: DistInfo | None,
    *, masks: Path | None, num_classes: int | None, options: FolderOptions,
) -> None:
    """Run the listed inputs through `model` into `out`, adding every file's outcome to `summary` (after Ctrl-C too:
    the writes already started finish and count)."""
    from refine_cli.ops import available_backends
    from refine_cli.pipeline.folder import OutputsBlocked, drain_interrupted

    summary.device = model.describe_device()
    where = f" (rank {shard.rank} of {shard.world_size})" if shard is not None else ""
    view.print(f"[bold]device[/]: {summary.device}{where}", highlight=False)
    if model.refiner is not None:
        with view.status("preparing the propagation kernels (the C++ one is compiled on first use, ~20 s)"):
            available_backends(model.device)
    events = model.refine_items(listing, out, masks_dir=masks, num_classes=num_classes, options=options,
                                shard=(shard.rank, shard.world_size) if shard is not None else None)
    mine = listing.shard(shard.rank, shard.world_size) if shard is not None else listing
    total, summary.left_out = len(mine), dict(mine.left_out)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Speed(), TimeRemainingColumn())
    with Progress(*columns, console=view, transient=True, disable=shard is not None and shard.rank != 0) as bar:
        task = bar.add_task("refining" if model.refiner is not None else "segmenting", total=total)

        def record(event: FileEvent) -> None:
            summary.add(event)
            if event.status == "skipped":  # skipped files cost nothing: they stay out of the speed estimate
                bar.update(task, total=bar.tasks[0].total - 1)
            else:
                bar.advance(task)

        try:
            for event in events:
                record(event)
        except OutputsBlocked as exc:  # its writes already started were reported before it was raised
            summary.stopped = str(exc)
        except KeyboardInterrupt:
            summary.interrupted = True
            for event in drain_interrupted(events):
                record(event)
        finally:
            summary.seconds = time.perf_counter() - start


def refine(
    inputs: Inputs, out: OutDir, base: Base = "default",
    refiner: Annotated[str, typer.Option("--refiner", help="SPN refiner: a checkpoint name or path ('default': "
                                         "the bundled colour-gated refiner; 'none': the base output).",
                                         rich_help_panel=NETWORKS)] = "default",
    masks: Masks = None, num_classes: NumClasses = None, overlay: Overlay = True, save_probs: SaveProbs = False,
    save_coarse: SaveCoarse = False, overwrite: OverwriteOutputs = False, json_out: JsonOut = None,
    device: Device = "auto", batch_size: BatchSize = None, precision: PrecisionOpt = Precision.fp32,
    max_side: MaxSide = DEFAULT.max_side, side: RefinerSide = None, compile: Compile = False,
    workers: DecodeWorkers = DEFAULT.decode_workers, max_megapixels: MaxMegapixels = MAX_MEGAPIXELS,
) -> None:
    """Refine segmentation masks: base segmenter (or --masks) then the SPN refiner, over files and folders."""
    _run(inputs, out, base=base, refiner=refiner, masks=masks, num_classes=num_classes, overlay=overlay,
         save_probs=save_probs, save_coarse=save_coarse, overwrite=overwrite, json_out=json_out, device=device,
         batch_size=batch_size, precision=precision.value, max_side=max_side, side=side, compile=compile,
         workers=workers, max_megapixels=max_megapixels)


def segment(
    inputs: Inputs, out: OutDir, base: Base = "default", overlay: Overlay = True, save_probs: SaveProbs = False,
    overwrite: OverwriteOutputs = False, json_out: JsonOut = None, device: Device = "auto",
    batch_size: BatchSize = None, precision: PrecisionOpt = Precision.fp32, max_side: MaxSide = DEFAULT.max_side,
    compile: Compile = False, workers: DecodeWorkers = DEFAULT.decode_workers,
    max_megapixels: MaxMegapixels = MAX_MEGAPIXELS,
) -> None:
    """Segment images with the base segmenter only (no refiner): the same outputs as `refine`."""
    _run(inputs, out, base=base, refiner="none", masks=None, num_classes=None, overlay=overlay,
         save_probs=save_probs, save_coarse=False, overwrite=overwrite, json_out=json_out, device=device,
         batch_size=batch_size, precision=precision.value, max_side=max_side, side=None, compile=compile,
         workers=workers, max_megapixels=max_megapixels)
