"""benchmarks/real_robustness.py: the photographs it makes, and its table on two CamVid val frames."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "real_robustness.py"


def load_script():
    spec = importlib.util.spec_from_file_location("real_robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_each_condition_makes_a_photograph_of_its_size_and_spoils_only_what_it_names():
    script = load_script()
    rgb = np.random.default_rng(0).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    photos = {c.name: c.photo(rgb, 3) for c in script.CONDITIONS}
    sizes = {c.name: photos[c.name].shape for c in script.CONDITIONS}
    assert sizes == {"as is": (36, 48, 3), "half size": (18, 24, 3), "double size": (72, 96, 3),
                     "JPEG quality 15": (36, 48, 3), "noise sigma 12": (36, 48, 3), "darkened x0.3": (36, 48, 3)}
    assert all(p.dtype == np.uint8 for p in photos.values())
    assert np.array_equal(photos["as is"], rgb)
    assert np.array_equal(photos["darkened x0.3"], (rgb * np.float32(0.3)).astype(np.uint8))
    assert 8 < np.abs(photos["noise sigma 12"].astype(int) - rgb).mean() < 12  # clipped at 0 and 255
    assert np.array_equal(photos["noise sigma 12"], script.CONDITIONS[4].photo(rgb, 3))  # seeded by the frame
    assert not np.array_equal(photos["JPEG quality 15"], rgb)
    labels = np.arange(36 * 48, dtype=np.uint8).reshape(36, 48) % 7
    assert script.scaled_labels(labels, 2.0).shape == (72, 96)
    assert set(np.unique(script.scaled_labels(labels, 0.5))) <= set(range(7))  # nearest: no new labels


@pytest.mark.slow
def test_the_table_on_two_camvid_frames(real_data: Path, tmp_path: Path):
    out = tmp_path / "robustness.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--real", str(real_data), "--sets", "camvid", "--step", "60", "--json", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["set"], r["condition"]) for r in rows] == [
        (s, c.name) for s in ("CamVid, ESPNet probs", "CamVid, ESPNet hard") for c in load_script().CONDITIONS]
    assert len(result.stdout.splitlines()) == 2 + len(rows)
    by = {(r["set"], r["condition"]): r for r in rows}
    for condition in ("as is", "half size", "noise sigma 12"):
        probs, hard = by["CamVid, ESPNet probs", condition], by["CamVid, ESPNet hard", condition]
        assert probs["coarse_miou"] == hard["coarse_miou"]  # one base output, refined from its probabilities or mask
        assert probs["refined_bf"] != hard["refined_bf"]
    assert by["CamVid, ESPNet probs", "half size"]["coarse_miou"] != by["CamVid, ESPNet probs", "as is"]["coarse_miou"]
    as_is = by["CamVid, ESPNet hard", "as is"]
    assert as_is["bf_gain"] > 1 and as_is["refined_bf"] - as_is["coarse_bf"] == pytest.approx(as_is["bf_gain"])
