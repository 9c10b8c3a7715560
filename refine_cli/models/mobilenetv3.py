"""The MobileNetV3-Large trunk of torchvision's `deeplabv3_mobilenet_v3_large`: the `features` sequence
(stem, 15 inverted residual blocks, 1x1 conv to 960) with the last stage dilated (output stride 16),
key-for-key `0.0.weight, 1.block.0.0.weight, ...`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from refine_cli.models.common import scaled
from refine_cli.models.trunk import TrunkFeatures, load_classification_weights

# torchvision's MobileNetV3 BatchNorm (the TF reference's decay 0.99, eps 1e-3).
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


class Block(NamedTuple):
    """One row of Table 1 of Howard et al. 2019 (MobileNetV3-Large); the input width is the previous row's."""

    kernel: int
    expanded: int
    out: int
    se: bool
    hswish: bool
    stride: int


STEM = 16
LARGE: tuple[Block, ...] = (
    Block(3, 16, 16, False, False, 1),
    Block(3, 64, 24, False, False, 2),
    Block(3, 72, 24, False, False, 1),
    Block(5, 72, 40, True, False, 2),
    Block(5, 120, 40, True, False, 1),
    Block(5, 120, 40, True, False, 1),
    Block(3, 240, 80, False, True, 2),
    Block(3, 200, 80, False, True, 1),
    Block(3, 184, 80, False, True, 1),
    Block(3, 184, 80, False, True, 1),
    Block(3, 480, 112, True, True, 1),
    Block(3, 672, 112, True, True, 1),
    Block(5, 672, 160, True, True, 2),
    Block(5, 960, 160, True, True, 1),
    Block(5, 960, 160, True, True, 1),
)
LAST_EXPANSION = 6  # the final 1x1 conv widens 160 -> 960


def _divisible_by_8(value: float) -> int:
    """Round to the nearest multiple of 8, never more than 10 % below `value` (the MobileNet rounding of
    the TF reference `_make_divisible`, used here for the squeeze width: 72 // 4 = 18 -> 24)."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> optional activation; "same" padding for any dilation."""

    def __init__(
        self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
        activation: type[nn.Module] | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2 * dilation, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gates from the global average: 1x1 down, ReLU, 1x1 up, hard sigmoid (Howard et al. 2019)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * F.hardsigmoid(gate)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when no wider), depthwise kxk (stride or dilation), optional squeeze-excite,
    linear 1x1 project; the input is added back when the shape is unchanged."""

    def __init__(self, cin: int, spec: Block, *, width: float, dilation: int) -> None:
        super().__init__()
        expanded, cout = scaled(spec.expanded, width), scaled(spec.out, width)
        act = nn.Hardswish if spec.hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, activation=act))
        # A dilated block keeps stride 1 (torchvision: `stride = 1 if dilation > 1`).
        layers.append(ConvBNAct(expanded, expanded, spec.kernel, stride=1 if dilation > 1 else spec.stride,
                                dilation=dilation, groups=expanded, activation=act))
        if spec.se:
            layers.append(SqueezeExcite(expanded, _divisible_by_8(expanded // 4)))
        layers.append(ConvBNAct(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and cin == cout
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Trunk(nn.Sequential):
    """MobileNetV3-Large `features` at output stride 16: a stride-2 block that would reach 32 dilates
    instead, and so does the rest of its stage (torchvision's `mobilenet_v3_large(dilated=True)`).

    `out` is the last 1x1 conv (960 channels at width 1.0); `aux` is the block that first reaches stride
    8 (index 4, 40 channels), torchvision's `stage_indices[-4]` choice for the auxiliary head.
    `width` scales every layer (`common.scaled`); width 1.0 is exactly torchvision's layout.
    """

    # An ImageNet classification checkpoint (mobilenet_v3_large-*.pth) stores these as `features.*`.
    imagenet_prefix = "features."
    imagenet_head = ("classifier.",)
    output_stride = 16
    aux_stride = 8

    def __init__(self, *, width: float = 1.0) -> None:
        stem = scaled(STEM, width)
        layers: list[nn.Module] = [ConvBNAct(3, stem, 3, stride=2, activation=nn.Hardswish)]
        stride, dilation, channels, aux_index = 2, 1, stem, -1
        for spec in LARGE:
            if stride * spec.stride > self.output_stride:
                dilation *= spec.stride
            else:
                stride *= spec.stride
            block = InvertedResidual(channels, spec, width=width, dilation=dilation)
            layers.append(block)
            channels = block.out_channels
            if aux_index < 0 and stride == self.aux_stride:
                aux_index = len(layers) - 1
        layers.append(ConvBNAct(channels, LAST_EXPANSION * channels, 1, activation=nn.Hardswish))
        super().__init__(*layers)
        self.width = width
        self.aux_index = aux_index
        self.aux_channels = layers[aux_index].out_channels
        self.out_channels = LAST_EXPANSION * channels
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's MobileNetV3 initialisation: He normal (fan_out), zero biases, BN as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: (N, 3, H, W) float, normalised RGB. Returns `out` (N, out_channels, ceil(H/16), ceil(W/16))
        and `aux` (N, aux_channels, ceil(H/8), ceil(W/8))."""
        aux = x
        for index, layer in enumerate(self):
            x = layer(x)
            if index == self.aux_index:
                aux = x
        return TrunkFeatures(out=x, aux=aux)

    def load_imagenet(self, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
        """Load torchvision's ImageNet MobileNetV3-Large checkpoint (`classifier.*` ignored); returns the
        trunk keys set."""
        return load_classification_weights(
            self, state_dict, width=self.width, prefix=self.imagenet_prefix, head=self.imagenet_head,
            checkpoint="torchvision MobileNetV3-Large",
        )
