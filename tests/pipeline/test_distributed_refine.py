"""`refine-cli refine` under torchrun with two CPU processes (gloo): rank 0 claims the output folder for both
(deleting stale temporary files before either writes), each rank refines its share, rank 0 alone reports, and
files that fail leave every rank, and so torchrun, at exit status 0, with no crash report after the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "refine_cli", "refine", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_failed_files_under_torchrun_leave_no_child_failed_report(nets, tmp_path: Path):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    stale = out / "probs" / ".3.0123456789ab.part.npz"  # left by a run killed with -9
    stale.parent.mkdir(parents=True)
    stale.touch()
    summary = tmp_path / "summary.json"
    done = _torchrun(str(images), "--out", str(out), "--base", str(nets["base"]), "--refiner", str(nets["refiner"]),
                     "--device", "cpu", "--save-probs", "--json", str(summary))
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    assert "ChildFailedError" not in report and "Traceback" not in report
    assert done.stdout.count("Summary") == 1  # rank 0 alone reports
    assert "1 file(s) failed" in done.stderr and "broken.jpg" in "".join(done.stdout.split())  # folded paths
    result = json.loads(summary.read_text())
    assert (result["processed"], result["failed"], result["interrupted"]) == (6, 1, False)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{kind}/{i}.{ext}" for i in range(6)
                             for kind, ext in (("masks", "png"), ("overlays", "jpg"), ("probs", "npz")))
