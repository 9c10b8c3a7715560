"""Segmentation heads in torchvision's key layout: the FCN head (3x3 conv, BN, ReLU, dropout, 1x1) and the
DeepLabV3 head (ASPP with image pooling and projection, 3x3 conv, 1x1). BatchNorm keeps PyTorch's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Chen et al. 2017 (DeepLabV3), section 3.3: rates (6, 12, 18) at output stride 16, doubled at output
# stride 8. torchvision uses (12, 24, 36) for every backbone, MobileNetV3 (stride 16) included.
ASPP_RATES = (12, 24, 36)
ASPP_CHANNELS = 256


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class FCNHead(nn.Sequential):
    """3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 conv to classes (torchvision's FCNHead)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inner = in_channels // 4
        super().__init__(*_conv_bn_relu(in_channels, inner, 3), nn.Dropout(0.1), nn.Conv2d(inner, num_classes, 1))


class ImagePooling(nn.Sequential):
    """The ASPP image-level branch: global average, 1x1 conv, BN, ReLU, spread back over the map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Bilinear upsampling of a 1x1 map (torchvision) is this broadcast.
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling;
    concatenated and projected by 1x1 conv, BN, ReLU, dropout 0.5."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int) -> None:
        super().__init__()
        branches = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, rate)) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(0.5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, h, w) -> (N, out_channels, h, w)."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, 3x3 conv, BN, ReLU, 1x1 conv to classes (torchvision's DeepLabHead). `channels` is the ASPP
    width (256 in the paper and torchvision; smaller for compact models)."""

    def __init__(
        self, in_channels: int, num_classes: int, *, rates: Sequence[int] = ASPP_RATES, channels: int = ASPP_CHANNELS
    ) -> None:
        super().__init__(
            ASPP(in_channels, rates, channels),
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, num_classes, 1),
        )
