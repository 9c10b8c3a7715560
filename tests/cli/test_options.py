"""What the options say without importing the library (their choices, the names in their help) agrees with it."""

from __future__ import annotations

import pytest

from refine_cli import models
from refine_cli.cli.options import DatasetFormat, crf_config_from
from refine_cli.cli.train import BASE_ARCHS, REFINER_ARCHS
from refine_cli.config import CRFConfig
from refine_cli.data import FORMATS
from refine_cli.errors import UsageError


def test_dataset_formats_are_the_layouts_open_dataset_reads():
    assert [f.value for f in DatasetFormat] == list(FORMATS)


def test_the_arch_lists_in_train_help_are_the_registry_s():
    assert list(BASE_ARCHS) == models.names("base")
    assert list(REFINER_ARCHS) == models.names("refiner")


def test_crf_options_override_only_what_is_given():
    config = crf_config_from(3, 40.0, None, None, 0.8)
    assert (config.iterations, config.bilateral_sxy, config.label_confidence) == (3, 40.0, 0.8)
    default = CRFConfig()
    assert (config.bilateral_srgb, config.bilateral_compat) == (default.bilateral_srgb, default.bilateral_compat)
    for sure in (0.0, 1.0):  # a certain label gives the CRF's unary log(0)
        with pytest.raises(UsageError, match="strictly between 0 and 1"):
            crf_config_from(5, None, None, None, sure)
