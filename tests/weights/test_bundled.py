"""The bundled checkpoints still reproduce their model-card numbers on a fixed small val subset.

weights/bundle.py measured each shipped file on the synthetic world's val split and stored the numbers in its
metadata; here the first 16 val images are scored again. Tolerance: 0.5 points of mIoU and boundary F, room for
float differences between kernels and machines, far below any real regression.
"""

from __future__ import annotations

import pytest

from refine_cli import weights
from refine_cli.config import SynthConfig
from refine_cli.data import SynthDataset
from refine_cli.evaluation import BASE, SPN, evaluate
from refine_cli.pipeline import Refiner

TOLERANCE = 0.005
SUBSET = 16
WORLD = SynthConfig(n=2000, seed=0)
REFINER = "synth_spn_universal_compact"
BASES = ("synth_fcn8s_compact", "synth_deeplab_largefov_compact")


def _bundled(name: str):
    path = weights.bundled_dir() / f"{name}.pt"
    if not path.is_file():
        pytest.fail(f"bundled checkpoint {path} is missing")
    return path


@pytest.fixture(scope="module")
def reports():
    data = SynthDataset(WORLD, "val")
    out = {}
    for base in BASES:
        model = Refiner(base=_bundled(base), refiner=_bundled(REFINER), device="cpu", batch_size=1)
        out[base] = evaluate((data[i] for i in range(SUBSET)), model, num_classes=len(data.classes))
    return out


@pytest.mark.parametrize("base", BASES)
def test_base_reproduces_its_card(reports, base):
    card = weights.load_checkpoint(_bundled(base)).meta.metrics["synth_val_first16"]
    row = reports[base].row(BASE)
    assert card["images"] == SUBSET
    assert row.miou == pytest.approx(card["miou"], abs=TOLERANCE)
    assert row.boundary_f == pytest.approx(card["boundary_f"], abs=TOLERANCE)


@pytest.mark.parametrize("base", BASES)
def test_refiner_reproduces_its_card_on_each_base(reports, base):
    card = weights.load_checkpoint(_bundled(REFINER)).meta.metrics["synth_val_first16"][base]
    for method in (BASE, SPN):
        row = reports[base].row(method)
        assert row.miou == pytest.approx(card[method]["miou"], abs=TOLERANCE), method
        assert row.boundary_f == pytest.approx(card[method]["boundary_f"], abs=TOLERANCE), method


def test_bundled_files_match_their_recorded_hashes():
    results = weights.verify([f"{n}" for n in (*BASES, REFINER)])
    assert [r.ok for r in results] == [True] * 3, [(r.name, r.detail) for r in results]
