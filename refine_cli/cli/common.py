"""What every command shares: the Rich consoles and the one place domain errors become exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape

from refine_cli.cli import INTERRUPTED
from refine_cli.errors import RefineError, refused_for_good

console = Console()
err_console = Console(stderr=True)


def refiner_side(value: int | None) -> int | None | Literal["auto"]:
    """--refiner-side as `Refiner` takes it: absent -> "auto" (the device's default), 0 -> None (full resolution)."""
    if value is None:
        return "auto"
    return value or None


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Translate a `RefineError` into one red line on stderr and its exit code, a write the disk refuses for good
    (full, quota, read-only) into one line and 1, and Ctrl-C into one line and 130 (Click would print "Aborted!"
    and exit 1)."""
    try:
        yield
    except RefineError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        refused = refused_for_good(exc)
        if refused is None:
            raise
        where = f" {refused.filename}" if refused.filename else ""
        err_console.print(f"[bold red]error:[/] cannot write{escape(where)}: {escape(refused.strerror or str(refused))};"
                          " make room (or make it writable) and run the same command again", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(RefineError.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[bold yellow]interrupted[/]", highlight=False)
        raise typer.Exit(INTERRUPTED) from None
