"""Options several commands share."""

from __future__ import annotations

import errno

import pytest
import typer

from refine_cli.cli.common import cli_errors, refiner_side
from refine_cli.errors import UsageError


def test_refiner_side_option_maps_absent_to_the_device_default_and_0_to_full_resolution():
    assert refiner_side(None) == "auto"
    assert refiner_side(0) is None
    assert refiner_side(320) == 320


def test_errors_print_brackets_in_messages_and_paths_verbatim(capsys):
    # Rich would read "[crf]" or "[draft]" as markup tags and drop them: the message must come through whole.
    message = 'shots/[draft] a.jpg: pip install "refine-cli[crf]"'
    with pytest.raises(typer.Exit) as exit_info:
        with cli_errors():
            raise UsageError(message)
    assert exit_info.value.exit_code == UsageError.exit_code
    assert message in capsys.readouterr().err


def test_a_write_the_disk_refuses_is_one_line_and_other_os_errors_are_not_hidden(capsys):
    with pytest.raises(typer.Exit) as exit_info:
        with cli_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "out/summary.json")
    assert exit_info.value.exit_code == 1
    assert capsys.readouterr().err.strip() == ("error: cannot write out/summary.json: No space left on device; make "
                                               "room (or make it writable) and run the same command again")
    with pytest.raises(FileNotFoundError):  # a bug's traceback is not turned into a disk message
        with cli_errors():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")
