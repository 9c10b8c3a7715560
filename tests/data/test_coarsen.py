"""Ground truth coarsened like a stride-s network's output (`coarsen_labels`) and `refine-cli data coarsen`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from refine_cli import io
from refine_cli.cli import app
from refine_cli.data import open_dataset
from refine_cli.data.coarsen import coarsen_labels
from refine_cli.errors import UsageError

runner = CliRunner()


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.int64)


def test_matches_the_recipe_written_out_by_hand():
    # 4 x 6 labels, stride 2: cells of 2 x 2, class shares, bilinear back with half-pixel centres, argmax.
    labels = np.array([[0, 0, 1, 1, 2, 2],
                       [0, 0, 1, 1, 2, 2],
                       [0, 1, 1, 1, 2, 2],
                       [1, 1, 1, 1, 1, 2]])
    shares = np.zeros((3, 2, 3))
    for c in range(3):
        shares[c] = (labels == c).reshape(2, 2, 3, 2).mean(axis=(1, 3))
    up = F.interpolate(torch.from_numpy(shares)[None], size=(4, 6), mode="bilinear", align_corners=False)[0]
    expected = up.argmax(0).numpy()
    np.testing.assert_array_equal(coarsen_labels(labels, 3, 2), expected)
    assert not np.array_equal(expected, labels)  # the recipe does change this map


def test_nearest_upsampling_gives_blocks_of_cell_majorities():
    labels = np.zeros((8, 8), np.int64)
    labels[1:6, 2:7] = 1  # covers cell (0, 1) 3 of 4 pixels, cell (2, 3) 1 of 4
    blocky = coarsen_labels(labels, 2, 2, upsample="nearest")
    cells = (labels.reshape(4, 2, 4, 2).mean(axis=(1, 3)) > 0.5).astype(np.int64)
    np.testing.assert_array_equal(blocky, np.kron(cells, np.ones((2, 2), np.int64)))
    assert not np.array_equal(blocky, coarsen_labels(labels, 2, 2))
    with pytest.raises(UsageError, match="upsampling"):
        coarsen_labels(labels, 2, 2, upsample="bicubic")


def test_stride_one_and_flat_maps_are_unchanged():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (17, 23))
    np.testing.assert_array_equal(coarsen_labels(labels, 5, 1), labels)
    np.testing.assert_array_equal(coarsen_labels(np.full((30, 41), 3), 5, 8), np.full((30, 41), 3))


@pytest.mark.parametrize("stride", [8, 16])
def test_a_disc_keeps_its_place_and_loses_detail(stride: int):
    gt = _disc(240, 320, 117.3, 161.8, 70.0)
    gt[100:104, 40:300] = 1  # a 4-px bar: thinner than a cell, it should vanish
    coarse = coarsen_labels(gt, 2, stride)
    assert coarse.dtype == np.int64 and set(np.unique(coarse)) <= {0, 1}
    disc = _disc(240, 320, 117.3, 161.8, 70.0)
    changed = coarse != disc
    # Away from the bar, only pixels near the circle change, and not many of them.
    near = np.abs(np.hypot(*np.mgrid[:240, :320] - np.array([117.3, 161.8])[:, None, None]) - 70.0) <= stride
    bar_zone = np.zeros_like(changed)
    bar_zone[100 - stride : 104 + stride, 40 - stride : 300 + stride] = True
    assert not (changed & ~near & ~bar_zone).any()
    # The bar, at most half a cell thick, is gone where it runs outside the disc.
    assert coarse[100:104, 40:85].sum() == 0 and coarse[100:104, 240:300].sum() == 0


def test_ignored_pixels_add_to_no_class():
    labels = np.zeros((32, 32), np.int64)
    labels[:, 16:] = 1
    labels[:, 8:24] = 255  # a wide ignored band: its cells take their labelled pixels' classes, whole cells of it 255
    coarse = coarsen_labels(labels, 2, 4)
    assert (coarse[:, :6] == 0).all() and (coarse[:, 26:] == 1).all()
    assert (coarse == 255).any()
    # With every pixel labelled, nothing comes back unknown.
    assert not (coarsen_labels(np.where(labels == 255, 0, labels), 2, 4) == 255).any()


def test_deterministic_and_rejects_bad_input():
    labels = np.random.default_rng(1).integers(0, 3, (50, 70))
    np.testing.assert_array_equal(coarsen_labels(labels, 3, 8), coarsen_labels(labels.copy(), 3, 8))
    with pytest.raises(UsageError, match=r"0\.\.1 "):
        coarsen_labels(labels, 2, 8)
    with pytest.raises(UsageError, match="stride"):
        coarsen_labels(labels, 3, 0)
    with pytest.raises(UsageError, match="integer"):
        coarsen_labels(labels.astype(np.float32), 3, 8)


def _davis(root: Path) -> None:
    for seq in ("cows", "goat"):
        for frame in ("00000", "00003"):
            (root / "images" / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(root / "images" / seq / f"{frame}.jpg")
            io.write_binary_mask(root / "masks" / seq / f"{frame}.png", _disc(40, 56, 20, 27, 12 + int(frame)))


def test_cli_mirrors_the_davis_tree_as_binary_masks(tmp_path: Path):
    _davis(tmp_path / "davis")
    out = tmp_path / "coarse"
    result = runner.invoke(app, ["data", "coarsen", str(tmp_path / "davis"), str(out), "--format", "davis",
                                 "--split", "val", "--stride", "8"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 masks coarsened at stride 8" in result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "cows/00000.png", "cows/00003.png"]  # goat is a training sequence
    data = open_dataset(tmp_path / "davis", format="davis", split="val")
    for pair in data.pairs:
        with Image.open(out / data.relative_path(pair).with_suffix(".png")) as written:
            assert written.mode == "L"
            grey = np.asarray(written)
        assert set(np.unique(grey)) <= {0, 255}
        np.testing.assert_array_equal(grey // 255, coarsen_labels(data.read_label(pair), 2, 8))
    # A second run refuses to write over the first unless told to.
    again = runner.invoke(app, ["data", "coarsen", str(tmp_path / "davis"), str(out), "--format", "davis",
                                "--split", "val"])
    assert again.exit_code == 1 and "--overwrite" in again.output
    again = runner.invoke(app, ["data", "coarsen", str(tmp_path / "davis"), str(out), "--format", "davis",
                                "--split", "val", "--stride", "16", "--overwrite"])
    assert again.exit_code == 0, again.output


def test_cli_writes_multi_class_masks_as_palette_pngs(tmp_path: Path):
    root = tmp_path / "camvid"
    for sub in ("images", "masks"):
        (root / "val" / sub).mkdir(parents=True)
    labels = np.random.default_rng(2).integers(0, 11, (36, 48)).repeat(2, 0).repeat(2, 1)
    labels[:8] = 11  # void: the first row of 8 x 8 cells
    Image.fromarray(np.zeros((72, 96, 3), np.uint8)).save(root / "val" / "images" / "f1.png")
    Image.fromarray(labels.astype(np.uint8)).save(root / "val" / "masks" / "f1.png")
    result = runner.invoke(app, ["data", "coarsen", str(root), str(tmp_path / "out"), "--format", "camvid",
                                 "--split", "val", "--stride", "8"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "f1.png") as written:
        assert written.mode == "P"
    data = open_dataset(root, format="camvid", split="val")
    expected = coarsen_labels(data.read_label(data.pairs[0]), 11, 8)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "out" / "f1.png"), expected)
    assert (expected[:4] == 255).all() and (expected[8:] != 255).all()  # only pixels that see void cells alone


@pytest.mark.parametrize("into", ["masks", "images", "masks/cows"])
def test_cli_refuses_to_write_into_the_datasets_own_folders(tmp_path: Path, into: str):
    _davis(tmp_path / "davis")
    files = {path: path.read_bytes() for path in (tmp_path / "davis").rglob("*") if path.is_file()}
    result = runner.invoke(app, ["data", "coarsen", str(tmp_path / "davis"), str(tmp_path / "davis" / into),
                                 "--format", "davis", "--split", "all", "--stride", "8", "--overwrite"])
    assert result.exit_code == 1, result.output
    assert "holds the dataset's own files" in result.output and "choose a folder outside them" in result.output
    assert {path: path.read_bytes() for path in (tmp_path / "davis").rglob("*") if path.is_file()} == files
    # A new folder beside them inside the dataset's root is fine.
    beside = runner.invoke(app, ["data", "coarsen", str(tmp_path / "davis"), str(tmp_path / "davis" / "coarse8"),
                                 "--format", "davis", "--split", "all", "--stride", "8"])
    assert beside.exit_code == 0, beside.output
