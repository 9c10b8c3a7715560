"""The root `refine-cli` Typer app: thin commands; every one calls the library and renders with Rich."""

from __future__ import annotations

import typer

from refine_cli.cli.bench import app as bench_app
from refine_cli.cli.data import app as data_app
from refine_cli.cli.evaluate import evaluate_command
from refine_cli.cli.refine import refine, segment
from refine_cli.cli.train import app as train_app
from refine_cli.cli.weights import weights_app

app = typer.Typer(
    name="refine-cli",
    help="Sharper segmentation masks: a base segmenter plus a learned spatial propagation refiner.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

RUN, MEASURE, LEARN = "Refine", "Measure", "Train and manage"
app.command(rich_help_panel=RUN)(refine)
app.command(rich_help_panel=RUN)(segment)
app.command("evaluate", rich_help_panel=MEASURE)(evaluate_command)
app.add_typer(bench_app, name="bench", rich_help_panel=MEASURE)
app.add_typer(train_app, name="train", rich_help_panel=LEARN)
app.add_typer(data_app, name="data", rich_help_panel=LEARN)
app.add_typer(weights_app, name="weights", rich_help_panel=LEARN,
              help="List, download, import, verify and inspect checkpoints.")


@app.callback()
def _root() -> None:
    """Sharper segmentation masks: a base segmenter plus a learned spatial propagation refiner."""

