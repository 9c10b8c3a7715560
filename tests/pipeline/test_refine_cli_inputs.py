"""`refine-cli refine` on awkward inputs: an output folder inside the input folder, folders that cannot be read,
links and hidden files, coarse masks with unknown pixels or hundreds of classes, tiny and huge images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from refine_cli import io
from refine_cli.cli import app

runner = CliRunner()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def refine(nets: dict[str, Path], *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["refine", *args, "--base", str(nets["base"]), "--refiner", str(nets["refiner"]),
                                 "--device", "cpu", "--json", "-"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}


def test_out_inside_input_is_never_read(nets, tmp_path: Path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(4):
        Image.fromarray(_rgb(24, 32, i)).save(root / f"{i}.png")
    out = root / "results"
    runs = [refine(nets, str(root), "--out", str(out), "--save-probs", "--save-coarse") for _ in range(3)]
    assert [(code, s["processed"], s["skipped"]) for code, s in runs] == [(0, 4, 0), (0, 0, 4), (0, 0, 4)]
    assert runs[1][1]["left_out"] == {"output folder": 4}
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{kind}/{i}.{ext}" for i in range(4)
                             for kind, ext in (("masks", "png"), ("overlays", "jpg"), ("probs", "npz"),
                                               ("coarse", "png")))


def test_unreadable_folder_fails_by_name_and_skips_are_counted(nets, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    Image.fromarray(_rgb(24, 32)).save(root / "a.png")
    Image.fromarray(_rgb(24, 32)).save(root / "locked" / "b.png")
    Image.fromarray(_rgb(24, 32)).save(root / ".hidden.png")
    (tmp_path / "elsewhere").mkdir()
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    real = os.scandir

    def scandir(path: object = ".") -> object:  # what a user without read permission meets (root reads anything)
        if Path(os.fspath(path)).resolve() == (root / "locked").resolve():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(io.os, "scandir", scandir)
    code, summary = refine(nets, str(root), "--out", str(tmp_path / "out"))
    assert code == 1 and (summary["processed"], summary["failed"]) == (1, 1)
    assert summary["failures"] == [{"path": str(root / "locked"),
                                    "reason": f"cannot read folder '{root / 'locked'}': permission denied"}]
    assert summary["left_out"] == {"hidden": 1, "symlinked folder": 1}
    table = runner.invoke(app, ["refine", str(root), "--out", str(tmp_path / "out"), "--base", str(nets["base"]),
                                "--refiner", str(nets["refiner"]), "--device", "cpu"])
    assert "left out on purpose" in table.output and "hidden: 1" in table.output
    assert "permission denied" in table.output
