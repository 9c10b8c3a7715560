"""`validate` finds each kind of bad pair by name; `ensure_valid` raises or skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_cli.data import FolderDataset, ProbsCache, ensure_valid, validate
from refine_cli.errors import DataError


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    """Folders with two good pairs and one of each problem."""
    (tmp_path / "classes.txt").write_text("background\nthing\nother\n")
    rgb = np.zeros((8, 10, 3), np.uint8)
    good = np.zeros((8, 10), np.uint8)
    good[2:5, 3:6] = 2
    good[0] = 255  # ignore is fine
    for name in ("good1", "good2", "nomask", "small", "badlabel", "broken"):
        _write(tmp_path / "images" / f"{name}.png", rgb)
    for name in ("good1", "good2"):
        _write(tmp_path / "masks" / f"{name}.png", good)
    _write(tmp_path / "masks" / "small.png", good[:6])
    bad = good.copy()
    bad[7, 9] = 7
    bad[6, 0] = 3
    _write(tmp_path / "masks" / "badlabel.png", bad)
    (tmp_path / "masks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _write(tmp_path / "masks" / "orphan.png", good)
    return tmp_path


def test_each_problem_is_reported_by_name(messy: Path):
    report = validate(FolderDataset.from_root(messy), workers=2)
    assert report.checked == 6 and not report.ok
    kinds = {p.name: p.kind for p in report.problems}
    assert kinds == {"nomask": "missing_mask", "small": "size_mismatch", "badlabel": "bad_labels",
                     "broken": "unreadable", "orphan": "missing_image"}
    detail = {p.name: p.detail for p in report.problems}
    assert "3, 7" in detail["badlabel"] and "0..2" in detail["badlabel"]
    assert "10x8" in detail["small"] and "10x6" in detail["small"]


def test_labels_are_not_decoded_when_asked(messy: Path):
    report = validate(FolderDataset.from_root(messy), check_labels=False)
    assert "badlabel" not in report.bad_names and "small" in report.bad_names


def test_ensure_valid_raises_with_the_first_names_and_the_count(messy: Path):
    data = FolderDataset.from_root(messy)
    with pytest.raises(DataError, match=r"5 of 6 samples have problems") as info:
        ensure_valid(data)
    assert "orphan" in str(info.value) and "skip_bad" in str(info.value)


def test_skip_bad_keeps_the_good_pairs(messy: Path):
    data = FolderDataset.from_root(messy)
    kept = ensure_valid(data, skip_bad=True)
    assert kept.names == ["good1", "good2"] and len(data) == 6
    assert validate(kept).ok
    assert kept[1].label.max() == 255


def test_missing_cached_probabilities_are_a_problem(messy: Path):
    cache = ProbsCache(messy / "cache")
    cache.save("good1", np.full((3, 8, 10), 1 / 3, np.float32))
    data = FolderDataset.from_root(messy, probs_cache=cache)
    kept = data.without(["nomask", "small", "badlabel", "broken"])
    report = validate(kept)
    assert [(p.name, p.kind) for p in report.problems] == [("good2", "missing_probs")]


def test_exif_rotated_photos_are_checked_as_displayed(tmp_path: Path):
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    stored = Image.fromarray(np.zeros((8, 10, 3), np.uint8))  # 10 wide, 8 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": shown 8 wide, 10 high
    (tmp_path / "images").mkdir()
    stored.save(tmp_path / "images" / "phone.jpg", exif=exif)
    _write(tmp_path / "masks" / "phone.png", np.ones((10, 8), np.uint8))  # drawn on the displayed photo
    data = FolderDataset.from_root(tmp_path)
    assert validate(data).ok
    sample = data[0]
    assert sample.image.shape == (3, 10, 8) and sample.label.shape == (10, 8)


def _truncated_jpeg(path: Path) -> None:
    """A JPEG cut in half: its header (and size) is sound, its pixels are not all there."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")  # start of the compressed pixels: keep every header before it
    path.write_bytes(data[: scan + (len(data) - scan) // 2])


def test_skip_bad_drops_a_truncated_jpeg(messy: Path):
    _truncated_jpeg(messy / "images" / "cut.jpg")
    Image.open(messy / "masks" / "good1.png").save(messy / "masks" / "cut.png")
    data = FolderDataset.from_root(messy)
    kept = ensure_valid(data, skip_bad=True)
    assert kept.names == ["good1", "good2"]
    with pytest.raises(DataError, match="cut"):
        ensure_valid(data)
    for i in range(len(kept)):  # every kept pair reads: training cannot stop on one later
        assert kept[i].image.shape[-2:] == (8, 10)
