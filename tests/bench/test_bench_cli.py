"""`refine-cli bench ...` end to end at tiny sizes (2 images of 64 px, one repeat, an eighth-width base network and
a 4-channel refiner with random weights): every command runs, its JSON holds the fields the README cites, and the
numbers hang together (shares sum to one, ratios are the quotients of the times they come from)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from refine_cli import crf
from refine_cli.bench import compare, scaling
from refine_cli.bench.workload import random_checkpoint, write_synthetic_jpegs
from refine_cli.cli import app
from refine_cli.config import CRFConfig
from refine_cli.crf import crf_available
from refine_cli.data.synth import SYNTH_CLASSES
from refine_cli.weights import load_checkpoint

runner = CliRunner()
STAGES = ("decode", "base", "refiner", "write")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Two OpenMP threads spinning against other jobs on a 2-core machine make tiny calls slow and noisy.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("nets")
    base = random_checkpoint("deeplab_largefov_vgg16_compact", folder, width=0.125, fc_channels=32)
    refiner = random_checkpoint("spn_universal_compact", folder, hidden=4, mid_channels=4)
    return {"base": str(base), "refiner": str(refiner)}


def invoke(*args: str) -> dict:
    result = runner.invoke(app, ["bench", *args, "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_random_checkpoints_carry_the_synthetic_classes(nets: dict[str, str]):
    base, refiner = load_checkpoint(nets["base"]), load_checkpoint(nets["refiner"])
    assert (base.kind, base.meta.classes) == ("base", SYNTH_CLASSES)
    assert (refiner.kind, refiner.meta.classes) == ("refiner", ())
    assert base.arch_args["width"] == 0.125 and refiner.arch_args["hidden"] == 4


def test_synthetic_jpegs_are_deterministic(tmp_path: Path):
    a = write_synthetic_jpegs(tmp_path / "a", n=2, size=48, seed=3)
    b = write_synthetic_jpegs(tmp_path / "b", n=2, size=48, seed=3)
    assert [p.name for p in a] == ["synth_000000.jpg", "synth_000001.jpg"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != a[1].read_bytes()


def test_pipeline(nets: dict[str, str]):
    d = invoke("pipeline", "--n", "2", "--size", "64", "--repeats", "1", "--device", "cpu", "--batch-size", "1",
               "--base", nets["base"], "--refiner", nets["refiner"])
    assert (d["images"], d["size"], d["batch_size"], d["repeats"]) == (2, 64, 1, 1)
    assert d["refiner"] == nets["refiner"] and "summed stage time" in d["note"]
    runs = {r["mode"]: r for r in d["runs"]}
    assert set(runs) == {"base only", "base + refiner"}
    for run in runs.values():
        assert run["images_per_s"] > 0 and len(run["wall_s"]) == 1
        assert run["images_per_s"] == pytest.approx(2 / run["wall_s"][0])
        assert sum(run["shares"][s] for s in STAGES) == pytest.approx(1.0)
        assert all(run["ms_per_image"][s] > 0 for s in ("decode", "base", "write"))
    assert runs["base only"]["shares"]["refiner"] == 0.0
    assert runs["base + refiner"]["ms_per_image"]["refiner"] > 0
    assert d["bare_base_images_per_s"] > 0
    for mode, ratio in d["ratio_to_bare_base"].items():
        assert ratio == pytest.approx(runs[mode]["images_per_s"] / d["bare_base_images_per_s"])


def test_pipeline_on_a_given_folder_base_only(nets: dict[str, str], tmp_path: Path):
    write_synthetic_jpegs(tmp_path / "in", n=2, size=48)
    d = invoke("pipeline", "--images", str(tmp_path / "in"), "--repeats", "1", "--device", "cpu", "--no-overlay",
               "--base", nets["base"], "--refiner", "none")
    assert (d["images"], d["size"], d["refiner"]) == (2, None, None)
    assert [r["mode"] for r in d["runs"]] == ["base only"]


def test_pipeline_fails_on_an_unreadable_image(nets: dict[str, str], tmp_path: Path):
    write_synthetic_jpegs(tmp_path, n=1, size=48)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = runner.invoke(app, ["bench", "pipeline", "--images", str(tmp_path), "--repeats", "1", "--device", "cpu",
                                 "--base", nets["base"], "--refiner", "none"])
    assert result.exit_code == 1 and "broken.jpg" in result.output and "every image" in result.output


def _masks_for(images: list[Path], folder: Path) -> None:
    folder.mkdir()
    for i, image in enumerate(images):
        labels = np.zeros((48, 48), np.uint8)
        labels[8:40, 10 + i : 30 + i] = 1
        labels[30:, :12] = 2
        Image.fromarray(labels).save(folder / f"{image.stem}.png")


@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 is not installed")
def test_pipeline_with_masks_times_the_refiner_against_the_crf(nets: dict[str, str], tmp_path: Path):
    images = write_synthetic_jpegs(tmp_path / "in", n=2, size=48)
    _masks_for(images, tmp_path / "masks")
    d = invoke("pipeline", "--images", str(tmp_path / "in"), "--masks", str(tmp_path / "masks"), "--repeats", "2",
               "--device", "cpu", "--no-overlay", "--refiner", nets["refiner"], "--crf-iterations", "2",
               "--crf-bilateral-sxy", "40", "--crf-label-confidence", "0.8")
    assert (d["images"], d["masks"], d["base"]) == (2, str(tmp_path / "masks"), "")
    assert (d["crf"]["iterations"], d["crf"]["bilateral_sxy"], d["crf"]["label_confidence"]) == (2, 40, 0.8)
    assert d["crf"]["bilateral_srgb"] == CRFConfig().bilateral_srgb
    [run] = d["runs"]
    assert run["mode"] == "masks + refiner" and len(run["wall_s"]) == 2
    assert run["ms_per_image"]["base"] == 0.0 and run["ms_per_image"]["refiner"] > 0
    assert d["bare_base_images_per_s"] is None and d["ratio_to_bare_base"] == {"masks + refiner": None}
    assert d["crf_ms_per_image"] > 0
    assert d["ratio_to_crf"] == pytest.approx(1e3 / run["images_per_s"] / d["crf_ms_per_image"])


def test_pipeline_with_masks_needs_images_and_a_mask_for_each(nets: dict[str, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    images = write_synthetic_jpegs(tmp_path / "in", n=2, size=48)
    _masks_for(images[:1], tmp_path / "masks")
    args = ["bench", "pipeline", "--masks", str(tmp_path / "masks"), "--repeats", "1", "--device", "cpu",
            "--refiner", nets["refiner"]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--masks needs --images" in result.output
    if crf_available():
        result = runner.invoke(app, [*args, "--images", str(tmp_path / "in")])
        assert result.exit_code == 1 and images[1].name in result.output and "no coarse mask" in result.output
    monkeypatch.setattr(crf, "crf_available", lambda: False)
    result = runner.invoke(app, [*args, "--images", str(tmp_path / "in")])
    assert result.exit_code == 2 and "pydensecrf2" in result.output


@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 is not installed")
def test_refiner_vs_crf(nets: dict[str, str]):
    d = invoke("refiner-vs-crf", "--n", "2", "--size", "64", "--crf-iterations", "2", "--device", "cpu",
               "--base", nets["base"], "--refiner", nets["refiner"])
    assert d["crf_iterations"] == 2 and d["report"]["crf"]["iterations"] == 2 and d["report"]["images"] == 2
    rows = {m["method"]: m for m in d["report"]["methods"]}
    assert set(rows) == {"base", "base + SPN", "base + dense CRF"}
    assert all(m["ms_per_image"] > 0 and 0 <= m["miou"] <= 1 and 0 <= m["boundary_f"] <= 1 for m in rows.values())
    ms = {k: v["ms_per_image"] for k, v in rows.items()}
    assert d["spn_over_base"] == pytest.approx(ms["base + SPN"] / ms["base"])
    assert d["crf_over_spn"] == pytest.approx(ms["base + dense CRF"] / ms["base + SPN"])
    assert d["spn_miou_gain"] == pytest.approx(rows["base + SPN"]["miou"] - rows["base"]["miou"])
    crf_gain = rows["base + dense CRF"]["boundary_f"] - rows["base"]["boundary_f"]
    assert d["crf_boundary_f_gain"] == pytest.approx(crf_gain)
    targets = d["targets"]
    assert [t["relation"] for t in targets] == ["<=", ">=", ">", ">"]
    assert targets[0]["met"] == (d["spn_over_base"] <= 0.5) and targets[1]["met"] == (d["crf_over_spn"] >= 5)
    assert targets[2]["met"] == (d["spn_miou_gain"] > max(d["crf_miou_gain"], 0))


def test_refiner_vs_crf_says_what_is_missing(nets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    args = ["bench", "refiner-vs-crf", "--n", "1", "--size", "48", "--device", "cpu", "--refiner", nets["refiner"]]
    three = random_checkpoint("deeplab_largefov_vgg16_compact", tmp_path, classes=("a", "b", "c"), width=0.125,
                              fc_channels=16)
    result = runner.invoke(app, [*args, "--base", str(three)])
    assert result.exit_code == 1 and "predicts 3 classes" in result.output
    monkeypatch.setattr(crf, "crf_available", lambda: False)
    result = runner.invoke(app, [*args, "--base", nets["base"]])
    assert result.exit_code == 2 and "pydensecrf2" in result.output


@pytest.mark.slow
def test_scaling_table_json_and_plot(nets: dict[str, str], tmp_path: Path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "scaling.png"
    d = invoke("scaling", "--sizes", "64,48", "--batches", "1,2", "--repeats", "1", "--no-memory", "--device", "cpu",
               "--base", nets["base"], "--refiner", nets["refiner"], "--plot", str(plot))
    points = [(p["stage"], p["size"], p["batch"]) for p in d["points"]]
    assert points == [(s, size, b) for size in (48, 64) for b in (1, 2) for s in ("base", "refiner")]
    for p in d["points"]:
        assert p["ms_per_image"] > 0 and p["peak_mib"] is None
        assert (p["classes_propagated"] is None) == (p["stage"] == "base")
        if p["stage"] == "refiner":
            assert 1 <= p["classes_propagated"] <= len(SYNTH_CLASSES)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_scaling_memory_in_a_fresh_process(nets: dict[str, str]):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("extra peak memory is read from Linux's /proc")
    report = scaling.bench_scaling(base=nets["base"], refiner=nets["refiner"], sizes=(64,), batches=(1,),
                                   device="cpu", repeats=1, memory=True)
    assert report.memory == scaling.CPU_MEMORY
    # One forward at 64 px allocates at least its activations, on top of the loaded networks and decoded batch.
    assert [p.stage for p in report.points] == ["base", "refiner"]
    assert all(p.peak_mib is not None and p.peak_mib > 0 for p in report.points)


def test_scaling_plot_needs_matplotlib(nets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it looks like to imports
    result = runner.invoke(app, ["bench", "scaling", "--sizes", "48", "--batches", "1", "--device", "cpu",
                                 "--base", nets["base"], "--refiner", nets["refiner"], "--plot",
                                 str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "matplotlib" in result.output and not (tmp_path / "p.png").exists()


def test_ops():
    d = invoke("ops", "--shape", "1,2,8,8", "--backends", "torch", "--repeats", "1", "--no-memory", "--device", "cpu")
    assert [(tuple(r["shape"]), r["backend"]) for r in d["propagate"]] == [((1, 2, 8, 8), "torch")]
    assert d["propagate"][0]["forward_ms"] > 0 and d["propagate"][0]["forward_backward_ms"] > 0
    assert d["refiner"] == [] and d["bandwidth"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ops", "--bandwidth", "--device", "cpu"], "CUDA"),
        (["ops", "--shape", "1,2,8", "--device", "cpu"], "N,C,H,W"),
        (["scaling", "--sizes", "64,x"], "comma-separated"),
        (["pipeline", "--random-init"], "--random-init needs"),
    ],
)
def test_usage_errors(args: list[str], message: str):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("decode_at", "order"),
    [("half", ["decoder", "upsampling"]), ("full", ["upsampling", "decoder"])],
)
def test_profile_refiner_script_times_every_stage(decode_at: str, order: list[str], tmp_path: Path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_refiner.py"
    refiner = random_checkpoint("spn_universal_compact", tmp_path, hidden=4, mid_channels=4, decode_at=decode_at)
    out = tmp_path / "stages.json"
    result = subprocess.run(
        [sys.executable, str(script), "--refiner", str(refiner), "--size", "32", "--classes", "3",
         "--repeats", "1", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "32x32, 3 class maps" in result.stdout.splitlines()[0]
    report = json.loads(out.read_text())
    stages = [name.split()[0] for name in report["stages_ms"]]
    assert stages == ["guidance", "encoder", "propagation", *order]
    assert all(ms >= 0 for ms in report["stages_ms"].values())
    assert report["whole_ms"] == pytest.approx(sum(report["stages_ms"].values()))


@pytest.mark.slow
def test_refiner_side_script_sweeps_sides_and_skips_those_at_full_size(nets: dict[str, str], tmp_path: Path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "refiner_side.py"
    out = tmp_path / "side.json"
    result = subprocess.run(
        [sys.executable, str(script), "--base", nets["base"], "--refiner", nets["refiner"], "--sizes", "48",
         "--sides", "0,64,32", "--n", "2", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["refiner_side"]) for r in rows] == [(48, None), (48, 32)]  # 64 >= 48: skipped
    assert rows[0]["base_miou"] == rows[1]["base_miou"]  # one base network, one set of images
    assert all(0 <= r["spn_miou"] <= 1 and r["spn_ms"] > 0 for r in rows)
    assert len(result.stdout.splitlines()) == 2 + len(rows)  # the markdown table
