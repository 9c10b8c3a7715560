"""The synthetic world: byte-identical for a seed, VOC layout every loader reads, hard labels over antialiased
shapes, an object in every image, the on-the-fly dataset equal to the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import refine_cli.data
from refine_cli.config import SynthConfig
from refine_cli.data import SYNTH_CLASSES, SynthDataset, VOCSegmentation, generate, render, validate
from refine_cli.data.synth import texture_pool
from refine_cli.data.synth.shapes import Shape, ellipse, rasterise
from refine_cli.errors import UsageError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files(tmp_path: Path):
    config = SynthConfig(n=5, seed=4, height=48, width=64, val_fraction=0.4)
    generate(tmp_path / "a", config)
    generate(tmp_path / "b", config)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 5 * 2 + 5 and a == b
    c = _files(generate(tmp_path / "c", SynthConfig(n=5, seed=5, height=48, width=64)).out)
    assert c["JPEGImages/synth_000000.jpg"] != a["JPEGImages/synth_000000.jpg"]
    # image i depends on (seed, i) only: a shorter run is a prefix
    d = _files(generate(tmp_path / "d", SynthConfig(n=2, seed=4, height=48, width=64)).out)
    assert d["SegmentationClass/synth_000001.png"] == a["SegmentationClass/synth_000001.png"]


def test_written_world_loads_as_voc_and_validates(tmp_path: Path):
    summary = generate(tmp_path, SynthConfig(n=6, seed=0, height=40, width=56, val_fraction=0.34))
    assert (summary.train, summary.val) == (4, 2)
    train, val = VOCSegmentation(tmp_path, "train"), VOCSegmentation(tmp_path, "val")
    assert len(train) == 4 and len(val) == 2 and not set(train.names) & set(val.names)
    assert train.classes == SYNTH_CLASSES and train.palette[1] == (128, 0, 0)
    sample = train[0]
    assert sample.image.shape == (3, 40, 56) and sample.label.shape == (40, 56)
    assert int(sample.label.max()) < len(SYNTH_CLASSES)
    assert validate(train).ok and validate(val).ok
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["config"]["seed"] == 0 and meta["classes"] == list(SYNTH_CLASSES) and meta["val"] == 2
    assert "bars" in (tmp_path / "README.txt").read_text()


def test_non_empty_output_is_refused_unless_overwrite(tmp_path: Path):
    generate(tmp_path, SynthConfig(n=3, height=32, width=32))
    with pytest.raises(UsageError, match="not empty"):
        generate(tmp_path, SynthConfig(n=3, height=32, width=32))
    generate(tmp_path, SynthConfig(n=2, height=32, width=32), overwrite=True)
    # the stale third image of the earlier run is gone; the lists name what exists
    assert sorted(p.name for p in (tmp_path / "JPEGImages").iterdir()) == ["synth_000000.jpg", "synth_000001.jpg"]
    assert validate(VOCSegmentation(tmp_path, "train")).ok


def test_bad_settings_are_usage_errors(tmp_path: Path):
    with pytest.raises(UsageError):
        generate(tmp_path, SynthConfig(n=0))
    with pytest.raises(UsageError):
        generate(tmp_path, SynthConfig(height=16))


def test_every_image_shows_objects_and_all_classes_occur():
    config = SynthConfig(n=40, seed=1, height=64, width=64)
    seen = set()
    for i in range(config.n):
        rendered = render(i, config)
        assert rendered.image.shape == (64, 64, 3) and rendered.image.dtype == np.uint8
        assert rendered.label.dtype == np.uint8 and rendered.label.max() < len(SYNTH_CLASSES)
        assert np.count_nonzero(rendered.label) >= 0.003 * rendered.label.size
        assert 60 <= rendered.jpeg_quality <= 95
        seen |= set(np.unique(rendered.label).tolist())
    assert seen == set(range(len(SYNTH_CLASSES)))


def test_shapes_are_antialiased_and_labels_take_the_majority():
    r = 9.3
    shape = Shape([(ellipse(20.2, 17.6, r, r, 0.0, n=256), 255)], [])
    alpha, (y0, x0, y1, x1) = rasterise(shape, 40, 40, 4)
    # coverage integrates to the area; cv2 fills the subpixels its edges touch, growing the shape by about
    # half a subpixel (1/8 px at 4x), the same in image and label
    grown = r + 0.5 / 4
    assert math.isclose(float(alpha.sum()), math.pi * grown * grown, rel_tol=0.01)
    edge = (alpha > 0) & (alpha < 1)
    assert edge.sum() > 20 and len(np.unique(alpha[edge])) > 5  # soft, graded edge pixels
    # the label rule (class covering most of the pixel) gives about the same area
    assert abs(int((alpha > 0.5).sum()) - math.pi * grown * grown) < 0.05 * math.pi * grown * grown
    # a shape cut by the border is clipped, one entirely outside draws nothing
    cut = rasterise(Shape([(ellipse(0.0, 20.0, 6.0, 6.0, 0.0), 255)], []), 40, 40, 4)
    assert cut[1][1] == 0 and math.isclose(float(cut[0].sum()), math.pi * 36 / 2, rel_tol=0.05)
    assert rasterise(Shape([(ellipse(-20.0, 20.0, 6.0, 6.0, 0.0), 255)], []), 40, 40, 4) is None


def test_thin_lines_survive_as_labels():
    shape = Shape([], [(np.array([[5.0, 10.3], [35.0, 12.1]]), 2.0)])
    alpha, _ = rasterise(shape, 24, 40, 4)
    # about 30 px long and 2 px wide (plus round caps): far from the 30 of a 1 px line or the 90 of a 3 px one
    assert 50 <= int((alpha > 0.5).sum()) <= 85


def test_textures_are_bundled():
    pool = texture_pool()
    assert {t.name for t in pool} >= {"astronaut", "chelsea", "coffee", "brick", "grass", "gravel"}
    assert all(t.pixels.ndim == 3 and t.pixels.shape[2] == 3 for t in pool)
    licence = (Path(refine_cli.data.__file__).parent / "textures" / "LICENSE.txt").read_text()
    assert all(f"{t.name}.jpg" in licence for t in pool)


def test_on_the_fly_dataset_equals_the_files(tmp_path: Path):
    config = SynthConfig(n=4, seed=2, height=32, width=48, val_fraction=0.25)
    generate(tmp_path, config)
    files = VOCSegmentation(tmp_path, "val")
    live = SynthDataset(config, "val")
    assert len(live) == len(files) == 1
    a, b = files[0], live[0]
    assert a.name == b.name and torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
