"""torchvision-compatible segmenters: FCN and DeepLabV3 on the dilated ResNet trunk, DeepLabV3 on the
MobileNetV3-Large trunk. State dicts match torchvision's `backbone.* / classifier.* / aux_classifier.*` key
for key at width 1.0, so the published COCO-with-VOC-labels checkpoints load with strict=True.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from refine_cli.errors import WeightsError
from refine_cli.models.common import SegOutput, scaled
from refine_cli.models.heads import ASPP_CHANNELS, DeepLabHead, FCNHead
from refine_cli.models.mobilenetv3 import MobileNetV3Trunk
from refine_cli.models.resnet import DilatedResNet
from refine_cli.transforms import IMAGENET, Preprocess


class Segmenter(nn.Module):
    """A trunk returning `TrunkFeatures`, a main head on `out` and an optional auxiliary FCN head on `aux`;
    logits are upsampled bilinearly (align_corners=False, as torchvision) to the input size."""

    def __init__(self, backbone: DilatedResNet | MobileNetV3Trunk, classifier: nn.Module,
                 aux_classifier: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    @staticmethod
    def _to_input_size(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) float RGB normalised with the ImageNet mean/std, any H and W.
        Returns the main logits (N, K, H, W) float, unnormalised (softmax gives class probabilities)."""
        return self._to_input_size(self.classifier(self.backbone(x).out), x)

    def forward_train(self, x: torch.Tensor) -> SegOutput:
        """As `forward`, plus the auxiliary head's logits (N, K, H, W) for the auxiliary loss; `aux` is
        None when the model was built with aux_loss=False."""
        features = self.backbone(x)
        out = self._to_input_size(self.classifier(features.out), x)
        if self.aux_classifier is None:
            return SegOutput(out, None)
        return SegOutput(out, self._to_input_size(self.aux_classifier(features.aux), x))

    def load_imagenet_trunk(
        self, state_dict: Mapping[str, torch.Tensor], *, preprocess: Preprocess | None = None
    ) -> list[str]:
        """Initialise `backbone.*` from torchvision's ImageNet classification checkpoint of this trunk
        (its classifier ignored). Raises `WeightsError` for width != 1, unknown or missing keys and shape
        mismatches, and for an input other than torchvision's (`preprocess`: ImageNet-normalised RGB), before
        changing anything. Returns the model keys set (`backbone.` + trunk key)."""
        if preprocess is not None and preprocess != IMAGENET:
            raise WeightsError(f"the {type(self.backbone).__name__} trunk takes ImageNet-normalised RGB, not "
                               f"{preprocess}")
        return [f"backbone.{key}" for key in self.backbone.load_imagenet(state_dict)]


def _aux_head(backbone: DilatedResNet | MobileNetV3Trunk, num_classes: int, aux_loss: bool) -> FCNHead | None:
    return FCNHead(backbone.aux_channels, num_classes) if aux_loss else None


def fcn_resnet(*, depth: int, num_classes: int, aux_loss: bool = True, width: float = 1.0) -> Segmenter:
    """FCN head on the dilated ResNet-`depth` (50, 101 or 152) at output stride 8, auxiliary FCN head on
    layer3: torchvision's `fcn_resnet50/101` at width 1.0."""
    backbone = DilatedResNet(depth=depth, width=width)
    return Segmenter(backbone, FCNHead(backbone.out_channels, num_classes), _aux_head(backbone, num_classes, aux_loss))


def deeplabv3_resnet(*, depth: int, num_classes: int, aux_loss: bool = True, width: float = 1.0) -> Segmenter:
    """DeepLabV3 (ASPP rates 12/24/36, ASPP width scaled with the trunk) on the dilated ResNet-`depth` at
    output stride 8, auxiliary FCN head on layer3: torchvision's `deeplabv3_resnet50/101` at width 1.0."""
    backbone = DilatedResNet(depth=depth, width=width)
    head = DeepLabHead(backbone.out_channels, num_classes, channels=scaled(ASPP_CHANNELS, width))
    return Segmenter(backbone, head, _aux_head(backbone, num_classes, aux_loss))


def deeplabv3_mobilenet_v3_large(*, num_classes: int, aux_loss: bool = True, width: float = 1.0) -> Segmenter:
    """DeepLabV3 on MobileNetV3-Large (output stride 16, head on the 960-channel last conv), auxiliary
    FCN head on the 40-channel stride-8 block: torchvision's `deeplabv3_mobilenet_v3_large` at width 1.0."""
    backbone = MobileNetV3Trunk(width=width)
    head = DeepLabHead(backbone.out_channels, num_classes, channels=scaled(ASPP_CHANNELS, width))
    return Segmenter(backbone, head, _aux_head(backbone, num_classes, aux_loss))
