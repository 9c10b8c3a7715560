"""DeepLab-LargeFOV: key layout, output stride 8 and size for any input, parity with a functional
re-statement of the Caffe prototxt's forward and its zoom-by-8 interpolation, the ImageNet trunk import."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_cli.errors import WeightsError
from refine_cli.models import registry
from refine_cli.models.common import SegOutput
from refine_cli.models.largefov import DeepLabLargeFOV, deeplab_largefov

from ._vgg16_checkpoints import (
    TORCHVISION_CONV_INDEX,
    TRUNK_CONV_NAMES,
    VGG16_TRUNK_SHAPES,
    fabricated_torchvision_vgg16,
    meta_state_dict,
    randomise_,
)

PUBLISHED_SHAPES = {
    **VGG16_TRUNK_SHAPES,
    "fc6.weight": (1024, 512, 3, 3), "fc6.bias": (1024,),
    "fc7.weight": (1024, 1024, 1, 1), "fc7.bias": (1024,),
    "fc8.weight": (21, 1024, 1, 1), "fc8.bias": (21,),
}
SIZES = [(37, 53), (64, 64), (100, 81), (1, 1), (9, 17)]
SMALL = {"width": 0.125, "fc_channels": 32}


def _zoom_matrix(n: int, out: int) -> torch.Tensor:
    """(out, n) weights of linear interpolation placing output pixel y at feature coordinate y / 8."""
    y = torch.arange(out, dtype=torch.float64)[:, None] / 8.0
    return (1.0 - (y - torch.arange(n, dtype=torch.float64)[None, :]).abs()).clamp(min=0.0)


def _reference_largefov(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The DeepLab-LargeFOV prototxt forward (eval mode) in functional ops: 3x3 pad-1 ceil-mode max pools
    at strides 2, 2, 2, 1, 1; conv5 dilated 2; pool5a 3x3 average; fc6 3x3 dilated 12; fc7; fc8; then
    each logit pixel y placed at score coordinate y / 8. Returns (scores, logits)."""
    h = x
    for block, n in enumerate((2, 2, 3, 3, 3), start=1):
        dilation = 2 if block == 5 else 1
        for i in range(1, n + 1):
            w, b = sd[f"conv{block}_{i}.weight"], sd[f"conv{block}_{i}.bias"]
            h = F.relu(F.conv2d(h, w, b, padding=dilation, dilation=dilation))
        h = F.max_pool2d(h, 3, stride=2 if block <= 3 else 1, padding=1, ceil_mode=True)
    h = F.avg_pool2d(h, 3, stride=1, padding=1)
    h = F.relu(F.conv2d(h, sd["fc6.weight"], sd["fc6.bias"], padding=12, dilation=12))
    h = F.relu(F.conv2d(h, sd["fc7.weight"], sd["fc7.bias"]))
    scores = F.conv2d(h, sd["fc8.weight"], sd["fc8.bias"])
    rows = _zoom_matrix(scores.shape[-2], x.shape[-2]).to(scores.dtype)
    cols = _zoom_matrix(scores.shape[-1], x.shape[-1]).to(scores.dtype)
    return scores, torch.einsum("yi,ncij,xj->ncyx", rows, scores, cols)


def test_published_layout() -> None:
    with torch.device("meta"):
        model = deeplab_largefov(num_classes=21)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == PUBLISHED_SHAPES
        model.load_state_dict(meta_state_dict(PUBLISHED_SHAPES), strict=True)
    assert model.fc6.dilation == (12, 12) and model.fc6.padding == (12, 12)
    assert all(getattr(model, f"conv5_{i}").dilation == (2, 2) for i in (1, 2, 3))


def test_compact_registry_model_is_small() -> None:
    model = registry.build("deeplab_largefov_vgg16_compact")
    assert isinstance(model, DeepLabLargeFOV) and model.width == 0.25 and model.fc_channels == 256
    assert model.block_channels == (16, 32, 64, 128, 128)
    assert sum(p.numel() for p in model.parameters()) < 1_500_000


