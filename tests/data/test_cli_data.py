"""`refine-cli data synth` and `refine-cli data check` through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from refine_cli.cli import app

runner = CliRunner()


def test_synth_writes_a_world_and_check_passes(tmp_path: Path):
    out = tmp_path / "world"
    result = runner.invoke(app, ["data", "synth", str(out), "--n", "5", "--seed", "3", "--height", "40",
                                 "--width", "48", "--val-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 training and 1 validation images (48x40" in result.output
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 5
    with Image.open(out / "SegmentationClass" / "synth_000000.png") as mask:
        assert mask.mode == "P" and mask.size == (48, 40)
    result = runner.invoke(app, ["data", "check", str(out), "--format", "voc", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "1 samples, 8 classes: no problems" in result.output


def test_synth_refuses_a_non_empty_folder(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["data", "synth", str(tmp_path), "--n", "1", "--size", "32"])
    assert result.exit_code == 2  # the command must change: a usage error
    assert "not empty" in result.output and "--overwrite" in result.output
    result = runner.invoke(app, ["data", "synth", str(tmp_path), "--n", "1", "--size", "32", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_check_lists_problems_and_exits_1(tmp_path: Path):
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    for name in ("ok", "wrong_size", "no_mask"):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.ones((6, 6), np.uint8)).save(tmp_path / "masks" / "ok.png")
    Image.fromarray(np.ones((5, 6), np.uint8)).save(tmp_path / "masks" / "wrong_size.png")
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--format", "folders"])
    assert result.exit_code == 1
    assert "2 problems in 2 of 3 samples" in result.output
    assert "wrong_size" in result.output and "size mismatch" in result.output
    assert "no_mask" in result.output and "missing mask" in result.output


def test_check_errors_are_one_line(tmp_path: Path):
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--format", "voc"])
    assert result.exit_code == 2  # no such split: a usage error
    assert "error:" in result.output and "no list for split 'train'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--format", "coco"])
    assert result.exit_code == 2


def test_an_unknown_split_or_dataset_folder_is_a_usage_error(tmp_path: Path):
    out = tmp_path / "synth"
    assert runner.invoke(app, ["data", "synth", str(out), "--n", "2", "--size", "32"]).exit_code == 0
    for args, said in ((["--split", "nosuch"], "no list for split 'nosuch'"), ([], "")):
        target = out if args else tmp_path / "nowhere"
        result = runner.invoke(app, ["data", "check", str(target), "--format", "voc", *args])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and said in result.output and "Traceback" not in result.output
