"""Tiny random networks shared by the pipeline and refine-command tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_cli.bench.workload import random_checkpoint
from tests import fixtures


@pytest.fixture(scope="session")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pipeline-nets")
    return {
        "base": random_checkpoint("deeplab_largefov_vgg16_compact", folder, width=0.125, fc_channels=32),
        "refiner": random_checkpoint("spn_universal_compact", folder, hidden=4, mid_channels=4),
    }


one_thread = pytest.fixture(scope="package", autouse=True)(fixtures.one_torch_thread)
