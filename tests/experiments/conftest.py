"""Shared pieces of the experiment smoke tests: a tiny synthetic world (9 training, 3 validation images of 48 px)
and the options that make every training run of an experiment a couple of steps on 32 px crops.

Torch runs single-threaded here (`tests.fixtures.one_torch_thread`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_cli.config import SynthConfig
from tests import fixtures


one_thread = pytest.fixture(scope="package", autouse=True)(fixtures.one_torch_thread)


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.synthetic_world(tmp_path_factory, "experiments",
                                    SynthConfig(n=12, seed=2, height=48, width=48, val_fraction=0.25))


def tiny(world: Path, tmp: Path, *, steps: int = 2) -> list[str]:
    """Command-line options of a minuscule run of any experiment, writing under `tmp`."""
    return ["--data", str(world), "--out", str(tmp / "results"), "--runs", str(tmp / "runs"), "--steps", str(steps),
            "--batch-size", "2", "--crop-size", "32", "--log-every", "1", "--quiet"]
