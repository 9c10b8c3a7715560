"""The bundled ESPNet (CamVid) and ESPNetv2 (PASCAL VOC) checkpoints: what they were converted from, their
metadata, their recorded hashes, and their model-card numbers re-measured on the subsets weights/bundle_pretrained.py
recorded (CamVid val[::4], DAVIS frames [::12]).

Tolerance 0.2 points: the float16 weights run in float32 give the same labels on any x86 CPU up to single pixels;
a wrong preprocessing or wiring costs points to tens of points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refine_cli import weights
from refine_cli.data import open_dataset
from refine_cli.evaluation import BASE, evaluate, foreground_ious
from refine_cli.labels import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES
from refine_cli.pipeline import Refiner
from tests.fixtures import bundled_checkpoint as _bundled
from refine_cli.weights.importers import ESPNET_CAMVID, ESPNETV2_VOC

TOLERANCE = 0.002
BUNDLED = {
    "espnet_camvid": ("espnet_p_2_q_8_camvid.pth", "espnet", CAMVID_CLASSES, ESPNET_CAMVID),
    "espnetv2_voc": ("espnetv2_s_2.0_pascal_384x384.pth", "espnetv2", VOC_CLASSES, ESPNETV2_VOC),
}



@pytest.mark.parametrize("name", list(BUNDLED))
def test_converted_from_the_public_file(real_data: Path, name: str) -> None:
    source, arch, classes, preprocess = BUNDLED[name]
    ckpt = weights.load_checkpoint(_bundled(name))
    assert ckpt.arch == arch and ckpt.kind == "base"
    assert ckpt.meta.classes == classes and ckpt.meta.preprocess == preprocess
    prov = ckpt.meta.provenance
    assert prov["source_file"] == source
    assert prov["source_sha256"] == weights.file_sha256(real_data / "weights" / source)
    if arch == "espnet":
        assert ckpt.meta.palette == CAMVID_PALETTE and prov["dropped_output_channels"] == [11]
    imported = weights.import_checkpoint(real_data / "weights" / source, source=arch, save=False)
    assert set(ckpt.state_dict) == set(imported.state_dict)
    for key, value in imported.state_dict.items():  # float16 storage: within half a float16 step
        if value.is_floating_point():
            assert np.allclose(ckpt.state_dict[key].numpy(), value.numpy(), rtol=2 ** -11, atol=2 ** -24), key


def test_recorded_hashes_match() -> None:
    results = weights.verify(list(BUNDLED))
    assert [r.ok for r in results] == [True, True], [(r.name, r.detail) for r in results]


@pytest.mark.slow
def test_espnet_camvid_reproduces_its_card(real_data: Path) -> None:
    path = _bundled("espnet_camvid")
    card = weights.load_checkpoint(path).meta.metrics["camvid_val_every4"]
    data = open_dataset(real_data / "camvid", format="camvid", split="val")
    model = Refiner(base=path, refiner=None, device="cpu", batch_size=1)
    row = evaluate((data[i] for i in range(0, len(data), 4)), model, num_classes=11).row(BASE)
    assert card["images"] == 26
    assert row.miou == pytest.approx(card["miou"], abs=TOLERANCE)
    assert row.pixel_accuracy == pytest.approx(card["pixel_accuracy"], abs=TOLERANCE)


@pytest.mark.slow
def test_espnetv2_voc_reproduces_its_card(real_data: Path) -> None:
    path = _bundled("espnetv2_voc")
    card = weights.load_checkpoint(path).meta.metrics["davis_every12"]
    data = open_dataset(real_data / "davis", format="davis", split="all")
    model = Refiner(base=path, refiner=None, device="cpu", batch_size=1)
    scores = foreground_ious((data[i] for i in range(0, len(data), 12)), model)
    assert card["frames"] == len(scores) == 20
    assert float(np.mean([s.iou for s in scores])) == pytest.approx(card["mean_over_frames"], abs=TOLERANCE)
    cows = [s.iou for s in scores if s.name.startswith("cows_")]
    assert float(np.mean(cows)) == pytest.approx(card["per_sequence"]["cows"], abs=TOLERANCE)
