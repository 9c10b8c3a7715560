"""The `refine-cli` command: a thin Typer app; every command calls the library and renders with Rich."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="refine-cli",
    help="Sharper segmentation masks: a base segmenter plus a learned spatial propagation refiner.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Sharper segmentation masks: a base segmenter plus a learned spatial propagation refiner."""


from refine_cli.cli.refine import refine, segment  # noqa: E402
app.command(rich_help_panel="Run")(refine)
app.command(rich_help_panel="Run")(segment)
from refine_cli.cli.evaluate import evaluate_command  # noqa: E402
app.command("evaluate", rich_help_panel="Measure")(evaluate_command)
from refine_cli.cli.weights import weights_app  # noqa: E402  (sub-apps register after the root app exists)
app.add_typer(weights_app, name="weights", help="List, download, import, verify and inspect checkpoints.")
from refine_cli.cli.data import app as data_app  # noqa: E402
app.add_typer(data_app, name="data")
from refine_cli.cli.train import app as train_app  # noqa: E402
app.add_typer(train_app, name="train")
from refine_cli.cli.bench import app as bench_app  # noqa: E402
app.add_typer(bench_app, name="bench")

def main() -> None:
    app()
