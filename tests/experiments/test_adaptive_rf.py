"""experiments/adaptive_rf.py at minuscule scale: the grid keeps f fixed, the learned runs move it in their own
optimizer group, the JSON holds the trajectory and receptive fields, a re-run reuses the finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments import adaptive_rf
from refine_cli import models, weights
from refine_cli.errors import UsageError, WeightsError
from tests.experiments.conftest import tiny


def _factor(run_dir: str) -> float:
    return float(weights.load_checkpoint(Path(run_dir) / "model.pt").state_dict["rf.factor"])


@pytest.mark.slow
def test_grid_and_learned_runs(world: Path, tmp_path: Path):
    argv = [*tiny(world, tmp_path, steps=3), "--grid", "0.7,2"]
    report = adaptive_rf.main(argv)
    saved = json.loads((tmp_path / "results" / "adaptive_rf.json").read_text())
    assert saved["table_markdown"] == report["table_markdown"] and saved["command"][2] == "experiments.adaptive_rf"
    assert {"recipe", "data", "machine", "settings", "grid", "best", "learned", "claim"} <= set(saved)
    assert saved["recipe"]["steps"] == 3 and saved["data"]["val"] == 3 and saved["machine"]["threads"] == 1

    # DeepLab-LargeFOV: RF(f) = 243 + 192 / f, fc6 spanning the 192 / f.
    assert [g["f"] for g in saved["grid"]] == [0.7, 2.0]
    for g in saved["grid"]:
        assert g["receptive_field"] == pytest.approx(243 + 192 / g["f"])
        assert g["fc6_span"] == pytest.approx(192 / g["f"])
        assert 0 <= g["miou"] <= 1
        assert _factor(g["run"]["run_dir"]) == float(torch.tensor(g["f"]))  # frozen in the grid
    assert saved["best"]["f"] in (0.7, 2.0)
    assert saved["best"]["miou"] == max(g["miou"] for g in saved["grid"])

    learned = saved["learned"]
    assert set(learned) == {"from_large_rf", "from_small_rf"}
    assert learned["from_large_rf"]["start"]["f"] == 0.7 and learned["from_small_rf"]["start"]["f"] == 2.0
    for v in learned.values():
        steps = [s for s, _ in v["trajectory"]]
        assert steps == [0, 1, 2, 3] and v["trajectory"][0][1] == v["start"]["f"]
        final = _factor(v["run"]["run_dir"])
        assert v["final"]["f"] == pytest.approx(final) and final != pytest.approx(v["start"]["f"], abs=1e-4)
        assert v["moved_toward_best"] == (v["log_distance_to_best"]["final"] < v["log_distance_to_best"]["start"])
    assert saved["claim"]["holds"] == all(v["moved_toward_best"] for v in learned.values())
    with Image.open(tmp_path / "results" / "adaptive_rf.png") as img:
        assert img.format == "PNG" and img.size[0] > 600

    again = adaptive_rf.main(argv)  # everything finished: reused, same numbers
    assert all(g["run"]["reused"] for g in again["grid"]) and all(v["run"]["reused"] for v in again["learned"].values())
    assert again["best"] == report["best"]

    with pytest.raises(UsageError, match="other settings"):  # the same folders, another recipe
        adaptive_rf.main([*tiny(world, tmp_path, steps=4), "--grid", "0.7,2"])


def test_bad_grids_are_refused(world: Path, tmp_path: Path):
    with pytest.raises(UsageError, match="at least two"):
        adaptive_rf.main([*tiny(world, tmp_path), "--grid", "1"])
    with pytest.raises(UsageError, match=r"range \[0.25, 4\]; got 8"):
        adaptive_rf.main([*tiny(world, tmp_path), "--grid", "1,8"])


def test_init_from_takes_every_weight_but_the_factor(tmp_path: Path):
    arch, small = "deeplab_largefov_vgg16_compact", {"width": 0.125, "fc_channels": 8}
    trained = models.build(arch, num_classes=3, **small)
    path = tmp_path / "plain.pt"
    weights.save_checkpoint(path, weights.checkpoint_from_model(
        trained, arch=arch, arch_args=models.arch_args(arch, num_classes=3, **small),
        meta=weights.CheckpointMeta(classes=("a", "b", "c"))))
    torch.manual_seed(1)  # other initial weights than the checkpoint's
    net = models.build(arch, num_classes=3, adaptive_rf=True, rf_init=0.7, **small)
    note = adaptive_rf._load_all_but_factor(net, str(path))
    assert note.startswith("checkpoint:") and "all but rf.factor" in note
    state = net.state_dict()
    assert all(state[k].equal(v) for k, v in trained.state_dict().items())
    assert net.rf.value == float(torch.tensor(0.7))
    wider = models.build(arch, num_classes=3, adaptive_rf=True, width=0.25, fc_channels=8)
    with pytest.raises(WeightsError, match="does not fit"):
        adaptive_rf._load_all_but_factor(wider, str(path))
