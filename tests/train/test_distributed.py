"""Two CPU processes under torchrun (gloo): both finish, rank 0 alone writes the run folder, the probability cache
is computed in shards, and the weights equal a one-process run with the same global batch (the data order and
the loss normalisation do not depend on how the batch is split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refine_cli import weights
from refine_cli.config import DataConfig, OptimConfig
from refine_cli.train import TrainResult, train_refiner
from refine_cli.train.metrics_log import read_records
from tests.train.conftest import TINY_REFINER_ARCH, TINY_REFINER_ARGS, refiner_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_match_one(world: Path, trained_base: TrainResult, tmp_path: Path):
    probs, steps = tmp_path / "probs", 3
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "refine_cli", "train", "refiner",
        "--base", str(trained_base.model_path), "--data", str(world), "--val-split", "val",
        "--out", str(tmp_path / "ddp"), "--arch", TINY_REFINER_ARCH,
        *[a for k, v in TINY_REFINER_ARGS.items() for a in ("--arch-arg", f"{k}={json.dumps(v)}")],
        "--images-per-batch", "2", "--crops-per-image", "2", "--crop-size", "32", "--probs-dir", str(probs),
        "--optimizer", "sgd", "--lr", "0.01", "--weight-decay", "0", "--steps", str(steps), "--seed", "0",
        "--device", "cpu", "--workers", "0", "--log-every", "1", "--checkpoint-every", "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("trained 3 steps") == 1  # rank 0 alone reports
    run = tmp_path / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["curve.png", "last.pt", "metrics.jsonl", "model.pt"]
    assert [r["step"] for r in read_records(run / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["sampler"]["world_size"] == 2 and len(state["rng"]["torch"]) == 2
    assert all(not k.startswith("module.") for k in state["model"])

    # SGD: Adam's g / sqrt(v) would magnify the summation-order rounding of near-zero gradients.
    config = refiner_config(world, trained_base.model_path, probs, data=DataConfig(root=str(world), val_split="val"),
                            optim=OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0))
    single = train_refiner(config, tmp_path / "single")
    a = weights.load_checkpoint(run / "model.pt").state_dict
    b = weights.load_checkpoint(single.model_path).state_dict
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    losses = [[r["loss"] for r in read_records(p / "metrics.jsonl") if r["kind"] == "train"]
              for p in (run, single.run_dir)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    val = [r for r in read_records(run / "metrics.jsonl") if r["kind"] == "val"][-1]
    assert val["miou"] == pytest.approx(single.val["miou"], abs=1e-6)  # sharded validation, merged matrices
