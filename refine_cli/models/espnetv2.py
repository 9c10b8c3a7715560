"""ESPNetv2 (Mehta et al., "ESPNetv2: A Light-weight, Power Efficient, and General Purpose Convolutional Neural
Network", CVPR 2019) for segmentation: the EESP encoder (EESPNet without its last level and classifier) and the
bottom-up decoder of efficient pyramid pooling, key for key with sacmehta/EdgeNets' `ESPNetv2Segmentation`
(`base_net.level1.conv.weight`, ..., `bu_dec_l4.merge_layer.3.bias`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.common import SegOutput

# Encoder widths per level (1/2 .. 1/16) for each width multiplier s (EdgeNets, model/classification/espnetv2_config).
WIDTHS: dict[float, tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
REPEATS = (3, 7)  # EESP units at 1/8 and 1/16 after each down-sampler
BRANCHES = 4  # K, parallel depth-wise branches of every EESP unit
# Largest effective kernel ("receptive field limit") of an EESP unit per level; branches that would exceed it fall
# back to a 3x3 kernel (paper, section 3.2; EdgeNets' recept_limit).
RECEPTIVE_LIMITS = (13, 11, 9, 7)
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)  # EfficientPyrPool, largest first
PYRAMID_MIN = 5  # no pyramid level is pooled below 5 x 5


class ConvBNPReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> PReLU as attributes `conv`, `bn`, `act` (the encoder's key layout)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm (`conv`, `bn`)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BNPReLU(nn.Module):
    """BatchNorm -> PReLU (`bn`, `act`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DepthwiseConv(nn.Module):
    """A bias-free depth-wise 3x3 conv, dilated and optionally strided, held as `.conv`."""

    def __init__(self, channels: int, *, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=dilation, dilation=dilation,
                              groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def branch_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Dilation of each EESP branch, ascending: branch i would see a (3 + 2i) x (3 + 2i) field (dilation i + 1);
    fields above the limit fall back to 3 x 3 (dilation 1)."""
    sizes = sorted(3 + 2 * i if 3 + 2 * i <= receptive_limit else 3 for i in range(branches))
    return [(k - 1) // 2 for k in sizes]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid unit: grouped 1x1 reduce to n = cout / K maps, K depth-wise dilated 3x3
    branches summed hierarchically (branch k adds branch k-1's output), concatenation, BatchNorm + PReLU, grouped
    1x1 expand with BatchNorm. At stride 1 the input is added and a PReLU follows; at stride 2 (inside `DownSampler`)
    the expanded maps are returned as they are (`module_act` exists there but is not applied, as released)."""

    def __init__(self, cin: int, cout: int, *, stride: int, receptive_limit: int, branches: int = BRANCHES) -> None:
        super().__init__()
        n = cout // branches
        if n * branches != cout:
            raise ValueError(f"EESP needs cout divisible by {branches}; got {cout}")
        self.stride = stride
        self.proj_1x1 = ConvBNPReLU(cin, n, 1, groups=branches)
        self.spp_dw = nn.ModuleList(DepthwiseConv(n, stride=stride, dilation=d)
                                    for d in branch_dilations(branches, receptive_limit))
        self.conv_1x1_exp = ConvBN(cout, cout, 1, groups=branches)
        self.br_after_cat = BNPReLU(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, H', W'), H' = ceil(H / stride); the residual needs cin == cout."""
        reduced = self.proj_1x1(x)
        outputs = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            outputs.append(branch(reduced) + outputs[-1])
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(outputs, 1)))
        if self.stride == 2:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class DownSampler(nn.Module):
    """Halves the resolution: [3x3 average pool of x, strided EESP of x] concatenated, plus a projection of the input
    image pooled to the same size ("input reinforcement": 3x3 conv + BN + PReLU, 1x1 conv + BN), then PReLU."""

    def __init__(self, cin: int, cout: int, *, receptive_limit: int, image_channels: int = 3) -> None:
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, receptive_limit=receptive_limit)
        self.inp_reinf = nn.Sequential(ConvBNPReLU(image_channels, image_channels, 3),
                                       ConvBN(image_channels, cout, 1))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x: (N, cin, H, W); image: the input image average-pooled to (ceil(H / 2), ceil(W / 2)) ->
        (N, cout, ceil(H / 2), ceil(W / 2))."""
        pooled = F.avg_pool2d(x, 3, stride=2, padding=1)
        out = torch.cat([pooled, self.eesp(x)], 1) + self.inp_reinf(image)
        return self.act(out)


class EESPNetEncoder(nn.Module):
    """EESPNet's levels 1-4 (output strides 2, 4, 8, 16); level 5 and the ImageNet classifier are not part of the
    segmentation network."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        limits = RECEPTIVE_LIMITS
        self.level1 = ConvBNPReLU(3, w1, 3, stride=2)
        self.level2_0 = DownSampler(w1, w2, receptive_limit=limits[0])
        self.level3_0 = DownSampler(w2, w3, receptive_limit=limits[1])
        self.level3 = nn.ModuleList(EESP(w3, w3, stride=1, receptive_limit=limits[2]) for _ in range(REPEATS[0]))
        # EdgeNets builds the level-4 down-sampler with the level-3 units' limit (limits[2], not limits[3]).
        self.level4_0 = DownSampler(w3, w4, receptive_limit=limits[2])
        self.level4 = nn.ModuleList(EESP(w4, w4, stride=1, receptive_limit=limits[3]) for _ in range(REPEATS[1]))
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised image -> features at 1/2, 1/4, 1/8, 1/16 (each side ceil-halved per level)."""
        # The image pyramid that input reinforcement adds at each down-sampler (3x3 average pools, stride 2).
        images = []
        pooled = x
        for _ in range(4):
            pooled = F.avg_pool2d(pooled, 3, stride=2, padding=1)
            images.append(pooled)
        l1 = self.level1(x)
        l2 = self.level2_0(l1, images[1])
        l3 = self.level3_0(l2, images[2])
        for unit in self.level3:
            l3 = unit(l3)
        l4 = self.level4_0(l3, images[3])
        for unit in self.level4:
            l4 = unit(l4)
        return l1, l2, l3, l4


class SeqConvBNPReLU(nn.Module):
    """conv -> BatchNorm -> PReLU as `cbr.0`, `cbr.1`, `cbr.2` (the decoder's key layout)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBNPReLU(nn.Module):
    """BatchNorm -> PReLU as `br.0`, `br.1`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleave `groups` blocks of channels: channel g * m + i moves to i * groups + g."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class EfficientPyramidPool(nn.Module):
    """1x1 projection to a few maps, a depth-wise 3x3 conv on each of them at five scales (2, 1.5, 1, 0.5 and 0.1
    times the map's size, at least 5 x 5; bilinear with aligned corners and adaptive average pooling move between
    sizes), channel shuffle, a grouped 3x3 merge and a 1x1 conv to `cout` (followed by BatchNorm + PReLU except in
    the last layer, whose 1x1 conv has a bias instead)."""

    def __init__(self, cin: int, proj: int, cout: int, *, last: bool = False) -> None:
        super().__init__()
        levels = len(PYRAMID_SCALES)
        self.projection_layer = SeqConvBNPReLU(cin, proj, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, padding=1, groups=proj, bias=False)
                                    for _ in PYRAMID_SCALES)
        self.merge_layer = nn.Sequential(
            SeqBNPReLU(proj * levels),
            ChannelShuffle(levels),
            SeqConvBNPReLU(proj * levels, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=last),
        )
        self.br = None if last else SeqBNPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, H, W)."""
        x = self.projection_layer(x)
        height, width = x.shape[-2:]
        levels = []
        for scale, stage in zip(PYRAMID_SCALES, self.stages):
            size = (max(PYRAMID_MIN, math.ceil(height * scale)), max(PYRAMID_MIN, math.ceil(width * scale)))
            if scale > 1.0:
                y = F.interpolate(x, size, mode="bilinear", align_corners=True)
                y = F.adaptive_avg_pool2d(stage(y), (height, width))
            elif scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, size))
                y = F.interpolate(y, (height, width), mode="bilinear", align_corners=True)
            else:
                y = stage(x)
            levels.append(y)
        out = self.merge_layer(torch.cat(levels, 1))
        return out if self.br is None else self.br(out)


