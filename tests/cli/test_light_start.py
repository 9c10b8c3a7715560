"""`refine-cli --help`, every command's --help and usage errors answer without importing torch (or numpy, OpenCV,
the networks): each is run in a fresh interpreter that then checks what it imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "cv2", "refine_cli.pipeline", "refine_cli.models", "refine_cli.train")

# Runs every command path the app has with --help, then each usage error below, through Typer's runner; stops at the
# first run after which a heavy module is loaded, naming it.
SCRIPT = """
import sys
import typer.main
from typer.testing import CliRunner
from refine_cli.cli.root import app

heavy = {heavy!r}
usage_errors = {usage_errors!r}

def paths(command, prefix):
    yield prefix
    for name, sub in sorted(getattr(command, "commands", {{}}).items()):
        yield from paths(sub, prefix + [name])

runner = CliRunner()
helps = [[*p, "--help"] for p in paths(typer.main.get_command(app), [])]
print("\\n".join(" ".join(args) for args in helps))
for args, code in [(args, 0) for args in helps] + usage_errors:
    result = runner.invoke(app, args)
    assert result.exit_code == code, (args, result.exit_code, result.output)
    loaded = [m for m in heavy if m in sys.modules]
    assert not loaded, f"refine-cli {{' '.join(args)}} imported {{', '.join(loaded)}}"
"""

USAGE_ERRORS = [
    (["--no-such-option"], 2),
    (["refine", "--no-such-option"], 2),
    (["refine", "photo.jpg"], 2),  # --out missing
    (["segment"], 2),  # inputs missing
    (["evaluate", "--split", "val"], 2),  # --data missing
    (["bench", "ops", "--repeats", "0"], 2),
    (["train", "base", "--amp", "fp8"], 2),
    (["train", "refiner", "--out", "run"], 2),  # --data missing
    (["data", "synth"], 2),
    (["weights", "fetch"], 2),
]

COMMANDS = {"refine", "segment", "evaluate", "bench pipeline", "bench refiner-vs-crf", "bench scaling", "bench ops",
            "train base", "train refiner", "data synth", "data check", "data coarsen", "weights list",
            "weights fetch", "weights import", "weights verify", "weights info"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_help_and_usage_errors_import_no_torch():
    proc = _run("-c", SCRIPT.format(heavy=HEAVY, usage_errors=USAGE_ERRORS))
    assert proc.returncode == 0, proc.stderr
    shown = {line.removesuffix(" --help") for line in proc.stdout.splitlines()}
    assert COMMANDS <= shown, COMMANDS - shown


def test_the_installed_entry_point_answers_help_without_torch():
    proc = _run("-X", "importtime", "-m", "refine_cli", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "refine_cli.cli.root" in imported  # the measure saw the app being built
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_ctrl_c_while_a_command_imports_the_library_prints_no_traceback(tmp_path: Path):
    # The command's import of the library raises the interrupt, as Ctrl-C in those seconds would.
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def cut(name, *args, **kwargs):\n"
        "    if name == 'refine_cli.pipeline':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = cut\n"
        f"sys.argv = ['refine-cli', 'refine', 'photo.jpg', '--out', {str(tmp_path / 'out')!r}]\n"
        "from refine_cli.cli import main\n"
        "main()\n"
    )
    proc = _run("-c", script)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == "interrupted"
