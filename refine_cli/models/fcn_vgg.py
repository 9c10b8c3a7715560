"""FCN-32s, FCN-16s and FCN-8s on VGG-16 (Long, Shelhamer & Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015), key-for-key the PyTorch port of the Caffe VOC weights
(wkentaro/pytorch-fcn, `torchfcn.models.FCN32s/16s/8s/8sAtOnce`): its checkpoints load with strict=True."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.adaptive_rf import (
    AdaptiveReceptiveField,
    AdaptiveRFMixin,
    fc_receptive_field,
    vgg_trunk_field,
)
from refine_cli.models.common import SegOutput, bilinear_kernel
from refine_cli.models.vgg import VGG16Trunk
from refine_cli.transforms import CAFFE_FCN

Stride = Literal[32, 16, 8]

# Crop offsets, as Caffe's Crop layers derive them from each layer's coordinate map. Write the input pixel
# over which position x of a map sits as a*x + b: conv1_1's padding of 100 gives x - 99; each 2x2 stride-2
# pool maps x to 2x + 0.5, so pool3 sits at 8x - 95.5, pool4 at 16x - 91.5, pool5 at 32x - 83.5; the
# unpadded 7x7 fc6 moves the centre 3 cells: score_fr at 32x + 12.5. A transposed conv of kernel k and
# stride s maps x to (x - (k-1)/2) / s, so upscore2 (k4, s2) sits at 16x - 11.5 and meets score_pool4 at
# (91.5 - 11.5) / 16 = 5; upscore_pool4 (k4, s2) at 8x - 23.5 meets score_pool3 at (95.5 - 23.5) / 8 = 9;
# upscore8 (k16, s8) at x - 31: the image starts at 31. Likewise FCN-32s's upscore (k64, s32) at x - 19
# and FCN-16s's upscore16 (k32, s16) at x - 27.
POOL4_OFFSET = 5
POOL3_OFFSET = 9
OUTPUT_OFFSET: Mapping[int, int] = {32: 19, 16: 27, 8: 31}
# fcn8s-atonce (the Caffe model trained in one stage rather than 32s -> 16s -> 8s) scales the skip inputs
# before scoring them so that they start small next to score_fr; it has no extra parameters.
AT_ONCE_POOL4_SCALE = 0.01
AT_ONCE_POOL3_SCALE = 0.0001
FC6_KERNEL = 7


def _upsampler(channels: int, kernel: int, stride: int) -> nn.ConvTranspose2d:
    """A bias-free transposed conv initialised as per-class bilinear upsampling (the port's init)."""
    up = nn.ConvTranspose2d(channels, channels, kernel, stride=stride, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, kernel))
    return up


