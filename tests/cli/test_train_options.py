"""`train base` and `train refiner` share one optimizer and loop option block: each command's defaults are its
config's, and every option lands in the config field of the same name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from refine_cli.cli import app
from refine_cli.cli import train as train_cli
from refine_cli.config import BaseTrainConfig, LoopConfig, OptimConfig, RefinerTrainConfig

runner = CliRunner()

GIVEN = ["--optimizer", "adamw", "--lr", "0.25", "--momentum", "0.5", "--weight-decay", "0.125", "--poly-power", "2",
         "--grad-clip", "3", "--steps", "7", "--seed", "11", "--device", "cpu", "--amp", "off", "--no-deterministic",
         "--workers", "0", "--log-every", "2", "--checkpoint-every", "5", "--val-every", "0"]
OPTIM = dict(optimizer="adamw", lr=0.25, momentum=0.5, weight_decay=0.125, poly_power=2.0, grad_clip=3.0)
LOOP = dict(steps=7, seed=11, device="cpu", amp="off", deterministic=False, workers=0, log_every=2,
            checkpoint_every=5, val_every=0)


def _configs(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[OptimConfig, LoopConfig]:
    seen: list[Any] = []
    monkeypatch.setattr(train_cli, "_run", lambda train, config, *rest: seen.append(config))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return seen[0].optim, seen[0].loop


@pytest.mark.parametrize("command, defaults", [
    (["train", "base"], BaseTrainConfig()),
    (["train", "refiner", "--base", "some_base"], RefinerTrainConfig()),
])
def test_optimizer_and_loop_options_fill_the_configs(command: list[str], defaults: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    args = [*command, "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert _configs(monkeypatch, args) == (defaults.optim, defaults.loop)
    assert _configs(monkeypatch, [*args, *GIVEN]) == (replace(defaults.optim, **OPTIM), replace(defaults.loop, **LOOP))
