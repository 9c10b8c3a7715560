"""experiments/refiner_diagnosis.py on the bundled networks and three tiny val images: the four inputs, their scores
in the JSON, and agreement with `refine-cli evaluate`'s own numbers for the plain input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import refiner_diagnosis
from refine_cli.data import open_dataset
from refine_cli.evaluation import BASE, SPN, evaluate
from refine_cli.pipeline import Refiner


def test_one_hot_and_smoothed_inputs_stay_distributions():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 4, 40, 40, generator=g).softmax(1)
    hot = refiner_diagnosis.one_hot(probs)
    assert torch.equal(hot.argmax(1), probs.argmax(1)) and torch.equal(hot.sum(1), torch.ones(1, 40, 40))
    blocks = torch.zeros(1, 2, 40, 40)
    blocks[:, 0, :, :20], blocks[:, 1, :, 20:] = 1, 1  # two half planes, one-hot
    soft = refiner_diagnosis.smoothed(blocks)
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 40, 40))
    assert torch.equal(soft.argmax(1)[:, :, :16], torch.zeros(1, 40, 16, dtype=torch.long))  # far from the edge
    assert torch.equal(soft.argmax(1)[:, :, 24:], torch.ones(1, 40, 16, dtype=torch.long))
    assert ((soft > 0.01) & (soft < 0.99)).any()  # the edge itself is no longer one-hot


def test_diagnosis_of_the_bundled_refiner(world: Path, tmp_path: Path):
    argv = ["--data", str(world), "--out", str(tmp_path), "--limit", "3", "--quiet",
            "--base", "fcn=synth_fcn8s_compact", "--refiner", "synth_spn_universal_compact"]
    report = refiner_diagnosis.main(argv)
    saved = json.loads((tmp_path / "refiner_diagnosis.json").read_text())
    assert saved["table_markdown"] == report["table_markdown"] and saved["settings"]["val_images"] == 3
    (row,) = saved["rows"]
    assert row["base"] == "fcn" and Path(row["refiner"]).name == "synth_spn_universal_compact.pt"
    scores = row["scores"]
    assert set(scores) == {"base", "smoothed base", "truth", *refiner_diagnosis.INPUTS}
    for name, cell in scores.items():
        for value in cell.values():
            assert 0 <= value <= 1, (name, cell)
    val = open_dataset(world, split="val")
    labels = [val[i].label.numpy() for i in range(3)]
    valid = sum(int((y != 255).sum()) for y in labels)
    assert scores["truth"]["foreground_share"] == pytest.approx(
        sum(int(((y != 0) & (y != 255)).sum()) for y in labels) / valid)
    # The plain input is what `evaluate` scores: same base and refined numbers.
    model = Refiner(base="synth_fcn8s_compact", refiner="synth_spn_universal_compact", device="cpu", batch_size=1)
    ref = evaluate((val[i] for i in range(3)), model, num_classes=len(val.classes))
    for method, name in ((BASE, "base"), (SPN, "coarse")):
        assert scores[name]["miou"] == pytest.approx(ref.row(method).miou)
        assert scores[name]["boundary_f"] == pytest.approx(ref.row(method).boundary_f)
        assert scores[name]["pixel_accuracy"] == pytest.approx(ref.row(method).pixel_accuracy)
    assert report["table_markdown"].count("\n") == 1 + len(refiner_diagnosis.INPUTS) + 3  # + base, smoothed, truth