@pytest.mark.parametrize("size", SIZES)
def test_output_stride_8_and_input_size(size: tuple[int, int]) -> None:
    model = deeplab_largefov(num_classes=4, **SMALL).eval()
    x = torch.randn(2, 3, *size)
    h, w = size
    assert model.scores(x).shape == (2, 4, -(-(h - 1) // 8) + 1, -(-(w - 1) // 8) + 1)
    out = model(x)
    assert out.shape == (2, 4, h, w) and out.dtype == torch.float32 and out.is_contiguous()


def test_matches_functional_caffe_forward() -> None:
    model = deeplab_largefov(num_classes=5, **SMALL).eval()
    randomise_(model, seed=0)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(1)
    for size in SIZES:
        x = torch.randn(1, 3, *size, generator=g)
        scores, logits = _reference_largefov(sd, x)
        torch.testing.assert_close(model.scores(x), scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)


def test_upsampling_is_exact_zoom_by_8() -> None:
    # For H = 8k + 1 (DeepLab's 321, 513) the logits are the plain corner-aligned resize of the scores:
    # score cell i sits over pixel 8i, the last one over the last pixel.
    model = deeplab_largefov(num_classes=3, **SMALL).eval()
    randomise_(model, seed=3)
    x = torch.randn(1, 3, 41, 49)
    s = model.scores(x)
    assert s.shape[-2:] == (6, 7)
    plain = F.interpolate(s, size=(41, 49), mode="bilinear", align_corners=True)
    torch.testing.assert_close(model(x), plain)


def test_forward_train() -> None:
    model = deeplab_largefov(num_classes=3, **SMALL)
    randomise_(model, seed=4)
    x = torch.randn(2, 3, 33, 33)
    torch.manual_seed(0)
    out = model.train().forward_train(x)
    assert isinstance(out, SegOutput) and out.aux is None and out.out.shape == (2, 3, 33, 33)
    out.out.square().mean().backward()
    assert model.conv1_1.weight.grad.abs().sum() > 0
    assert not torch.allclose(out.out.detach(), model.eval()(x))  # dropout in training only
    assert isinstance(model.drop6, torch.nn.Dropout) and model.drop6.p == model.drop7.p == 0.5


def test_fc8_init_and_keyword_only() -> None:
    model = deeplab_largefov(num_classes=21, width=0.25, fc_channels=256)
    assert not model.fc8.bias.any()
    assert 0.009 < model.fc8.weight.std().item() < 0.011  # the prototxt's Gaussian std 0.01 (5376 samples)
    with pytest.raises(TypeError):
        deeplab_largefov(21)  # type: ignore[misc]


def test_imagenet_trunk_sets_the_convs_only() -> None:
    sd = fabricated_torchvision_vgg16(seed=2, real_classifier=False)
    model = deeplab_largefov(num_classes=21)  # published widths: 20.5 M parameters
    fc6_before = model.fc6.weight.clone()
    keys = model.load_imagenet_trunk(sd)
    assert keys == [f"{n}.{k}" for n in TRUNK_CONV_NAMES for k in ("weight", "bias")]
    for name, idx in zip(TRUNK_CONV_NAMES, TORCHVISION_CONV_INDEX):  # ImageNet input: no fold, exact copy
        assert torch.equal(model.get_parameter(f"{name}.weight"), sd[f"features.{idx}.weight"]), name
        assert torch.equal(model.get_parameter(f"{name}.bias"), sd[f"features.{idx}.bias"]), name
    assert torch.equal(model.fc6.weight, fc6_before)

    with pytest.raises(WeightsError, match="width=1.0"):
        deeplab_largefov(num_classes=21, width=0.5).load_imagenet_trunk(sd)
    sd["features.0.weight"] = sd["features.0.weight"][:, :2]
    shapes = r"features\.0\.weight.*\(64, 2, 3, 3\).*conv1_1\.weight.*\(64, 3, 3, 3\)"
    with pytest.raises(WeightsError, match=shapes):
        model.load_imagenet_trunk(sd)
