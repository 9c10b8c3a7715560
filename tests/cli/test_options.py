"""What the options say without importing the library (their choices, the names in their help) agrees with it."""

from __future__ import annotations

from refine_cli import models
from refine_cli.cli.options import DatasetFormat
from refine_cli.cli.train import BASE_ARCHS, REFINER_ARCHS
from refine_cli.data import FORMATS


def test_dataset_formats_are_the_layouts_open_dataset_reads():
    assert [f.value for f in DatasetFormat] == list(FORMATS)


def test_the_arch_lists_in_train_help_are_the_registry_s():
    assert list(BASE_ARCHS) == models.names("base", trainable=True)
    assert list(REFINER_ARCHS) == models.names("refiner", trainable=True)
