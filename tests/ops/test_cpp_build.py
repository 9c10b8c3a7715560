"""Building the C++ kernels never waits without end: a `lock` file that a killed build left is cleared, and a build
that another live process holds is waited for a bounded time, after which the PyTorch kernels run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from refine_cli.ops import cpp


@pytest.mark.slow
def test_a_lock_left_by_a_killed_build_is_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # torch's own guard is a bare file; a build killed with -9 leaves it and every later build used to wait on it
    # forever (a CI run stalled 90 minutes on one). No compiler here, so the build itself fails fast.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = cpp.build_directory()
    folder.mkdir(parents=True)
    (folder / "lock").touch()
    script = textwrap.dedent(
        """
        import logging
        from refine_cli.ops import cpp
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        result = cpp.load()
        print("OK" if result.ok else "FAILED:", result.error)
        """
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "left by a C++ kernel build that was killed" in done.stderr
    assert done.stdout.startswith("FAILED:") and "another process" not in done.stdout  # the compiler error
    assert not (folder / "lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the holder below takes a POSIX flock")
def test_a_live_build_elsewhere_is_waited_for_a_bounded_time(tmp_path: Path):
    folder = tmp_path / "ext"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(folder) + '.build-lock'!r}, 'a+b')\n"
            "fcntl.flock(f.fileno(), fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        result = cpp._build(folder, wait_s=0.5)
        assert time.monotonic() - start < 30
        assert not result.ok and "another process has been building" in result.error
    finally:
        holder.kill()  # kill -9: the operating system drops its lock
        holder.wait()
    with cpp._sole_builder(folder, wait_s=10):  # free again at once
        pass
