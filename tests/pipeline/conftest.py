"""Tiny random networks shared by the pipeline and refine-command tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from refine_cli.bench.workload import random_checkpoint


@pytest.fixture(scope="session")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pipeline-nets")
    return {
        "base": random_checkpoint("deeplab_largefov_vgg16_compact", folder, width=0.125, fc_channels=32),
        "refiner": random_checkpoint("spn_universal_compact", folder, hidden=4, mid_channels=4),
    }


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