class EfficientPWConv(nn.Module):
    """Projects an encoder skip to the decoder's width: a grouped 3x3 conv + BN + PReLU (gcd(cin, cout) groups),
    gated per channel by a sigmoid of a 1x1 conv of the global average."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = SeqConvBNPReLU(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear with aligned corners to `like`'s size: x2 when sizes are multiples of 16 (the released `scale_factor
    2`, which gives the same values), and the right size for any other input."""
    return F.interpolate(x, like.shape[-2:], mode="bilinear", align_corners=True)


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 segmentation: the EESP encoder, then three decoder stages that each up-sample by 2, add a gated
    projection of the encoder's features at that size, apply BN + PReLU and an efficient pyramid pool; logits at
    1/2 resolution are resized (bilinear, aligned corners) to the input.

    num_classes: output channels. s: the encoder's width multiplier (a key of `WIDTHS`).
    decoder_width: 16 for the released PASCAL VOC and Cityscapes models, 32 for COCO; the decoder stages are
        4, 3 and 2 times it wide, and every pyramid projects to min(num_classes // 2, decoder_width) maps.
    """

    def __init__(self, *, num_classes: int, s: float = 2.0, decoder_width: int = 16) -> None:
        super().__init__()
        if s not in WIDTHS:
            raise ValueError(f"ESPNetv2 width s={s} is not defined; choose one of {sorted(WIDTHS)}")
        widths = WIDTHS[s]
        self.base_net = EESPNetEncoder(widths)
        d1, d2, d3 = 4 * decoder_width, 3 * decoder_width, 2 * decoder_width
        proj = min(num_classes // 2, decoder_width)
        self.bu_dec_l1 = EfficientPyramidPool(widths[3], proj, d1)
        self.bu_dec_l2 = EfficientPyramidPool(d1, proj, d2)
        self.bu_dec_l3 = EfficientPyramidPool(d2, proj, d3)
        self.bu_dec_l4 = EfficientPyramidPool(d3, proj, num_classes, last=True)
        self.merge_enc_dec_l2 = EfficientPWConv(widths[2], d1)
        self.merge_enc_dec_l3 = EfficientPWConv(widths[1], d2)
        self.merge_enc_dec_l4 = EfficientPWConv(widths[0], d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) float, RGB in [0, 1] normalised with the ImageNet mean/std (the released PASCAL VOC
        model) -> (N, num_classes, H, W) float logits. Any H, W >= 1; the released models ran at multiples of 32."""
        l1, l2, l3, l4 = self.base_net(x)
        y = self.bu_dec_l1(l4)
        y = self.bu_dec_l2(self.bu_br_l2(_upsample_to(y, l3) + self.merge_enc_dec_l2(l3)))
        y = self.bu_dec_l3(self.bu_br_l3(_upsample_to(y, l2) + self.merge_enc_dec_l3(l2)))
        y = self.bu_dec_l4(self.bu_br_l4(_upsample_to(y, l1) + self.merge_enc_dec_l4(l1)))
        return F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=True)

    def forward_train(self, x: torch.Tensor) -> SegOutput:
        """Training forward: the same logits (no auxiliary head)."""
        return SegOutput(self(x))


def espnetv2(*, num_classes: int = 21, s: float = 2.0, decoder_width: int = 16) -> ESPNetv2Segmentation:
    """ESPNetv2 segmentation network (EdgeNets' `espnetv2_seg`); see `ESPNetv2Segmentation`."""
    return ESPNetv2Segmentation(num_classes=num_classes, s=s, decoder_width=decoder_width)
