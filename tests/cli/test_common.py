"""Options several commands share."""

from __future__ import annotations

from refine_cli.cli.common import refiner_side


def test_refiner_side_option_maps_absent_to_the_device_default_and_0_to_full_resolution():
    assert refiner_side(None) == "auto"
    assert refiner_side(0) is None
    assert refiner_side(320) == 320
