"""The `refine-cli` command. The Typer app is `refine_cli.cli.root`; no command module imports torch or the library
before a command runs, so `--help` and usage errors answer at once, and Ctrl-C in the seconds those imports take
ends the command with one line instead of a traceback (`heavy_imports`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


def main() -> None:
    from refine_cli.allocator import keep_freed_memory

    keep_freed_memory()  # before torch allocates anything: the per-image maps are then reused, not faulted in again
    with heavy_imports():
        from refine_cli.cli.root import app
    app()


@contextlib.contextmanager
def heavy_imports() -> Iterator[None]:
    """Around a command's imports of torch and the library (seconds on a cold start): Ctrl-C there ends the process
    with one line and 130 instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        # Leave at once: an import cut short can leave half-initialised extension modules whose teardown at
        # normal interpreter exit may re-raise the interrupt (seen as the process killed by SIGINT, status -2).
        os._exit(INTERRUPTED)


def __getattr__(name: str) -> Any:  # `from refine_cli.cli import app`, loaded when asked for
    if name == "app":
        from refine_cli.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
