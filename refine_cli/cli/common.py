"""What every command shares: the Rich consoles and the one place domain errors become exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from refine_cli.errors import RefineError

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Translate a `RefineError` into one red line on stderr and its exit code."""
    try:
        yield
    except RefineError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
