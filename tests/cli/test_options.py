"""The option definitions commands share (refine_cli.cli.options) agree with the library they describe."""

from __future__ import annotations

from refine_cli.cli.options import DatasetFormat
from refine_cli.data import FORMATS


def test_dataset_formats_are_the_layouts_open_dataset_reads():
    assert [f.value for f in DatasetFormat] == list(FORMATS)
