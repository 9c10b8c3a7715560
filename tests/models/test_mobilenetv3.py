"""The MobileNetV3-Large trunk: torchvision's dilated layout (output stride 16, auxiliary features at the
stride-8 block), its BatchNorm settings, and loading torchvision's ImageNet `features.*` checkpoint."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

from refine_cli.errors import WeightsError
from refine_cli.models import segmentation
from refine_cli.models.common import scaled
from refine_cli.models.mobilenetv3 import MobileNetV3Trunk


def test_strides_channels_and_aux_position() -> None:
    trunk = MobileNetV3Trunk().eval()
    assert len(trunk) == 17 and trunk.aux_index == 4
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, 65, 97))
    assert features.out.shape == (1, 960, 5, 7)  # ceil(65 / 16), ceil(97 / 16)
    assert features.aux.shape == (1, 40, 9, 13)  # ceil(65 / 8), ceil(97 / 8)


def test_last_stage_dilates_instead_of_striding() -> None:
    blocks = list(MobileNetV3Trunk())[1:-1]
    depthwise = [next(m for m in b.modules() if isinstance(m, nn.Conv2d) and m.groups > 1) for b in blocks]
    settings = [(conv.stride[0], conv.dilation[0]) for conv in depthwise]
    assert settings[12:] == [(1, 2)] * 3  # blocks 13-15 (the 160-channel stage)
    assert [s for s, _ in settings[:12]] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1]
    assert all(d == 1 for _, d in settings[:12])


def test_batchnorm_uses_mobilenet_settings() -> None:
    norms = {(m.eps, m.momentum) for m in MobileNetV3Trunk().modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms == {(1e-3, 0.01)}


def test_loads_torchvision_imagenet_checkpoint(tv: ModuleType) -> None:
    torch.manual_seed(0)
    classifier = tv.models.mobilenet_v3_large(weights=None)
    model = segmentation.deeplabv3_mobilenet_v3_large(num_classes=21)
    keys = model.load_imagenet_trunk(classifier.state_dict())
    expected = {f"backbone.{k[len('features.'):]}": v for k, v in classifier.state_dict().items()
                if k.startswith("features.")}
    assert sorted(keys) == sorted(expected)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in expected.items())
    # The same weights in torchvision's dilated MobileNetV3 give the same last features.
    dilated = tv.models.mobilenet_v3_large(weights=None, dilated=True).eval()
    dilated.load_state_dict(classifier.state_dict())
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.eval()(x).out, dilated.features(x), rtol=1e-5, atol=1e-5)


def test_refuses_a_scaled_trunk() -> None:
    full = MobileNetV3Trunk()
    state = {f"features.{k}": v for k, v in full.state_dict().items()}
    with pytest.raises(WeightsError, match="width 0.5"):
        MobileNetV3Trunk(width=0.5).load_imagenet(state)


def test_scaled_trunk_runs() -> None:
    trunk = MobileNetV3Trunk(width=0.5)
    features = trunk(torch.randn(2, 3, 32, 48))
    assert features.out.shape == (2, trunk.out_channels, 2, 3) and trunk.out_channels == 480
    assert features.aux.shape == (2, scaled(40, 0.5), 4, 6)
