"""`refine-cli train base` and `refine-cli train refiner` through Typer's CliRunner: options reach the configs,
runs write their folder, errors are one red line with the right exit code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

from refine_cli import weights
from refine_cli.cli import app
from refine_cli.cli.train import _arch_args
from refine_cli.config import RefinerTrainConfig
from refine_cli.train import TrainResult
from tests.train.conftest import TINY_BASE_ARCH, TINY_BASE_ARGS, TINY_REFINER_ARCH, TINY_REFINER_ARGS

runner = CliRunner()


def _arch(args: dict) -> list[str]:
    return [a for k, v in args.items() for a in ("--arch-arg", f"{k}={v}")]


def _base(world: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "base", "--arch", TINY_BASE_ARCH, *_arch(TINY_BASE_ARGS), "--data", str(world), "--out", str(out),
            "--batch-size", "2", "--crop-size", "32", "--steps", "2", "--log-every", "1", "--workers", "0",
            "--device", "cpu", *extra]


def test_train_base_command(world: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = runner.invoke(app, _base(world, out, "--val-split", "val", "--optimizer", "adamw", "--lr", "0.002",
                                      "--no-flip", "--scale-min", "0.9", "--scale-max", "1.1", "--seed", "7"))
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and str(out / "model.pt") in result.output
    assert "from scratch" in result.output  # the log says how the network was initialised
    recipe = weights.load_checkpoint(out / "model.pt").meta.provenance["recipe"]
    assert recipe["optim"] == {"optimizer": "adamw", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                               "poly_power": 0.9, "grad_clip": 0.0}
    assert recipe["augment"] == {"crop_size": 32, "scale_min": 0.9, "scale_max": 1.1, "flip": False}
    assert recipe["loop"]["seed"] == 7 and recipe["arch_args"] == TINY_BASE_ARGS and recipe["batch_size"] == 2

    again = runner.invoke(app, _base(world, out))
    assert again.exit_code == 2 and "already holds a training run" in again.output and "--resume" in again.output
    resumed = runner.invoke(app, _base(world, out, "--val-split", "val", "--optimizer", "adamw", "--lr", "0.002",
                                       "--no-flip", "--scale-min", "0.9", "--scale-max", "1.1", "--seed", "7",
                                       "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    # Fine-tuning says how the run's val scores compare with the weights it started from.
    tuned = runner.invoke(app, _base(world, tmp_path / "tuned", "--val-split", "val", "--from", str(out / "model.pt")))
    assert tuned.exit_code == 0, tuned.output
    start = re.search(r"step 0 \S+: miou (0\.\d{4})", tuned.output)
    assert start and f"against the --from weights on val: miou {start.group(1)} -> " in tuned.output
    assert "against the --from weights" not in resumed.output


def test_skip_bad_trains_past_a_truncated_jpeg(world: Path, tmp_path: Path):
    data = tmp_path / "world"
    shutil.copytree(world, data)
    image = data / "JPEGImages" / "synth_000003.jpg"
    raw = image.read_bytes()
    scan = raw.index(b"\xff\xda")  # keep the headers: the size still reads, the pixels do not
    image.write_bytes(raw[: scan + (len(raw) - scan) // 2])
    # Two passes over the 8 training images (the last --steps / --batch-size given win): every image is drawn.
    result = runner.invoke(app, _base(data, tmp_path / "run", "--skip-bad", "--steps", "4", "--batch-size", "4"))
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad sample(s) of 8" in result.output and "trained 4 steps" in result.output
    stopped = runner.invoke(app, _base(data, tmp_path / "run2"))
    assert stopped.exit_code == 1 and "synth_000003" in stopped.output and "--skip-bad" in stopped.output


def test_train_refiner_command(world: Path, trained_base: TrainResult, tmp_path: Path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "refiner", "--base", str(trained_base.model_path), "--data", str(world), "--out", str(out),
        "--arch", TINY_REFINER_ARCH, *_arch(TINY_REFINER_ARGS), "--images-per-batch", "2", "--crops-per-image", "3",
        "--crop-size", "32", "--min-labels", "1", "--rotation", "5", "--steps", "2", "--workers", "0",
        "--device", "cpu", "--probs-dir", str(tmp_path / "probs"), "--log-every", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "coarse probability maps" in result.output and "trained 2 steps" in result.output
    recipe = weights.load_checkpoint(out / "model.pt").meta.provenance["recipe"]
    assert recipe["crop"] == {"size": 32, "crops_per_image": 3, "min_labels": 1, "max_tries": 10}
    assert recipe["augment"]["rotation_deg"] == 5.0 and recipe["optim"]["optimizer"] == "sgd"
    # Everything not given is the released recipe.
    defaults = RefinerTrainConfig()
    assert recipe["optim"]["lr"] == defaults.optim.lr == 1e-4 and recipe["optim"]["grad_clip"] == 1000.0
    assert recipe["optim"]["weight_decay"] == 5e-3 and recipe["optim"]["poly_power"] == 0.5


def test_cli_errors_are_one_line(world: Path, tmp_path: Path):
    if not torch.cuda.is_available():
        result = runner.invoke(app, _base(world, tmp_path / "a")[:-2] + ["--device", "cuda:1"])
        assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, _base(world, tmp_path / "b", "--resume"))
    assert result.exit_code == 2 and "nothing to resume" in result.output
    result = runner.invoke(app, _base(world, tmp_path / "c", "--arch", "spn_universal_compact"))
    assert result.exit_code == 2 and "is a refiner network" in result.output
    result = runner.invoke(app, _base(world, tmp_path / "d", "--lr", "1e30", "--optimizer", "sgd"))
    assert result.exit_code == 1 and "loss became" in result.output and "lower --lr" in result.output
    result = runner.invoke(app, _base(world, tmp_path / "e", "--arch-arg", "width"))
    assert result.exit_code == 2 and "not KEY=VALUE" in result.output


def test_arch_args_are_json_values():
    assert _arch_args(["width=0.125", "aux_loss=false", "name=x", "sizes=[1, 2]"]) == {
        "width": 0.125, "aux_loss": False, "name": "x", "sizes": [1, 2]}


def test_resume_with_changed_options_is_a_usage_error(world: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert runner.invoke(app, _base(world, out)).exit_code == 0
    changed = runner.invoke(app, _base(world, out, "--lr", "0.5", "--resume"))
    assert changed.exit_code == 2, changed.output
    assert "started with other settings (optim.lr: 0.001 -> 0.5)" in changed.output
    again = runner.invoke(app, _base(world, out))  # the same kind of mistake gets the same code
    assert again.exit_code == 2 and "already holds a training run" in again.output
    other = runner.invoke(app, ["train", "refiner", "--base", str(out / "model.pt"), "--data", str(world), "--out",
                                str(out), "--arch", TINY_REFINER_ARCH, *_arch(TINY_REFINER_ARGS), "--steps", "2",
                                "--device", "cpu", "--probs-dir", str(tmp_path / "probs"), "--resume"])
    assert other.exit_code == 2 and "is a base training run" in other.output, other.output
