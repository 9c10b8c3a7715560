"""ESPNet (Mehta et al., "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic Segmentation",
ECCV 2018): the ESP module, the ESPNet-C encoder and the light decoder of the released `ESPNet(classes, p, q)`
(sacmehta/ESPNet, train/Model.py), key for key: `encoder.level1.conv.weight`, ..., `classifier.weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.common import SegOutput

# Every BatchNorm of the released ESPNet uses eps 1e-3.
BN_EPS = 1e-3
# The ESP module's five parallel branches: 3x3 convolutions dilated 2^0 .. 2^4 (paper, section 3.1).
DILATIONS = (1, 2, 4, 8, 16)
STEM = 16  # channels of the first strided conv


class Conv(nn.Module):
    """A bias-free k x k conv ("same" padding at any dilation), held as `.conv` as in the released key layout."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2 * dilation,
                              dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BNPReLU(nn.Module):
    """BatchNorm then a per-channel PReLU (`bn`, `act`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConvBNPReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> PReLU (`conv`, `bn`, `act`)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SpatialPyramid(nn.Module):
    """The ESP module's reduce-split-transform-merge (paper, Fig. 1b and 3): `c1` reduces to n = cout // 5 maps
    (a 1x1 conv, or a strided 3x3 when the module down-samples), five dilated 3x3 convs `d1 .. d16` transform them
    (d1 gives the remainder, cout - 4n, so the widths sum to cout), and the dilated outputs are summed
    hierarchically (d2, d2+d4, d2+d4+d8, ...) before concatenation, which removes the gridding of large
    dilations."""

    def __init__(self, cin: int, cout: int, *, stride: int) -> None:
        super().__init__()
        n = cout // 5
        self.c1 = Conv(cin, n, 3 if stride == 2 else 1, stride=stride)
        for d in DILATIONS:
            setattr(self, f"d{d}", Conv(n, cout - 4 * n if d == 1 else n, 3, dilation=d))

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, H', W') before normalisation (H' = ceil(H / 2) when down-sampling)."""
        reduced = self.c1(x)
        merged = [self.d1(reduced)]
        total = None
        for d in DILATIONS[1:]:
            branch = getattr(self, f"d{d}")(reduced)
            total = branch if total is None else total + branch
            merged.append(total)
        return torch.cat(merged, 1)


class ESPBlock(SpatialPyramid):
    """ESP module at stride 1; with `residual` the input is added before BatchNorm + PReLU (`bn.bn`, `bn.act`)."""

    def __init__(self, cin: int, cout: int, *, residual: bool = True) -> None:
        super().__init__(cin, cout, stride=1)
        self.bn = BNPReLU(cout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, H, W); residual blocks need cin == cout."""
        y = self.pyramid(x)
        return self.bn(x + y if self.residual else y)


class ESPDown(SpatialPyramid):
    """Strided ESP module: halves the resolution, no residual; BatchNorm + PReLU as `bn`, `act`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, stride=2)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, ceil(H / 2), ceil(W / 2))."""
        return self.act(self.bn(self.pyramid(x)))


def _image_pool(x: torch.Tensor) -> torch.Tensor:
    """The input image down-sampled by 2 (3x3 average, stride 2, padding 1), fed again to deeper levels."""
    return F.avg_pool2d(x, 3, stride=2, padding=1)


class ESPNetEncoder(nn.Module):
    """ESPNet-C: a strided conv (1/2), an ESP down-sampler and `p` ESP modules (1/4), another down-sampler and `q`
    modules (1/8), the down-sampled image concatenated in at 1/2 and 1/4, and a 1x1 classifier. Its layers are run
    by `ESPNet.forward`, which needs their intermediate outputs."""

    def __init__(self, classes: int, p: int, q: int) -> None:
        super().__init__()
        self.level1 = ConvBNPReLU(3, STEM, 3, stride=2)
        self.b1 = BNPReLU(STEM + 3)
        self.level2_0 = ESPDown(STEM + 3, 64)
        self.level2 = nn.ModuleList(ESPBlock(64, 64) for _ in range(p))
        self.b2 = BNPReLU(128 + 3)
        self.level3_0 = ESPDown(128 + 3, 128)
        self.level3 = nn.ModuleList(ESPBlock(128, 128) for _ in range(q))
        self.b3 = BNPReLU(256)
        self.classifier = Conv(256, classes, 1)


def _crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An up-sampled map cut to the size of the map it joins: a stride-2 conv gives ceil(H / 2), so doubling gives
    one row or column too many for odd sizes (for sizes divisible by 8 this is a no-op)."""
    return x[..., : like.shape[-2], : like.shape[-1]]


class ESPNet(nn.Module):
    """ESPNet with the released light decoder: the encoder's 1/8 class maps are up-sampled by learned 2x2
    transposed convs and fused with class projections of the 1/4 features (through an ESP module) and with the 1/2
    features, to logits at the input size.

    num_classes: output channels of the last transposed conv.
    decoder_channels: width of the encoder's classifier and the decoder (the released nets use the class count of
        their training data, e.g. 12 for CamVid with void; a checkpoint that drops outputs keeps this width).
        Default: num_classes, and at least 5, since the decoder's ESP module splits its width five ways.
    p, q: ESP modules at 1/4 and 1/8 resolution.
    """

    def __init__(self, *, num_classes: int, p: int = 2, q: int = 8, decoder_channels: int | None = None) -> None:
        super().__init__()
        c = decoder_channels or max(num_classes, len(DILATIONS))
        if c < len(DILATIONS):
            raise ValueError(f"ESPNet's decoder needs at least {len(DILATIONS)} channels; got {c}")
        self.encoder = ESPNetEncoder(c, p, q)
        self.level3_C = Conv(128 + 3, c, 1)
        self.br = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv = ConvBNPReLU(STEM + 3 + c, c, 3)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c), ESPBlock(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), BNPReLU(c))
        self.classifier = nn.ConvTranspose2d(c, num_classes, 2, stride=2, bias=False)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) float, normalised as the checkpoint's preprocessing says (the CamVid release: BGR,
        (x - mean) / std on 0..255, then / 255) -> (N, num_classes, H, W) float logits. Any H, W >= 1."""
        enc = self.encoder
        half, quarter = _image_pool(x), _image_pool(_image_pool(x))
        l1 = enc.b1(torch.cat([enc.level1(x), half], 1))  # 1/2, 19 channels
        l2_0 = enc.level2_0(l1)
        l2 = l2_0
        for block in enc.level2:
            l2 = block(l2)
        l2 = enc.b2(torch.cat([l2, l2_0, quarter], 1))  # 1/4, 131 channels
        l3_0 = enc.level3_0(l2)
        l3 = l3_0
        for block in enc.level3:
            l3 = block(l3)
        l3 = enc.b3(torch.cat([l3_0, l3], 1))  # 1/8, 256 channels

        up3 = _crop_to(self.up_l3(self.br(enc.classifier(l3))), l2)
        up2 = _crop_to(self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(l2), up3], 1))), l1)
        return _crop_to(self.classifier(self.conv(torch.cat([up2, l1], 1))), x)

    def forward_train(self, x: torch.Tensor) -> SegOutput:
        """Training forward: the same logits (the released net has no auxiliary head)."""
        return SegOutput(self(x))


def espnet(*, num_classes: int = 11, p: int = 2, q: int = 8, decoder_channels: int | None = None) -> ESPNet:
    """ESPNet(classes, p, q) of sacmehta/ESPNet's train/Model.py; see `ESPNet`."""
    return ESPNet(num_classes=num_classes, p=p, q=q, decoder_channels=decoder_channels)
