"""ParseNet: the L2 normalisation layer and the global-context head (gradients in float64, the fusion
formulas, what context=False and l2norm=False remove), and ParseNet on DeepLab-LargeFOV (layout, sizes,
same trunk as LargeFOV)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from refine_cli.models import registry
from refine_cli.models.common import SegOutput
from refine_cli.models.largefov import deeplab_largefov
from refine_cli.models.parsenet import L2Norm, ParseNet, ParseNetHead, parsenet_vgg16

from ._vgg16_checkpoints import VGG16_TRUNK_SHAPES, randomise_

F64 = torch.float64
SMALL = {"width": 0.125, "fc_channels": 16}


def _head(fusion: str, **kwargs) -> ParseNetHead:
    torch.manual_seed(0)
    head = ParseNetHead(4, 3, fusion=fusion, **kwargs).double()
    with torch.no_grad():  # random scales and classifiers, so every term is exercised
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, dtype=F64))
    return head


def test_l2norm_normalises_each_pixel_and_scales_per_channel() -> None:
    norm = L2Norm(5, scale_init=10.0)
    x = torch.randn(2, 5, 3, 4) * 7.0
    y = norm(x)
    torch.testing.assert_close(y.norm(dim=1), torch.full((2, 3, 4), 10.0))
    with torch.no_grad():
        norm.scale.copy_(torch.arange(1.0, 6.0))
    unit = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(norm(x), unit * torch.arange(1.0, 6.0).view(1, 5, 1, 1))
    assert [k for k, _ in norm.named_parameters()] == ["scale"]


def test_l2norm_gradcheck() -> None:
    norm = L2Norm(4, scale_init=3.0).double()
    x = torch.randn(2, 4, 3, 2, dtype=F64, requires_grad=True)
    scale = torch.randn(4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, s: functional_call(norm, {"scale": s}, (t,)), (x, scale))


@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("l2norm", [True, False])
def test_head_gradcheck(fusion: str, l2norm: bool) -> None:
    head = _head(fusion, l2norm=l2norm)
    x = torch.randn(2, 4, 3, 5, dtype=F64, requires_grad=True)
    # fast mode: the full Jacobian against random projections (full mode is ~50x slower on 2 cores)
    assert torch.autograd.gradcheck(head, (x,), fast_mode=True)


def test_early_fusion_concatenates_normalised_local_and_unpooled_global() -> None:
    head = _head("early")
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    glob = x.mean(dim=(2, 3), keepdim=True)

    def normed(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return t / t.norm(dim=1, keepdim=True) * scale.view(1, -1, 1, 1)

    local = normed(x, head.norm_local.scale)
    fused = torch.cat([local, normed(glob, head.norm_global.scale).expand_as(x)], dim=1)
    torch.testing.assert_close(head(x), F.conv2d(fused, head.score.weight, head.score.bias))
    assert head.score.in_channels == 8 and head.score_global is None


def test_late_fusion_sums_two_classifiers() -> None:
    head = _head("late", l2norm=False)
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    glob = x.mean(dim=(2, 3), keepdim=True).expand_as(x)  # unpooled
    expected = F.conv2d(x, head.score.weight, head.score.bias) + F.conv2d(
        glob, head.score_global.weight, head.score_global.bias
    )
    torch.testing.assert_close(head(x), expected)
    assert head.norm_local is None and head.norm_global is None


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_global_context_reaches_every_pixel_and_context_false_removes_it(fusion: str) -> None:
    x = torch.randn(1, 4, 6, 7, dtype=F64)
    poked = x.clone()
    poked[:, :, 0, 0] += 5.0
    with_context = _head(fusion)
    changed = (with_context(poked) - with_context(x)).abs().amax(dim=1)
    assert (changed > 1e-9).all()  # one pixel moves the global feature, hence every output

    local_only = _head(fusion, context=False)
    names = {k for k, _ in local_only.named_parameters()}
    assert names == {"norm_local.scale", "score.weight", "score.bias"}
    changed = (local_only(poked) - local_only(x)).abs().amax(dim=1)
    assert changed[0, 0, 0] > 1e-9 and changed.flatten()[1:].max() == 0  # only the poked pixel moves


def test_head_validates_its_options() -> None:
    with pytest.raises(ValueError, match="fusion"):
        ParseNetHead(4, 3, fusion="middle")  # type: ignore[arg-type]
    assert ParseNetHead(4, 3).norm_local.scale.eq(10.0).all()  # default gamma


def test_published_layout() -> None:
    with torch.device("meta"):
        model = parsenet_vgg16(num_classes=21)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: s for k, s in shapes.items() if k in VGG16_TRUNK_SHAPES} == VGG16_TRUNK_SHAPES
    assert not any(k.startswith("fc8") for k in shapes)
    assert shapes["fc6.weight"] == (1024, 512, 3, 3) and shapes["fc7.weight"] == (1024, 1024, 1, 1)
    head = {k: s for k, s in shapes.items() if k.startswith("head.")}
    assert head == {
        "head.norm_local.scale": (1024,), "head.norm_global.scale": (1024,),
        "head.score.weight": (21, 2048, 1, 1), "head.score.bias": (21,),
    }


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (9, 17), (64, 64)])
@pytest.mark.parametrize("fusion", ["early", "late"])
def test_output_sizes(size: tuple[int, int], fusion: str) -> None:
    model = parsenet_vgg16(num_classes=4, fusion=fusion, **SMALL).eval()
    x = torch.randn(2, 3, *size)
    h, w = size
    assert model.scores(x).shape == (2, 4, -(-(h - 1) // 8) + 1, -(-(w - 1) // 8) + 1)
    out = model(x)
    assert out.shape == (2, 4, h, w) and out.dtype == torch.float32 and out.is_contiguous()


def test_same_network_as_largefov_up_to_the_classifier() -> None:
    base = deeplab_largefov(num_classes=4, **SMALL).eval()
    randomise_(base, seed=3)
    model = parsenet_vgg16(num_classes=4, context=False, l2norm=False, **SMALL).eval()
    shared = {k: v for k, v in base.state_dict().items() if not k.startswith("fc8")}
    model.load_state_dict({**shared, "head.score.weight": base.fc8.weight, "head.score.bias": base.fc8.bias})
    x = torch.randn(1, 3, 41, 30)
    torch.testing.assert_close(model(x), base(x))  # without context or normalisation: LargeFOV itself


def test_forward_train_backward_and_adaptive_rf() -> None:
    model = parsenet_vgg16(num_classes=3, adaptive_rf=True, rf_init=1.25, **SMALL).train()
    out = model.forward_train(torch.randn(2, 3, 40, 33))
    assert isinstance(out, SegOutput) and out.aux is None and out.out.shape == (2, 3, 40, 33)
    out.out.square().mean().backward()
    assert model.head.norm_global.scale.grad.abs().sum() > 0 and model.rf.factor.grad is not None
    assert model.rf_factor == 1.25
    with pytest.raises(TypeError):
        parsenet_vgg16(21)  # type: ignore[misc]


def test_compact_registry_model() -> None:
    model = registry.build("parsenet_vgg16_compact")
    assert isinstance(model, ParseNet) and model.width == 0.25 and model.fc_channels == 256
    assert sum(p.numel() for p in model.parameters()) < 2_500_000
