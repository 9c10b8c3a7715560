"""The dilated ResNet trunk: output stride 8 with torchvision's dilations, width scaling, and loading
torchvision's ImageNet classification checkpoint layout into `backbone.*`."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

from refine_cli.errors import UsageError, WeightsError
from refine_cli.models import segmentation
from refine_cli.models.resnet import DilatedResNet


def _classification_state_dict(trunk: DilatedResNet) -> dict[str, torch.Tensor]:
    """What an ImageNet checkpoint of this trunk looks like: the trunk's keys plus a 1000-way `fc`."""
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, trunk.out_channels)
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_output_stride_8_and_channels() -> None:
    trunk = DilatedResNet(depth=50).eval()
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, 65, 97))
    assert features.out.shape == (1, 2048, 9, 13)  # ceil(65 / 8), ceil(97 / 8)
    assert features.aux.shape == (1, 1024, 9, 13)


def test_layer3_and_layer4_dilate_like_torchvision() -> None:
    # replace_stride_with_dilation=[False, True, True]: each dilated stage's first block keeps the previous
    # dilation, the rest double it; no stride after layer2.
    trunk = DilatedResNet(depth=101)
    layer3 = [(b.conv2.dilation[0], b.conv2.stride[0]) for b in trunk.layer3]
    layer4 = [(b.conv2.dilation[0], b.conv2.stride[0]) for b in trunk.layer4]
    assert layer3 == [(1, 1)] + [(2, 1)] * 22
    assert layer4 == [(2, 1), (4, 1), (4, 1)]
    assert trunk.layer2[0].conv2.stride == (2, 2) and trunk.layer3[0].downsample[0].stride == (1, 1)


def test_width_scales_every_stage() -> None:
    trunk = DilatedResNet(depth=50, width=0.25)
    assert trunk.conv1.out_channels == 16
    assert [stage[-1].bn3.num_features for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)] == [
        64, 128, 256, 512,
    ]
    assert trunk(torch.randn(2, 3, 32, 32)).out.shape == (2, 512, 4, 4)


def test_unknown_depth_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="50, 101, 152"):
        DilatedResNet(depth=34)


@pytest.mark.slow
def test_loads_torchvision_imagenet_checkpoint(tv: ModuleType) -> None:
    torch.manual_seed(0)
    # Dilation changes no shape: this is resnet50-0676ba61.pth's layout, and its dilated features are
    # what our trunk must reproduce from those weights.
    reference = tv.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    model = segmentation.fcn_resnet(depth=50, num_classes=21, aux_loss=False)
    head_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    keys = model.load_imagenet_trunk(reference.state_dict())
    assert keys == [f"backbone.{k}" for k in model.backbone.state_dict()]
    ours = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[f"backbone.{key}"], value), key
    assert all(torch.equal(v, head_before[k]) for k, v in model.classifier.state_dict().items())
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(y))))
        torch.testing.assert_close(model.backbone.eval()(x).out, expected, rtol=1e-5, atol=1e-5)


def test_checkpoints_without_batch_counters_load() -> None:
    trunk = DilatedResNet(depth=50)
    state = {k: v for k, v in _classification_state_dict(trunk).items() if not k.endswith("num_batches_tracked")}
    assert len(trunk.load_imagenet(state)) == len(state) - 2  # everything but fc.weight / fc.bias


def test_refuses_a_scaled_trunk() -> None:
    model = segmentation.deeplabv3_resnet(depth=50, num_classes=21, width=0.25, aux_loss=False)
    with pytest.raises(WeightsError, match="width 0.25"):
        model.load_imagenet_trunk(_classification_state_dict(DilatedResNet(depth=50)))


def test_shape_mismatch_names_key_and_shapes_and_changes_nothing() -> None:
    trunk = DilatedResNet(depth=50)
    state = _classification_state_dict(DilatedResNet(depth=50))
    state["layer2.1.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    before = trunk.conv1.weight.clone()
    with pytest.raises(WeightsError) as info:
        trunk.load_imagenet(state)
    message = str(info.value)
    assert "layer2.1.conv2.weight" in message and "(128, 128, 1, 1)" in message and "(128, 128, 3, 3)" in message
    assert torch.equal(trunk.conv1.weight, before)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update({"layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}), "layer3.6.conv1.weight"),
        (lambda s: s.pop("layer4.2.bn3.running_var"), "layer4.2.bn3.running_var"),
    ],
    ids=["unknown-key", "missing-key"],
)
def test_foreign_or_incomplete_checkpoint_is_refused(change, expected: str) -> None:
    trunk = DilatedResNet(depth=50)
    state = _classification_state_dict(trunk)
    change(state)
    with pytest.raises(WeightsError, match=expected):
        trunk.load_imagenet(state)


def test_batchnorm_keeps_pytorch_defaults() -> None:
    norms = [m for m in DilatedResNet(depth=50).modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in norms} == {(1e-5, 0.1)}
