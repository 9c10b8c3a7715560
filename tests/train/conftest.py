"""Shared pieces of the training tests: a tiny synthetic world (8 training, 2 validation images of 64 px), tiny
network settings, and one trained base network the refiner tests start from.

Torch runs single-threaded here (`tests.fixtures.one_torch_thread`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from refine_cli.config import (
    BaseAugmentConfig,
    BaseTrainConfig,
    CropConfig,
    DataConfig,
    LoopConfig,
    OptimConfig,
    RefinerTrainConfig,
    SynthConfig,
)
from refine_cli.train import TrainResult, train_base
from tests import fixtures

TINY_BASE_ARCH = "deeplab_largefov_vgg16_compact"
TINY_BASE_ARGS = {"width": 0.125, "fc_channels": 32}
TINY_REFINER_ARCH = "spn_universal_compact"
# Without BatchNorm: two gloo processes then train exactly as one (PyTorch has no CPU SyncBatchNorm).
TINY_REFINER_ARGS = {"guidance_width": 0.125, "guidance_batch_norm": False, "hidden": 8, "mid_channels": 8}


one_thread = pytest.fixture(scope="package", autouse=True)(fixtures.one_torch_thread)


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.synthetic_world(tmp_path_factory, "train",
                                    SynthConfig(n=10, seed=5, height=64, width=64, val_fraction=0.2))


def base_config(world: Path, **changes: Any) -> BaseTrainConfig:
    """A tiny base run: compact LargeFOV at 1/8 width, 4 crops of 48 px a step, a few steps, no workers."""
    config = BaseTrainConfig(
        arch=TINY_BASE_ARCH, arch_args=dict(TINY_BASE_ARGS), data=DataConfig(root=str(world)), batch_size=4,
        augment=BaseAugmentConfig(crop_size=48, scale_min=0.75, scale_max=1.25, flip=True),
        optim=OptimConfig(optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=5e-4, poly_power=0.9, grad_clip=0.0),
        loop=LoopConfig(steps=6, seed=3, device="cpu", workers=0, log_every=1, checkpoint_every=3, val_every=0),
    )
    return replace(config, **changes)


def refiner_config(world: Path, base: Path, probs_dir: Path, **changes: Any) -> RefinerTrainConfig:
    """A tiny refiner run: compact universal SPN, 2 images x 2 crops of 32 px a step."""
    config = RefinerTrainConfig(
        arch=TINY_REFINER_ARCH, arch_args=dict(TINY_REFINER_ARGS), base=str(base),
        data=DataConfig(root=str(world)), images_per_batch=2, crop=CropConfig(size=32, crops_per_image=2),
        probs_dir=str(probs_dir),
        optim=OptimConfig(optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, poly_power=0.5, grad_clip=1000.0),
        loop=LoopConfig(steps=3, seed=0, device="cpu", workers=0, log_every=1, checkpoint_every=3, val_every=0),
    )
    return replace(config, **changes)


@pytest.fixture(scope="package")
def trained_base(world: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The overfit case: 30 Adam steps on the 8 training images seen whole (no rescale, no flip), validated at
    the end. Its model.pt is the base network of the refiner tests."""
    config = base_config(
        world, data=DataConfig(root=str(world), val_split="val"),
        augment=BaseAugmentConfig(crop_size=64, scale_min=1.0, scale_max=1.0, flip=False),
        optim=OptimConfig(optimizer="adam", lr=3e-3, momentum=0.9, weight_decay=0.0, poly_power=0.9, grad_clip=0.0),
        loop=LoopConfig(steps=30, seed=0, device="cpu", workers=0, log_every=5, checkpoint_every=10, val_every=20),
    )
    return train_base(config, tmp_path_factory.mktemp("runs") / "base")
