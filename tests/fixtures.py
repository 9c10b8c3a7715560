"""Fixture bodies shared by several test packages; each package's conftest.py binds the ones it uses, with its own
scope and settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from refine_cli.config import SynthConfig
from refine_cli.data import generate


def one_torch_thread() -> Iterator[None]:
    """Torch single-threaded for the duration: on a 2-core machine shared with other jobs, two OpenMP threads spin
    against each other and a tiny step takes seconds instead of tens of milliseconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_world(tmp_path_factory: pytest.TempPathFactory, name: str, config: SynthConfig) -> Path:
    """A small synthetic dataset (VOC layout) written under a fresh temporary folder."""
    root = tmp_path_factory.mktemp(name) / "world"
    generate(root, config)
    return root


def bundled_checkpoint(name: str) -> Path:
    """weights/<name>.pt of the checkout; fails (never skips) the test when it is missing."""
    from refine_cli import weights

    path = weights.bundled_dir() / f"{name}.pt"
    if not path.is_file():
        pytest.fail(f"bundled checkpoint {path} is missing")
    return path
