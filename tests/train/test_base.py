"""Base-network training end to end on the tiny world: it learns, writes its files, resumes exactly where it
stopped, stops cleanly on a non-finite loss, and refuses what it cannot do."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from refine_cli import io as io_module
from refine_cli import weights
from refine_cli.config import DataConfig, LoopConfig
from refine_cli.data import open_dataset
from refine_cli.errors import DeviceError, TrainingError, UsageError
from refine_cli.train import Checkpointed, StepLogged, TrainResult, load_state, train_base
from refine_cli.train import base as base_module
from refine_cli.train.common import freeze_for_stage
from refine_cli.train.metrics_log import read_records
from tests.disk import LimitedDisk
from tests.train.conftest import TINY_BASE_ARCH, base_config


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loss_decreases_on_a_tiny_overfit_case(trained_base: TrainResult):
    losses = [r["loss"] for r in read_records(trained_base.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 6  # 30 steps, a line every 5
    assert losses[-1] < 0.75 * losses[0], losses


def test_run_folder_holds_metrics_curve_and_an_exported_model(trained_base: TrainResult, world: Path):
    run = trained_base.run_dir
    records = read_records(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    for r in train:
        assert {"loss", "lr", "images_per_s", "step_s", "time"} <= set(r)
        assert r["images_per_s"] > 0 and r["lr"] > 0
    assert train[0]["lr"] > train[-1]["lr"]  # poly schedule
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [20, 30] and all(0 <= r["miou"] <= 1 for r in val)
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())

    with Image.open(run / "curve.png") as img:
        img.verify()
    with Image.open(run / "curve.png") as img:
        assert img.format == "PNG" and img.size[0] >= 600 and img.size[1] >= 600  # loss, lr, val panels

    ckpt = weights.load_checkpoint(run / "model.pt")  # weights_only=True underneath
    model = weights.build_model(ckpt)
    assert ckpt.arch == TINY_BASE_ARCH and ckpt.kind == "base"
    dataset = open_dataset(world)
    assert ckpt.meta.classes == dataset.classes and ckpt.meta.palette == dataset.palette
    prov = ckpt.meta.provenance
    assert prov["steps"] == 30 and prov["init"] == "scratch" and prov["recipe"]["optim"]["optimizer"] == "adam"
    assert prov["dataset"]["samples"] == 8 and len(prov["dataset"]["fingerprint"]) == 64
    assert {"cpu", "threads", "device"} <= set(prov["machine"]) and prov["torch"] == torch.__version__
    assert prov["created"] and prov["wall_time_s"] > 0
    assert ckpt.meta.metrics["world-val"]["miou"] == pytest.approx(trained_base.val["miou"])
    out = model(torch.rand(1, 3, 40, 40))
    assert out.shape == (1, 8, 40, 40)

    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 30 and state["config"]["loop"]["steps"] == 30
    assert set(state["model"]) == set(ckpt.state_dict) and state["optimizer"]["state"]
    assert state["sampler"]["position"] == 30 * 4 and state["rng"]["torch"][0].dtype == torch.uint8


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(world: Path, tmp_path: Path):
    # Dropout, SGD momentum and random rescale / crop / flip all have to pick up exactly where they stopped.
    config = base_config(world)
    straight = train_base(config, tmp_path / "straight")

    def kill_at_5(event: object) -> None:
        if isinstance(event, StepLogged) and event.step == 5:
            raise _Kill  # after the checkpoint at step 3: steps 4-5 are lost as with a real kill

    with pytest.raises(_Kill):
        train_base(config, tmp_path / "killed", on_event=kill_at_5)
    assert load_state(tmp_path / "killed" / "last.pt").step == 3
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = train_base(config, tmp_path / "killed", resume=True)
    assert resumed.start_step == 3 and resumed.steps == 6

    a = weights.load_checkpoint(straight.model_path).state_dict
    b = weights.load_checkpoint(resumed.model_path).state_dict
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    steps = [r["step"] for r in read_records(tmp_path / "killed" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lost lines 4-5 were dropped and written again
    assert resumed.final_loss == pytest.approx(straight.final_loss, abs=1e-6)


def test_resume_refuses_other_settings_and_new_runs_refuse_old_folders(world: Path, tmp_path: Path):
    config = base_config(world, loop=replace(base_config(world).loop, steps=2, checkpoint_every=1))
    train_base(config, tmp_path / "run")
    with pytest.raises(UsageError, match="already holds a training run"):
        train_base(config, tmp_path / "run")
    changed = replace(config, optim=replace(config.optim, lr=0.5))
    with pytest.raises(UsageError, match=r"optim\.lr: 0\.01 -> 0\.5"):
        train_base(changed, tmp_path / "run", resume=True)
    with pytest.raises(UsageError, match="nothing to resume"):
        train_base(config, tmp_path / "empty", resume=True)
    # Runtime settings may change; a finished run resumes to itself.
    again = train_base(replace(config, loop=replace(config.loop, log_every=5)), tmp_path / "run", resume=True)
    assert again.start_step == again.steps == 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(world: Path, tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real = base_module.pixel_loss

    def poisoned(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(base_module, "pixel_loss", poisoned)
    digest = {}

    def remember(event: object) -> None:
        if isinstance(event, Checkpointed):
            digest[event.step] = _sha(event.path)

    config = base_config(world, loop=replace(base_config(world).loop, checkpoint_every=2))
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train_base(config, run, on_event=remember)
    message = str(info.value)
    assert "loss became nan at step 3" in message
    # The forward pass of step 3 ran on the saved weights of step 2: they are named as what gave the loss.
    assert f"{run / 'last.pt'} holds the weights of step 2, the ones this loss came from" in message
    assert "lower --lr" in message
    assert list(digest) == [2] and _sha(run / "last.pt") == digest[2]
    assert load_state(run / "last.pt").step == 2
    assert not (run / "model.pt").exists()


def _poison_gradients_at(step: int, monkeypatch) -> None:
    """Make the update of `step` (1-based) write NaN into the weights while its loss stays finite, as an overflow
    in the backward pass after a huge but finite loss does."""
    calls = {"n": 0}
    real = base_module.pixel_loss

    def poisoned(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == step:
            logits.register_hook(lambda grad: grad * float("inf"))
        return real(logits, labels)

    monkeypatch.setattr(base_module, "pixel_loss", poisoned)


def test_a_checkpoint_is_written_only_when_every_tensor_is_finite(world: Path, tmp_path: Path, monkeypatch):
    loop = replace(base_config(world).loop, steps=4, checkpoint_every=3)
    _poison_gradients_at(3, monkeypatch)
    with pytest.raises(TrainingError) as info:
        train_base(base_config(world, loop=loop), tmp_path / "first")
    message = str(info.value)
    assert "the weights went bad by step 3 and were not saved" in message and "network tensors hold NaN" in message
    assert "no checkpoint was written yet" in message
    assert not (tmp_path / "first" / "last.pt").exists()

    _poison_gradients_at(3, monkeypatch)
    saved = {}
    run = tmp_path / "second"
    with pytest.raises(TrainingError) as info:
        train_base(base_config(world, loop=replace(loop, checkpoint_every=2)), run,
                   on_event=lambda e: saved.update({e.step: _sha(e.path)}) if isinstance(e, Checkpointed) else None)
    message = str(info.value)
    assert "loss became nan at step 4" in message
    assert f"{run / 'last.pt'} holds the finite weights of step 2" in message
    assert list(saved) == [2] and _sha(run / "last.pt") == saved[2]
    state = load_state(run / "last.pt")  # resumable: every tensor in it is finite
    assert state.step == 2 and all(bool(torch.isfinite(v).all()) for v in state.model.values()
                                   if v.is_floating_point())


def test_a_full_disk_stops_training_saying_what_is_kept(world: Path, tmp_path: Path, monkeypatch):
    """The disk fills up after the first checkpoint: torch.save's own error for the failed write ("unexpected pos",
    raised during the disk's), stops the run with one message naming the checkpoint kept, and --resume, given room,
    finishes it."""
    disk = LimitedDisk(room=1 << 40)  # atomic writes open their temp file through refine_cli.io
    monkeypatch.setattr(io_module, "open", disk.open, raising=False)
    config = base_config(world, loop=replace(base_config(world).loop, steps=6, checkpoint_every=3))
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train_base(config, run, on_event=lambda e: setattr(disk, "room", 0) if isinstance(e, Checkpointed) else None)
    message = str(info.value)
    assert "takes no more files (No space left on device): the run stopped" in message
    assert f"{run / 'last.pt'} holds the finite weights of step 3" in message and "go on with --resume" in message
    assert load_state(run / "last.pt").step == 3 and not list(run.glob(".*.part*"))

    disk.room = 1 << 40
    assert train_base(config, run, resume=True).steps == 6 and load_state(run / "last.pt").step == 6


def test_resume_refuses_a_checkpoint_with_non_finite_weights(world: Path, tmp_path: Path):
    config = base_config(world, loop=replace(base_config(world).loop, steps=2, checkpoint_every=1))
    run = tmp_path / "run"
    train_base(config, run)
    d = torch.load(run / "last.pt", weights_only=True)
    name = next(k for k, v in d["model"].items() if v.is_floating_point())
    d["model"][name] = torch.full_like(d["model"][name], float("nan"))
    torch.save(d, run / "last.pt")  # as refine-cli before this check could write it
    with pytest.raises(TrainingError, match=rf"cannot resume: .*last\.pt \(step 2\) is unusable: 1 of \d+ network "
                                            rf"tensors hold NaN or infinite values, first {name}"):
        train_base(config, run, resume=True)


def test_a_huge_learning_rate_is_caught_as_non_finite(world: Path, tmp_path: Path):
    config = base_config(world, optim=replace(base_config(world).optim, lr=1e30))
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step [2-6]"):
        train_base(config, tmp_path / "run")


def test_stage_hook_trains_only_what_the_network_names():
    class Staged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.front, self.context = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def trainable_parameters(self, stage: str) -> list[nn.Parameter]:
            return list(self.context.parameters()) if stage == "context" else []

    net = Staged()
    freeze_for_stage(net, "context", "staged")
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["context.weight", "context.bias"]
    with pytest.raises(UsageError, match="leaves nothing to train"):
        freeze_for_stage(Staged(), "other", "staged")
    with pytest.raises(UsageError, match="has no training stages"):
        freeze_for_stage(nn.Conv2d(3, 3, 1), "context", "plain")


def test_bad_requests_fail_before_training(world: Path, tmp_path: Path):
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            train_base(base_config(world, loop=LoopConfig(device="cuda")), tmp_path / "a")
    with pytest.raises(UsageError, match="is a refiner"):
        train_base(base_config(world, arch="spn_universal_compact"), tmp_path / "b")
    with pytest.raises(UsageError, match="--amp fp16 needs a CUDA device"):
        train_base(base_config(world, loop=replace(base_config(world).loop, amp="fp16")), tmp_path / "c")
    with pytest.raises(UsageError, match="no dataset given"):
        train_base(base_config(world, data=DataConfig()), tmp_path / "d")
