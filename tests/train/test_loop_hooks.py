"""The step loop's two hooks: a network's `training_scalars()` go into every train line of metrics.jsonl (the
adaptive receptive field's learned factor), and a task's `param_groups()` give a parameter its own learning-rate
scale and weight decay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from refine_cli import models, weights
from refine_cli.config import BaseTrainConfig
from refine_cli.train import BaseTask, TrainResult, load_state, run_training, train_base
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn
from refine_cli.train.metrics_log import read_records
from tests.train.conftest import TINY_BASE_ARGS, base_config

ADAPTIVE = {**TINY_BASE_ARGS, "adaptive_rf": True, "rf_init": 1.3}
F0 = float(torch.tensor(1.3))  # f's starting value as the float32 parameter holds it


@pytest.mark.parametrize("arch", ["fcn8s_vgg16_compact", "deeplab_largefov_vgg16_compact",
                                  "dilated_frontend_vgg16_compact", "parsenet_vgg16_compact"])
def test_networks_with_an_adaptive_field_report_their_factor(arch: str):
    small = {"width": 0.125, "fc_channels": 8}
    assert models.build(arch, num_classes=3, **small).training_scalars() == {}
    net = models.build(arch, num_classes=3, adaptive_rf=True, rf_init=0.7, **small)
    assert net.training_scalars() == {"rf_factor": pytest.approx(0.7)}
    with torch.no_grad():
        net.rf.factor.fill_(1.9)
    assert net.training_scalars()["rf_factor"] == pytest.approx(1.9)


def test_metrics_lines_carry_the_learned_factor(world: Path, tmp_path: Path, trained_base: TrainResult):
    result = train_base(base_config(world, arch_args=dict(ADAPTIVE)), tmp_path / "run")
    train = [r for r in read_records(result.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    factors = [r["rf_factor"] for r in train]
    assert len(factors) == 6 and all(isinstance(f, float) for f in factors)
    assert factors[0] != F0  # f learns with the weights (one SGD step moves it)
    final = float(weights.load_checkpoint(result.model_path).state_dict["rf.factor"])
    assert factors[-1] == pytest.approx(final)  # the last line holds f after the last step
    # A network without the hook (or with nothing to say) adds nothing.
    plain = [r for r in read_records(trained_base.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert plain and all("rf_factor" not in r for r in plain)


class _SplitTask(BaseTask):
    """f in a group of its own with a learning-rate scale and no weight decay."""

    def __init__(self, config: BaseTrainConfig, info: DistInfo, emit: EventFn, scale: float) -> None:
        super().__init__(config, info, emit)
        self.scale = scale

    def param_groups(self) -> list[dict[str, Any]]:
        f = self.model.rf.factor
        return [{"params": [p for p in self.trainable_parameters() if p is not f]},
                {"params": [f], "lr_scale": self.scale, "weight_decay": 0.0}]


def _train_split(world: Path, run: Path, scale: float) -> tuple[float, dict[str, Any]]:
    config = base_config(world, arch_args=dict(ADAPTIVE))
    run_training(config=config, run_dir=run, build_task=lambda info, emit: _SplitTask(config, info, emit, scale))
    state = load_state(run / "last.pt")
    return float(state.model["rf.factor"]), state.optimizer


def test_param_groups_scale_the_learning_rate_of_their_parameters(world: Path, tmp_path: Path):
    frozen, optimizer = _train_split(world, tmp_path / "zero", 0.0)
    assert frozen == F0  # lr x 0: f never moves while the other weights train
    weights_group, f_group = optimizer["param_groups"]
    assert f_group["lr"] == 0.0 and weights_group["lr"] > 0
    assert f_group["weight_decay"] == 0.0 and weights_group["weight_decay"] == pytest.approx(5e-4)

    moved, optimizer = _train_split(world, tmp_path / "triple", 3.0)
    assert moved != F0
    weights_group, f_group = optimizer["param_groups"]
    assert f_group["lr"] == pytest.approx(3.0 * weights_group["lr"])  # the scale follows the poly schedule
