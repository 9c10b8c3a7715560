"""The Triton kernels' parity tests (triton_interpret_cases.py), run on CPU by the Triton interpreter in a fresh
process: TRITON_INTERPRET=1 only takes effect when set before triton is first imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton not installed (pip install 'refine-cli[gpu]')")

CASES = Path(__file__).with_name("triton_interpret_cases.py")


@pytest.mark.slow  # the interpreter runs every program in Python: about 15 s here
def test_triton_kernels_match_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]