def _crop(t: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    return t[:, :, offset : offset + height, offset : offset + width]


class FCN(AdaptiveRFMixin, VGG16Trunk):
    """FCN on VGG-16; `stride` 32, 16 or 8 picks FCN-32s, -16s or -8s.

    Layout (the port's, so the key set is its key set): conv1_1..conv5_3 (conv1_1 padded by 100, ceil-mode
    2x2 pools), fc6 (7x7 conv, `fc_channels`), fc7 (1x1), dropout 0.5 after each, score_fr; FCN-32s adds
    `upscore` (k64 s32); FCN-16s `score_pool4`, `upscore2` (k4 s2), `upscore16` (k32 s16); FCN-8s
    `score_pool3`, `score_pool4`, `upscore2`, `upscore8` (k16 s8), `upscore_pool4` (k4 s2). Transposed
    convs have no bias and start as bilinear upsamplers; score layers start at zero as in the port.
    The dropout is element-wise as in the Caffe nets (the port uses Dropout2d; both are the identity in
    eval mode).

    at_once: FCN-8s only; the skip scaling of fcn8s-atonce (pool4 x 0.01, pool3 x 0.0001 before scoring),
    needed to run the port's `FCN8sAtOnce` checkpoint, whose keys are FCN-8s's.
    adaptive_rf: wrap fc6-score_fr in an `AdaptiveReceptiveField` (Wei et al. 2017): pool5 inflated by a
    learned factor f (initially `rf_init`) before fc6, score_fr interpolated back to the size it has
    without inflation (offset 3: the unpadded 7x7 fc6 trims 3 cells a side). Adds one parameter,
    `rf.factor`, registered last; off (the default), keys and outputs are exactly the port's.
    Reported VOC2011 seg11valid mean IoU of the Caffe models: FCN-32s 63.63, FCN-16s 65.01, FCN-8s 65.51.
    """

    # The published weights take BGR in 0..255 minus the Caffe mean.
    trunk_input = CAFFE_FCN
    imagenet_fc = True  # the paper's convolutionalised fc6 / fc7 (only at width 1.0 and fc_channels 4096)

    def __init__(
        self,
        *,
        stride: Stride,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 4096,
        at_once: bool = False,
        adaptive_rf: bool = False,
        rf_init: float = 1.0,
        batch_norm: bool = False,
    ) -> None:
        if stride not in OUTPUT_OFFSET:
            raise ValueError(f"stride must be 32, 16 or 8, got {stride}")
        if num_classes < 1 or fc_channels < 1:
            raise ValueError(f"num_classes and fc_channels must be positive: {num_classes}, {fc_channels}")
        if at_once and stride != 8:
            raise ValueError("at_once exists only for FCN-8s")
        super().__init__(width=width, conv1_padding=100, batch_norm=batch_norm)
        self.stride = stride
        self.num_classes = num_classes
        self.fc_channels = fc_channels
        self.pool4_scale = AT_ONCE_POOL4_SCALE if at_once else 1.0
        self.pool3_scale = AT_ONCE_POOL3_SCALE if at_once else 1.0
        c3, c4, c5 = self.block_channels[2:]

        self.fc6 = nn.Conv2d(c5, fc_channels, FC6_KERNEL)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop7 = nn.Dropout(0.5)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        # Registration order follows the port so that state-dict order matches too.
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        scores = [self.score_fr]
        if stride == 32:
            self.upscore = _upsampler(num_classes, 64, 32)
        elif stride == 16:
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            self.upscore2 = _upsampler(num_classes, 4, 2)
            self.upscore16 = _upsampler(num_classes, 32, 16)
            scores.append(self.score_pool4)
        else:
            self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            self.upscore2 = _upsampler(num_classes, 4, 2)
            self.upscore8 = _upsampler(num_classes, 16, 8)
            self.upscore_pool4 = _upsampler(num_classes, 4, 2)
            scores += [self.score_pool3, self.score_pool4]
        for score in scores:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.rf: AdaptiveReceptiveField | None = None
        if adaptive_rf:
            half = (FC6_KERNEL - 1) // 2
            self.rf = AdaptiveReceptiveField(rf_init, min_size=FC6_KERNEL, offset=half)

    def receptive_field(self, factor: float | None = None) -> float:
        """Nominal receptive field of a score_fr cell in input pixels (see
        `adaptive_rf.fc_receptive_field`): 404 at f = 1. factor defaults to the current f (1 without
        `adaptive_rf`)."""
        if factor is None:
            factor = self.rf_factor or 1.0
        field, jump = vgg_trunk_field(pools=((2, 2),) * 5, conv5_dilation=1)
        return fc_receptive_field(trunk_field=field, stride=jump, kernel_extent=FC6_KERNEL, factor=factor)

    def _fc_scores(self, pool5: torch.Tensor) -> torch.Tensor:
        """fc6, fc7, score_fr on pool5, inside the adaptive receptive field when there is one."""
        h = pool5 if self.rf is None else self.rf.inflate(pool5)
        h = self.drop6(F.relu(self.fc6(h), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        h = self.score_fr(h)
        if self.rf is not None:
            trim = FC6_KERNEL - 1  # the size score_fr has without inflation
            h = self.rf.interpolate(h, (pool5.shape[-2] - trim, pool5.shape[-1] - trim))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) float, any H, W >= 1, normalised as the weights expect (the published ones:
        BGR, 0..255 minus (104.00699, 116.66877, 122.67891)).
        Returns (N, num_classes, H, W) float logits (unnormalised class scores), same dtype/device as x."""
        height, width = x.shape[-2:]
        f = self.forward_trunk(x)
        h = self._fc_scores(f.pool5)
        if self.stride == 32:
            return _crop(self.upscore(h), OUTPUT_OFFSET[32], height, width).contiguous()

        h = self.upscore2(h)  # 1/16
        h = h + _crop(self.score_pool4(_scale(f.pool4, self.pool4_scale)), POOL4_OFFSET, *h.shape[-2:])
        if self.stride == 16:
            return _crop(self.upscore16(h), OUTPUT_OFFSET[16], height, width).contiguous()

        h = self.upscore_pool4(h)  # 1/8
        h = h + _crop(self.score_pool3(_scale(f.pool3, self.pool3_scale)), POOL3_OFFSET, *h.shape[-2:])
        return _crop(self.upscore8(h), OUTPUT_OFFSET[8], height, width).contiguous()

    def forward_train(self, x: torch.Tensor) -> SegOutput:
        """As `forward`, wrapped for the training loop (FCN has no auxiliary head)."""
        return SegOutput(self(x))


def _scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    return t if factor == 1.0 else t * factor


def fcn32s(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 4096,
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> FCN:
    """FCN-32s: scores from fc7 only, upsampled 32x in one transposed conv. adaptive_rf: see `FCN`."""
    return FCN(
        stride=32, num_classes=num_classes, width=width, fc_channels=fc_channels,
        adaptive_rf=adaptive_rf, rf_init=rf_init, batch_norm=batch_norm,
    )


def fcn16s(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 4096,
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> FCN:
    """FCN-16s: fc7 scores upsampled 2x and fused with pool4 scores, then upsampled 16x."""
    return FCN(
        stride=16, num_classes=num_classes, width=width, fc_channels=fc_channels,
        adaptive_rf=adaptive_rf, rf_init=rf_init, batch_norm=batch_norm,
    )


def fcn8s(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 4096,
    at_once: bool = False,
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> FCN:
    """FCN-8s: FCN-16s's fusion plus pool3 scores, then upsampled 8x. at_once: fcn8s-atonce's skip scaling."""
    return FCN(
        stride=8, num_classes=num_classes, width=width, fc_channels=fc_channels, at_once=at_once,
        adaptive_rf=adaptive_rf, rf_init=rf_init, batch_norm=batch_norm,
    )
