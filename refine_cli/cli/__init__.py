"""The `refine-cli` command. The Typer app is `refine_cli.cli.root`; this module imports nothing heavy, so Ctrl-C
in the seconds that importing torch takes ends the command with one line instead of a traceback."""

from __future__ import annotations

import os
import sys
from typing import Any

INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


def main() -> None:
    try:
        from refine_cli.cli.root import app  # torch, the networks, Rich: seconds on a cold start
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        # Leave at once: an import cut short can leave half-initialised extension modules whose teardown at
        # normal interpreter exit may re-raise the interrupt (seen as the process killed by SIGINT, status -2).
        os._exit(INTERRUPTED)
    app()


def __getattr__(name: str) -> Any:  # `from refine_cli.cli import app`, loaded when asked for
    if name == "app":
        from refine_cli.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
