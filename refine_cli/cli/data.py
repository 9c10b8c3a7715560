"""`refine-cli data ...`: write the synthetic world, check a dataset before training, coarsen its masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from refine_cli.cli import heavy_imports
from refine_cli.cli.common import cli_errors, console, err_console
from refine_cli.cli.options import DatasetFormat, Format
from refine_cli.config import SynthConfig

app = typer.Typer(
    name="data",
    help="Datasets: write the synthetic world, check a dataset before training, coarsen its masks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

_SYNTH = SynthConfig()

OverwriteFolder = Annotated[bool, typer.Option("--overwrite/--no-overwrite",
                                               help="Write into a folder that already holds files.")]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    )


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write (VOC layout); must be new or empty.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images (train + val).")] = _SYNTH.n,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes byte-identical files.")] = _SYNTH.seed,
    size: Annotated[int, typer.Option(min=32, help="Side of square images, in pixels.")] = _SYNTH.height,
    height: Annotated[int | None, typer.Option(min=32, help="Image height (overrides --size).",
                                               rich_help_panel="Shape")] = None,
    width: Annotated[int | None, typer.Option(min=32, help="Image width (overrides --size).",
                                              rich_help_panel="Shape")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.99, help="Share of images in val.txt.")] = (
        _SYNTH.val_fraction),
    overwrite: OverwriteFolder = False,
) -> None:
    """Write the synthetic segmentation world in the VOC layout.

    Shapes are the classes, real photographs the textures; occlusion, clutter, thin bars, blur, noise and
    JPEG artefacts make it hard the way real images are.
    """
    with heavy_imports():
        from refine_cli.data.synth import SYNTH_CLASSES, generate
    with cli_errors():
        config = SynthConfig(n=n, seed=seed, height=height or size, width=width or size, val_fraction=val_fraction)
        with _progress() as progress:
            task = progress.add_task("rendering", total=n)
            summary = generate(out, config, overwrite=overwrite,
                               progress=lambda done, total: progress.update(task, completed=done))
        console.print(
            f"wrote {summary.train} training and {summary.val} validation images "
            f"({config.width}x{config.height}, {len(SYNTH_CLASSES)} classes) to {summary.out} "
            f"in {summary.seconds:.1f} s",
            highlight=False,
            markup=False,
        )


@app.command("check")
def check(
    dataset: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    format: Format = DatasetFormat.voc,
    split: Annotated[str, typer.Option(help="Split (list file) to check, e.g. train, val, train_aug.")] = "train",
    labels: Annotated[bool, typer.Option(help="Decode masks to check label values (slower).")] = True,
    decode_images: Annotated[bool, typer.Option(help="Decode every image to catch truncated files (as training "
                                                "does before it starts).")] = True,
    probs_cache: Annotated[Path | None, typer.Option(help="Also check this cache of coarse probabilities.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many problems.")] = 50,
) -> None:
    """Check a dataset before training; exit 1 on any problem.

    Reports missing or unreadable files, image/mask size mismatches and labels outside the class list.
    """
    with heavy_imports():
        from refine_cli.data.formats import open_dataset
        from refine_cli.data.validate import validate
    with cli_errors():
        data = open_dataset(dataset, format=format.value, split=split, probs_cache=probs_cache)
        with _progress() as progress:
            task = progress.add_task("checking", total=len(data))
            report = validate(data, check_labels=labels, decode_images=decode_images,
                              progress=lambda done, total: progress.update(task, completed=done))
    if report.ok:
        console.print(f"{report.checked} samples, {data.num_classes} classes: no problems", highlight=False)
        return
    count = len(report.problems)
    table = Table(title=f"{count} problem{'s' * (count != 1)} in {len(report.bad_names)} of {report.checked} samples")
    table.add_column("sample", style="bold")
    table.add_column("problem", style="red")
    table.add_column("detail", overflow="fold")
    for problem in report.problems[:limit]:
        table.add_row(escape(problem.name), problem.kind.replace("_", " "), escape(problem.detail))
    console.print(table)
    if count > limit:
        console.print(f"... and {count - limit} more (raise --limit to see them)", highlight=False)
    raise typer.Exit(1)


@app.command("coarsen")
def coarsen(
    dataset: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the coarse masks into (mirroring the dataset's image "
                                        "tree); must be new or empty.")],
    format: Format = DatasetFormat.voc,
    split: Annotated[str, typer.Option(help="Split to coarsen, e.g. train, val.")] = "val",
    stride: Annotated[int, typer.Option(min=1, help="Output stride to imitate (8, 16: a network's).")] = 8,
    upsample: Annotated[str, typer.Option(help="How the cells come back to full size: bilinear (as networks "
                                          "upsample their logits) or nearest (blocks, as a mask enlarged by pixel "
                                          "replication).")] = "bilinear",
    overwrite: OverwriteFolder = False,
) -> None:
    """Write a split's ground truth coarsened like a stride-N network's output, as coarse masks to refine.

    The one-hot labels are area-averaged over N x N cells, upsampled back (bilinearly, or by repetition) and argmaxed
    (deterministic). Two-class masks are written as 0/255 grey PNGs, others as palette PNGs; score them with
    `refine-cli evaluate --masks OUT`.
    """
    with heavy_imports():
        from refine_cli.data.coarsen import coarsen_dataset
        from refine_cli.data.formats import open_dataset
    with cli_errors():
        data = open_dataset(dataset, format=format.value, split=split)
        with _progress() as progress:
            task = progress.add_task("coarsening", total=len(data))
            summary = coarsen_dataset(data, out, stride=stride, upsample=upsample, overwrite=overwrite,
                                      progress=lambda done, total: progress.update(task, completed=done))
    console.print(f"wrote {summary.written} masks coarsened at stride {summary.stride} to {summary.out} in "
                  f"{summary.seconds:.1f} s", highlight=False, markup=False)
