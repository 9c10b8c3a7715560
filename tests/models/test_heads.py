"""The segmentation heads: shapes at any map size, the image-pooling branch, widths."""

from __future__ import annotations

import pytest
import torch

from refine_cli.models.heads import ASPP, DeepLabHead, FCNHead, ImagePooling


def test_image_pooling_spreads_the_global_feature() -> None:
    torch.manual_seed(0)
    branch = ImagePooling(8, 4).eval()
    x = torch.randn(2, 8, 5, 7)
    y = branch(x)
    assert y.shape == (2, 4, 5, 7)
    expected = branch(x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(y, expected.expand_as(y))


@pytest.mark.parametrize("size", [(1, 1), (5, 9)])
def test_deeplab_head_keeps_the_map_size(size: tuple[int, int]) -> None:
    # Rates up to 36 on maps far smaller than the rate: padding keeps the size.
    head = DeepLabHead(16, 3, channels=8).eval()
    assert head(torch.randn(1, 16, *size)).shape == (1, 3, *size)


def test_aspp_branches() -> None:
    aspp = ASPP(16, (2, 3, 4), 8)
    assert [b[0].dilation[0] for b in aspp.convs[1:4]] == [2, 3, 4]
    assert aspp.project[0].in_channels == 5 * 8


def test_fcn_head_width_is_a_quarter_of_its_input() -> None:
    head = FCNHead(64, 5).eval()
    assert head[0].out_channels == 16
    assert head(torch.randn(2, 64, 3, 4)).shape == (2, 5, 3, 4)
