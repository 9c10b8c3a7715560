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


def main() -> None:
    app()
