"""The VOC (and SBD-aug), Helen and folder layouts on tiny datasets written here, and the probability cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refine_cli.data import FolderDataset, HelenFaces, ProbsCache, VOCSegmentation, open_dataset
from refine_cli.data.base import read_classes_file
from refine_cli.data.helen import HELEN_CLASSES
from refine_cli.errors import DataError, UnknownNameError
from refine_cli.labels import VOC_CLASSES, voc_palette

FLAT_PALETTE = [v for rgb in voc_palette() for v in rgb]


def _image(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _palette_mask(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(FLAT_PALETTE)
    img.save(path)


def _grey_mask(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)


def _label(h: int, w: int, values: tuple[int, ...]) -> np.ndarray:
    label = np.zeros((h, w), np.uint8)
    for i, v in enumerate(values):
        label[i * 3 : i * 3 + 3] = v
    return label


def test_voc_layout(tmp_path: Path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    labels = {"2007_000001": _label(20, 24, (0, 15, 255)), "2007_000002": _label(18, 16, (0, 1, 20))}
    for name, label in labels.items():
        _image(root / "JPEGImages" / f"{name}.jpg", *label.shape)
        _palette_mask(root / "SegmentationClass" / f"{name}.png", label)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n2007_000002\n")
    data = VOCSegmentation(tmp_path / "VOCdevkit", "train")  # the devkit folder is accepted too
    assert data.classes == VOC_CLASSES and len(data.palette) == 21 and len(data) == 2
    sample = data[1]
    assert sample.name == "2007_000002" and sample.probs is None
    assert sample.image.shape == (3, 18, 16) and sample.image.dtype == torch.uint8
    assert sample.label.dtype == torch.int64
    assert torch.equal(sample.label, torch.from_numpy(labels["2007_000002"]).long())
    assert torch.equal(data[0].label.unique(), torch.tensor([0, 15, 255]))
    with pytest.raises(DataError, match="no list for split 'val'"):
        VOCSegmentation(root, "val")


def test_voc_sbd_aug_layout_with_deeplab_lists(tmp_path: Path):
    root = tmp_path
    label = _label(12, 12, (0, 7))
    _image(root / "JPEGImages" / "2008_000005.jpg", 12, 12)
    _grey_mask(root / "SegmentationClassAug" / "2008_000005.png", label)  # grey-level index PNG
    (root / "list").mkdir()
    (root / "list" / "train_aug.txt").write_text("/JPEGImages/2008_000005.jpg /SegmentationClassAug/2008_000005.png\n")
    data = VOCSegmentation(root, "train_aug")
    assert data.aug and data.names == ["2008_000005"]
    assert data.pairs[0].masks[0].parent.name == "SegmentationClassAug"
    assert torch.equal(data[0].label, torch.from_numpy(label).long())


def _helen_original(root: Path) -> dict[str, np.ndarray]:
    """Two faces in the SmithCVPR2013_dataset_resized layout; returns the expected labels."""
    expected = {}
    rng = np.random.default_rng(1)
    for i, name in enumerate(["100032540_1", "10405146_1"]):
        h, w = 10, 14
        _image(root / "images" / f"{name}.jpg", h, w, seed=i)
        maps = rng.integers(0, 256, (11, h, w)).astype(np.uint8)
        maps[:, 0, 0] = 0  # an all-zero pixel: background
        for k in range(11):
            (root / "labels" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(maps[k]).save(root / "labels" / name / f"{name}_lbl{k:02d}.png")
        expected[name] = np.argmax(maps, 0)
    (root / "exemplars.txt").write_text("1 , 100032540_1\n")
    (root / "testing.txt").write_text("1 , 10405146_1\n")
    return expected


def test_helen_original_layout(tmp_path: Path):
    expected = _helen_original(tmp_path)
    train = HelenFaces(tmp_path, "train")
    assert train.classes == HELEN_CLASSES and len(train.classes) == 11 and train.per_class_maps
    assert train.names == ["100032540_1"]
    sample = train[0]
    assert torch.equal(sample.label, torch.from_numpy(expected["100032540_1"]).long())
    assert sample.label[0, 0] == 0
    assert HelenFaces(tmp_path, "test").names == ["10405146_1"]
    with pytest.raises(DataError, match="tuning.txt"):
        HelenFaces(tmp_path, "val")


def test_helen_label_map_layout(tmp_path: Path):
    label = _label(9, 9, (10, 4, 1))
    _image(tmp_path / "images" / "face_a.png", 9, 9)
    _palette_mask(tmp_path / "labels" / "face_a.png", label)
    data = HelenFaces(tmp_path, "all")
    assert not data.per_class_maps and data.names == ["face_a"]
    assert torch.equal(data[0].label, torch.from_numpy(label).long())


def test_folders_pair_by_stem_with_palette_and_rgb_masks(tmp_path: Path):
    (tmp_path / "classes.txt").write_text("background 0 0 0\nroad #ff0000\ncar 0 0 255\n")
    label = _label(9, 12, (0, 1, 2))
    _image(tmp_path / "images" / "a.JPG", 9, 12)
    _grey_mask(tmp_path / "masks" / "a.png", label)
    _image(tmp_path / "images" / "b.png", 9, 12, seed=2)
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)], np.uint8)[label]
    Image.fromarray(colours).save(tmp_path / "masks" / "b.png")  # an RGB mask, mapped through the palette
    data = FolderDataset.from_root(tmp_path)
    assert data.classes == ("background", "road", "car")
    assert data.palette == ((0, 0, 0), (255, 0, 0), (0, 0, 255))
    assert data.names == ["a", "b"]
    assert torch.equal(data[0].label, torch.from_numpy(label).long())
    assert torch.equal(data[1].label, torch.from_numpy(label).long())
    assert open_dataset(tmp_path, format="folders").names == ["a", "b"]
    with pytest.raises(UnknownNameError, match="folders, helen, voc"):
        open_dataset(tmp_path, format="coco")


def test_folders_need_a_classes_file(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="classes.txt is missing"):
        FolderDataset.from_root(tmp_path)


def test_classes_file_forms(tmp_path: Path):
    path = tmp_path / "classes.txt"
    path.write_text("# comment\nbackground\npotted plant\n")
    assert read_classes_file(path) == (["background", "potted plant"], None)
    path.write_text("background 0 0 0\nsky\n")
    with pytest.raises(DataError, match="every line or on none"):
        read_classes_file(path)


def test_probs_cache_round_trip_resize_and_dataset(tmp_path: Path):
    cache = ProbsCache(tmp_path / "cache")
    probs = torch.softmax(torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)), 0)
    path = cache.save("x", probs)
    assert path.name == "x.npz"
    loaded = cache.load("x")
    assert loaded.shape == (3, 4, 5) and (loaded - probs).abs().max() < 0.002  # float16
    assert torch.allclose(loaded.sum(0), torch.ones(4, 5))
    up = cache.load("x", size=(8, 10))
    assert up.shape == (3, 8, 10) and torch.allclose(up.sum(0), torch.ones(8, 10))
    with pytest.raises(DataError, match="holds 3 classes but the dataset has 21"):
        cache.load("x", num_classes=21)
    with pytest.raises(DataError, match="no cached coarse probabilities for 'y'"):
        cache.load("y")
    assert "x" in cache and "y" not in cache
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["x.npz"]  # no temporary left

    _image(tmp_path / "d" / "images" / "x.png", 8, 10)
    _grey_mask(tmp_path / "d" / "masks" / "x.png", np.zeros((8, 10), np.uint8))
    (tmp_path / "d" / "classes.txt").write_text("a\nb\nc\n")
    sample = FolderDataset.from_root(tmp_path / "d", probs_cache=tmp_path / "cache")[0]
    assert sample.probs is not None and sample.probs.shape == (3, 8, 10)
