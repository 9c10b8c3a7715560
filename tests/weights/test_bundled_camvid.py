"""The compact FCN-8s and DeepLab-LargeFOV trained on CamVid (weights/bundle_camvid.py): what they are, their recorded
hashes, and their model-card numbers re-measured on CamVid val[::4].

Tolerance 0.2 points: the same weights give the same labels on any x86 CPU up to single pixels; a wrong
preprocessing, wiring or file costs points to tens of points."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_cli import weights
from refine_cli.data import open_dataset
from refine_cli.evaluation import BASE, evaluate
from refine_cli.labels import CAMVID_CLASSES, CAMVID_PALETTE
from refine_cli.pipeline import Refiner
from tests.fixtures import bundled_checkpoint as _bundled

TOLERANCE = 0.002
BUNDLED = {"camvid_fcn8s_compact": "fcn8s_vgg16_compact",
           "camvid_deeplab_largefov_compact": "deeplab_largefov_vgg16_compact"}



@pytest.mark.parametrize("name", list(BUNDLED))
def test_trained_on_camvid_train(name: str) -> None:
    ckpt = weights.load_checkpoint(_bundled(name))
    assert ckpt.arch == BUNDLED[name] and ckpt.kind == "base"
    assert ckpt.meta.classes == CAMVID_CLASSES and ckpt.meta.palette == CAMVID_PALETTE
    dataset = ckpt.meta.provenance["dataset"]
    assert (dataset["format"], dataset["split"], dataset["samples"]) == ("camvid", "train", 367)
    card = ckpt.meta.metrics
    assert card["camvid_val"]["images"] == 101 and card["camvid_val_every4"]["images"] == 26
    assert card["stored"] in ("float16", "float32")


def test_recorded_hashes_match() -> None:
    results = weights.verify(list(BUNDLED))
    assert [r.ok for r in results] == [True] * len(BUNDLED), [(r.name, r.detail) for r in results]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUNDLED))
def test_reproduces_its_card(real_data: Path, name: str) -> None:
    path = _bundled(name)
    card = weights.load_checkpoint(path).meta.metrics["camvid_val_every4"]
    data = open_dataset(real_data / "camvid", format="camvid", split="val")
    model = Refiner(base=path, refiner=None, device="cpu", batch_size=1)
    row = evaluate((data[i] for i in range(0, len(data), 4)), model, num_classes=11).row(BASE)
    assert row.miou == pytest.approx(card["miou"], abs=TOLERANCE)
    assert row.pixel_accuracy == pytest.approx(card["pixel_accuracy"], abs=TOLERANCE)
