"""The assembled segmenters: key-for-key and output parity with torchvision's models, the forward /
forward_train contracts, and the compact model's size."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

from refine_cli.models import registry, segmentation
from refine_cli.models.common import SegOutput

SIZES = [(65, 97), (128, 128)]  # odd and even; ResNet-101 at 64x64 keeps the test short

# (our builder, its arguments, torchvision's builder in models.segmentation, input sizes)
CASES = {
    "fcn_resnet50": (segmentation.fcn_resnet, {"depth": 50}, "fcn_resnet50", SIZES),
    "deeplabv3_resnet50": (segmentation.deeplabv3_resnet, {"depth": 50}, "deeplabv3_resnet50", SIZES),
    "deeplabv3_mobilenet_v3_large": (
        segmentation.deeplabv3_mobilenet_v3_large, {}, "deeplabv3_mobilenet_v3_large", SIZES + [(33, 47)],
    ),
    "fcn_resnet101": (segmentation.fcn_resnet, {"depth": 101}, "fcn_resnet101", [(64, 64)]),
    "deeplabv3_resnet101": (segmentation.deeplabv3_resnet, {"depth": 101}, "deeplabv3_resnet101", [(64, 64)]),
}


def _torchvision_model(tv: ModuleType, name: str, *, aux_loss: bool = True) -> nn.Module:
    builder = getattr(tv.models.segmentation, name)
    return builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux_loss)


def _randomise_batchnorm(model: nn.Module) -> None:
    # Fresh BatchNorm is the identity in eval mode; trained-looking statistics make the outputs depend on
    # every running mean/var, affine parameter and eps, so the comparison can catch a wrong one.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = max(1.0, theirs.abs().max().item())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


# The ResNet cases build two 25-60 M parameter models: ~2 s each on an idle 2-core CPU, several times that
# when the machine is shared.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "resnet" in n else n for n in CASES])
def test_matches_torchvision(tv: ModuleType, name: str) -> None:
    builder, kwargs, tv_name, sizes = CASES[name]
    torch.manual_seed(0)
    theirs = _torchvision_model(tv, tv_name)
    with torch.no_grad():
        _randomise_batchnorm(theirs)
    ours = builder(num_classes=21, **kwargs)
    assert _shapes(ours) == _shapes(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(1, 3, h, w)
            expected = theirs(x)
            out = ours(x)
            train_out = ours.forward_train(x)
            assert out.shape == (1, 21, h, w)
            _close(out, expected["out"])
            _close(train_out.out, expected["out"])
            _close(train_out.aux, expected["aux"])


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_batchnorm_settings_and_keys_without_aux_match_torchvision(tv: ModuleType, name: str) -> None:
    builder, kwargs, tv_name, _ = CASES[name]
    theirs = _torchvision_model(tv, tv_name, aux_loss=False)
    ours = builder(num_classes=21, aux_loss=False, **kwargs)
    assert _shapes(ours) == _shapes(theirs)
    norms = {n: (m.eps, m.momentum) for n, m in theirs.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert {n: (m.eps, m.momentum) for n, m in ours.named_modules() if isinstance(m, nn.BatchNorm2d)} == norms


def test_forward_returns_logits_and_forward_train_both_heads() -> None:
    torch.manual_seed(0)
    model = segmentation.deeplabv3_resnet(depth=50, num_classes=5, width=0.25)
    x = torch.randn(2, 3, 37, 51)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 37, 51)
    result = model.forward_train(x)
    assert isinstance(result, SegOutput)
    assert result.out.shape == result.aux.shape == (2, 5, 37, 51)
    (result.out.mean() + result.aux.mean()).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.aux_classifier[0].weight.grad.abs().sum() > 0


def test_no_aux_head_without_aux_loss() -> None:
    model = segmentation.deeplabv3_mobilenet_v3_large(num_classes=3, aux_loss=False, width=0.5).eval()
    assert model.aux_classifier is None
    result = model.forward_train(torch.randn(1, 3, 40, 40))
    assert result.aux is None and result.out.shape == (1, 3, 40, 40)


def test_width_scales_heads_with_the_trunk() -> None:
    model = segmentation.deeplabv3_resnet(depth=50, num_classes=21, width=0.25)
    assert model.backbone.out_channels == 512 and model.backbone.aux_channels == 256
    assert model.classifier[0].convs[0][0].weight.shape == (64, 512, 1, 1)  # ASPP 256 -> 64
    assert model.aux_classifier[0].weight.shape == (64, 256, 3, 3)  # FCN head: in / 4


def test_compact_model_fits_a_small_checkpoint() -> None:
    model = registry.build("deeplabv3_resnet50_compact")
    assert model.aux_classifier is None
    # 2.5 M float32 parameters are a 10 MB checkpoint (5 MB in float16).
    assert sum(p.numel() for p in model.parameters()) <= 2_500_000
