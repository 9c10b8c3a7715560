"""Shared pieces of the experiment smoke tests: a tiny synthetic world (9 training, 3 validation images of 48 px)
and the options that make every training run of an experiment a couple of steps on 32 px crops.

Torch runs single-threaded here, as in tests/train (two OpenMP threads on a shared 2-core machine spin against
each other)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from refine_cli.config import SynthConfig
from refine_cli.data import generate


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("experiments") / "world"
    generate(root, SynthConfig(n=12, seed=2, height=48, width=48, val_fraction=0.25))
    return root


def tiny(world: Path, tmp: Path, *, steps: int = 2) -> list[str]:
    """Command-line options of a minuscule run of any experiment, writing under `tmp`."""
    return ["--data", str(world), "--out", str(tmp / "results"), "--runs", str(tmp / "runs"), "--steps", str(steps),
            "--batch-size", "2", "--crop-size", "32", "--log-every", "1", "--quiet"]
