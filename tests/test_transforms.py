"""Resize rules of `Preprocess`: the size a network runs at for each rule."""

from __future__ import annotations

import pytest

import torch

from refine_cli.transforms import Preprocess, normalize, resized_shape


@pytest.mark.parametrize(("rule", "size", "expected"), [
    ("none", None, (480, 854)),
    ("short_side", 480, (480, 854)),
    ("short_side", 384, (384, 683)),
    ("long_side", 480, (270, 480)),
    ("long_side", 1000, (480, 854)),  # never enlarges
    ("square", 384, (384, 384)),  # EdgeNets' test script: aspect not kept
    ("multiple", 32, (480, 832)),  # EdgeNets' demo: each side down to a multiple of 32
])
def test_resized_shape(rule, size, expected):
    assert resized_shape(480, 854, Preprocess(resize=rule, size=size)) == expected


def test_short_side_keeps_the_long_side_within_its_cap():
    """A thin strip is not enlarged without bound (3000 x 1 at short side 480 would be 1,440,000 x 480 px)."""
    assert resized_shape(3000, 1, Preprocess(resize="short_side", size=480)) == (1920, 1)
    assert resized_shape(100, 1000, Preprocess(resize="short_side", size=480)) == (192, 1920)
    assert resized_shape(480, 1920, Preprocess(resize="short_side", size=480)) == (480, 1920)  # 4:1 is untouched


def test_multiple_never_goes_below_one_multiple():
    assert resized_shape(20, 70, Preprocess(resize="multiple", size=32)) == (32, 64)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown resize rule 'stretch'"):
        resized_shape(10, 10, Preprocess(resize="stretch", size=5))  # type: ignore[arg-type]


def test_normalize_skips_steps_that_change_nothing():
    images = torch.rand(2, 3, 5, 7)
    assert normalize(images, Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))) is images  # no pass, no copy
    pre = Preprocess(color_order="BGR", scale=255.0, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    expected = (images.flip(1) * 255 - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / torch.tensor(
        [2.0, 4.0, 8.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(images, pre), expected)
    std_only = normalize(images, Preprocess(mean=(0.0, 0.0, 0.0), std=(0.5, 0.5, 0.5)))
    torch.testing.assert_close(std_only, images * 2)
