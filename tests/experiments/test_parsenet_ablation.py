"""experiments/parsenet_ablation.py at minuscule scale: three variants of one network with one recipe, their loss
curves and scores in the JSON; a run whose loss stops being finite is recorded as diverged, also on a re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments import parsenet_ablation
from refine_cli import weights
from refine_cli.bench.workload import random_checkpoint
from tests.experiments.conftest import tiny


@pytest.mark.slow
def test_three_variants(world: Path, tmp_path: Path):
    report = parsenet_ablation.main(tiny(world, tmp_path, steps=2))
    saved = json.loads((tmp_path / "results" / "parsenet_ablation.json").read_text())
    assert saved["table_markdown"] == report["table_markdown"]
    variants = saved["variants"]
    assert list(variants) == ["context_l2", "no_context", "context_no_l2"]
    switches = {k: (v["arch_args"]["context"], v["arch_args"]["l2norm"]) for k, v in variants.items()}
    assert switches == {"context_l2": (True, True), "no_context": (False, True), "context_no_l2": (True, False)}
    for key, v in variants.items():
        assert v["diverged_at"] is None and 0 <= v["miou"] <= 1 and [s for s, _ in v["run"]["loss"]] == [1, 2]
        ckpt = weights.load_checkpoint(Path(v["run"]["model"]))
        assert ckpt.arch == "parsenet_vgg16_compact" and ckpt.arch_args["context"] == switches[key][0]
        assert any(k.startswith("head.norm_local") for k in ckpt.state_dict) == switches[key][1]
    gain = saved["claims"]["context_raises_miou"]["miou_gain"]
    assert gain == variants["context_l2"]["miou"] - variants["no_context"]["miou"]
    assert saved["claims"]["context_raises_miou"]["holds"] == (gain > 0)
    with Image.open(tmp_path / "results" / "parsenet_ablation.png") as img:
        assert img.format == "PNG"


@pytest.mark.slow
def test_divergence_is_recorded_and_not_repeated(world: Path, tmp_path: Path):
    argv = [*tiny(world, tmp_path, steps=4), "--optimizer", "sgd", "--lr", "1e30", "--name", "blowup"]
    report = parsenet_ablation.main(argv)
    steps = {k: v["diverged_at"] for k, v in report["variants"].items()}
    assert all(isinstance(s, int) and 1 <= s <= 4 for s in steps.values()), steps
    assert all(v["miou"] is None and "loss became" in v["run"]["message"] for v in report["variants"].values())
    assert "diverged at step" in report["table_markdown"]
    assert report["claims"]["context_raises_miou"]["holds"] is None
    again = parsenet_ablation.main(argv)
    assert {k: v["diverged_at"] for k, v in again["variants"].items()} == steps
    assert all(v["run"]["reused"] for v in again["variants"].values())


@pytest.mark.slow
def test_init_from_a_trained_net_keeps_its_trunk_and_drops_its_classifier(world: Path, tmp_path: Path):
    donor = random_checkpoint("deeplab_largefov_vgg16_compact", tmp_path / "donor", seed=3)
    donor_state = weights.load_checkpoint(donor).state_dict
    report = parsenet_ablation.main([*tiny(world, tmp_path, steps=1), "--init-from", str(donor), "--lr", "1e-6"])
    assert report["settings"]["init"] == {"from": str(donor), "dropped": ["fc8.bias", "fc8.weight"]}
    for v in report["variants"].values():
        state = weights.load_checkpoint(Path(v["run"]["model"])).state_dict
        for key in ("conv1_1.weight", "conv5_3.weight", "fc6.weight", "fc7.weight"):
            torch.testing.assert_close(state[key], donor_state[key], atol=1e-4, rtol=0)
