"""DeepLab-LargeFOV on VGG-16 (Chen, Papandreou, Kokkinos, Murphy & Yuille, "Semantic Image Segmentation
with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015; the VGG-16 model of DeepLab v2): a
dilated VGG-16 at output stride 8 whose logits are upsampled bilinearly to the input size."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.adaptive_rf import (
    AdaptiveReceptiveField,
    AdaptiveRFMixin,
    fc_receptive_field,
    vgg_trunk_field,
)
from refine_cli.models.common import SegOutput
from refine_cli.models.vgg import VGG16Trunk
from refine_cli.transforms import IMAGENET, Preprocess

OUTPUT_STRIDE = 8
FC6_DILATION = 12
POOL_KERNEL = 3
POOL_STRIDES = (2, 2, 2, 1, 1)
CONV5_DILATION = 2


class DeepLabLargeFOV(AdaptiveRFMixin, VGG16Trunk):
    """DeepLab-LargeFOV, the layout of the authors' Caffe prototxt:

    - conv1_1..conv5_3 with the VGG names (so the same trunk import serves FCN and this net); pools are
      3x3 with padding 1 (ceil mode), pool1-pool3 at stride 2, pool4 and pool5 at stride 1; conv5_x
      dilated by 2 to keep pool4's lost stride in their field of view; then `pool5a`, a 3x3 stride-1
      average pool (padding counted, as Caffe's AVE pooling does);
    - fc6: 3x3 conv dilated by 12 (`fc_channels`, 1024 published), fc7: 1x1, ReLU and dropout 0.5 after
      each, fc8: 1x1 to the class scores (Gaussian std 0.01 init, as the prototxt's fc8);
    - every 3x3/pad-1 pool maps feature x to input pixel 2x, so score cell i sits exactly over input pixel
      8i: the logits are upsampled by exactly 8 with corners aligned (size 8(n-1)+1, DeepLab's Interp layer
      with zoom factor 8) and cropped to the input, which is exact for any H, W.

    adaptive_rf: wrap fc6-fc8 in an `AdaptiveReceptiveField` (Wei et al. 2017, who tuned this network's
    field of view with it): pool5a inflated by a learned factor f (initially `rf_init`) before fc6, fc8's
    scores interpolated back to pool5a's size. Adds one parameter, `rf.factor`, registered last; off (the
    default), keys and outputs are exactly as without it.

    The SPN slides report on VOC 2012 val (mean IoU) DeepLab-VGG16 68.97, 71.57 with a dense CRF and 73.12
    with SPN refinement instead.
    """

    trunk_input = IMAGENET

    def __init__(
        self,
        *,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 1024,
        adaptive_rf: bool = False,
        rf_init: float = 1.0,
        batch_norm: bool = False,
        fc8: bool = True,
    ) -> None:
        if num_classes < 1 or fc_channels < 1:
            raise ValueError(f"num_classes and fc_channels must be positive: {num_classes}, {fc_channels}")
        super().__init__(
            width=width,
            conv1_padding=1,
            pool_kernel=POOL_KERNEL,
            pool_padding=1,
            pool_strides=POOL_STRIDES,
            conv5_dilation=CONV5_DILATION,
            batch_norm=batch_norm,
        )
        self.num_classes = num_classes
        self.fc_channels = fc_channels
        c5 = self.block_channels[4]
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.fc6 = nn.Conv2d(c5, fc_channels, 3, padding=FC6_DILATION, dilation=FC6_DILATION)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop7 = nn.Dropout(0.5)
        if fc8:  # a network with a head of its own (ParseNet) builds it instead and overrides `classify`
            self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        if fc8:
            nn.init.normal_(self.fc8.weight, std=0.01)
            nn.init.zeros_(self.fc8.bias)
        self.rf: AdaptiveReceptiveField | None = None
        if adaptive_rf:
            self.rf = AdaptiveReceptiveField(rf_init)

    def receptive_field(self, factor: float | None = None) -> float:
        """Nominal receptive field of a score cell in input pixels (see `adaptive_rf.fc_receptive_field`):
        435 at f = 1. factor defaults to the current f (1 without `adaptive_rf`)."""
        if factor is None:
            factor = self.rf_factor or 1.0
        field, jump = vgg_trunk_field(
            pools=tuple((POOL_KERNEL, s) for s in POOL_STRIDES), conv5_dilation=CONV5_DILATION,
            extra_pool=POOL_KERNEL,
        )
        extent = FC6_DILATION * (self.fc6.kernel_size[0] - 1) + 1
        return fc_receptive_field(trunk_field=field, stride=jump, kernel_extent=extent, factor=factor)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """The score layer on fc7's output: fc8 here; heads built on this network override it."""
        return self.fc8(h)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x as in `forward`. Returns (N, num_classes, n_h, n_w) logits at stride 8, n = ceil((H-1)/8) + 1."""
        pooled = self.pool5a(self.forward_trunk(x).pool5)
        h = pooled if self.rf is None else self.rf.inflate(pooled)
        h = self.drop6(F.relu(self.fc6(h), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        h = self.classify(h)
        if self.rf is not None:
            h = self.rf.interpolate(h, (pooled.shape[-2], pooled.shape[-1]))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) float, any H, W >= 1, normalised as the weights expect (ImageNet mean/std RGB by
        default). Returns (N, num_classes, H, W) float logits, same dtype/device as x."""
        height, width = x.shape[-2:]
        s = self.scores(x)
        size = (OUTPUT_STRIDE * (s.shape[-2] - 1) + 1, OUTPUT_STRIDE * (s.shape[-1] - 1) + 1)
        up = F.interpolate(s, size=size, mode="bilinear", align_corners=True)
        return up[:, :, :height, :width].contiguous()

    def forward_train(self, x: torch.Tensor) -> SegOutput:
        """As `forward`, wrapped for the training loop (no auxiliary head)."""
        return SegOutput(self(x))

    def load_imagenet_trunk(
        self, state_dict: Mapping[str, torch.Tensor], *, preprocess: Preprocess | None = None
    ) -> list[str]:
        """torchvision's VGG-16 checkpoint onto conv1_1..conv5_3 only (width 1.0 only); fc6-fc8 keep their
        init. DeepLab initialised its 1024-channel fc6/fc7 by subsampling the Caffe VGG-16's fully connected
        layers (its `vgg16_20M` model); that subsampled model is not reproducible from torchvision's
        checkpoint, whose weights differ from Caffe's, so it is not imitated here.
        preprocess: the input this network will be fed (default ImageNet RGB, a no-op fold).
        Returns our keys it set; raises WeightsError on a width, key or shape that does not fit."""
        return super().load_imagenet_trunk(state_dict, preprocess=preprocess)


def deeplab_largefov(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 1024,
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> DeepLabLargeFOV:
    """DeepLab-LargeFOV (VGG-16, output stride 8, fc6 3x3 dilated by 12). adaptive_rf, rf_init: see
    `DeepLabLargeFOV`."""
    return DeepLabLargeFOV(
        num_classes=num_classes, width=width, fc_channels=fc_channels, adaptive_rf=adaptive_rf,
        rf_init=rf_init, batch_norm=batch_norm,
    )
