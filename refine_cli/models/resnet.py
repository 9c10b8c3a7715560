"""The dilated ResNet trunk of torchvision's segmentation models: bottleneck ResNet-50/101/152 whose layer3
and layer4 trade their stride for dilation (output stride 8), key-for-key `conv1, bn1, layer1..layer4`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from refine_cli.errors import UsageError
from refine_cli.models.common import scaled
from refine_cli.models.trunk import TrunkFeatures, load_classification_weights

# Bottlenecks per stage (He et al. 2016, Table 1).
BLOCKS: Mapping[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # a bottleneck's output has 4x its inner width
# torchvision's segmentation builders pass replace_stride_with_dilation=[False, True, True].
DILATE_STAGES = (False, False, True, True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride and dilation: ResNet v1.5 as torchvision), 1x1 expand, plus
    the shortcut (`downsample`: 1x1 conv + BN where the shape changes)."""

    def __init__(self, in_channels: int, inner: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_channels = inner * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


def _stage(
    in_channels: int, inner: int, blocks: int, *, stride: int, dilation: int, first_dilation: int
) -> nn.Sequential:
    # The first block keeps the previous stage's dilation (torchvision's `previous_dilation`); a dilated
    # stage has stride 1 throughout.
    layers = [Bottleneck(in_channels, inner, stride=stride, dilation=first_dilation)]
    layers += [Bottleneck(inner * EXPANSION, inner, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DilatedResNet(nn.Module):
    """Bottleneck ResNet at output stride 8, the layout of torchvision's `resnet50/101(
    replace_stride_with_dilation=[False, True, True])` minus `avgpool` and `fc`.

    `width` scales every stage's channels (`common.scaled`); width 1.0 is exactly torchvision's layout
    (64 stem channels, 256/512/1024/2048 stage outputs). BatchNorm keeps PyTorch's eps 1e-5, momentum 0.1.
    """

    # An ImageNet classification checkpoint (resnet50-0676ba61.pth) uses the trunk's own keys plus `fc.*`.
    imagenet_prefix = ""
    imagenet_head = ("fc.",)

    def __init__(self, *, depth: int = 50, width: float = 1.0) -> None:
        super().__init__()
        if depth not in BLOCKS:
            raise UsageError(f"ResNet depth must be one of {', '.join(map(str, BLOCKS))}, not {depth}")
        self.depth, self.width = depth, width
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels, dilation = stem, 1
        stages = []
        for index, (blocks, dilate) in enumerate(zip(BLOCKS[depth], DILATE_STAGES)):
            inner = scaled(64 * 2**index, width)
            stride = 1 if index == 0 else 2
            first_dilation = dilation
            if dilate:
                dilation, stride = dilation * stride, 1
            stages.append(
                _stage(channels, inner, blocks, stride=stride, dilation=dilation, first_dilation=first_dilation)
            )
            channels = inner * EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.aux_channels = stages[2][-1].bn3.num_features
        self.out_channels = channels
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. 2015 initialisation as torchvision's ResNet (fan_out, ReLU gain); BN starts as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: (N, 3, H, W) float, normalised RGB. Returns `out` = layer4 (N, out_channels, ceil(H/8),
        ceil(W/8)) and `aux` = layer3 (N, aux_channels, same size)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        aux = self.layer3(self.layer2(self.layer1(x)))
        return TrunkFeatures(out=self.layer4(aux), aux=aux)

    def load_imagenet(self, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
        """Load torchvision's ImageNet ResNet checkpoint (`fc.*` ignored); returns the trunk keys set."""
        return load_classification_weights(
            self, state_dict, width=self.width, prefix=self.imagenet_prefix, head=self.imagenet_head,
            checkpoint=f"torchvision ResNet-{self.depth}",
        )
