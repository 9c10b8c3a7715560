"""DilatedNet: layout, both padding geometries (the authors' reflect-padded unpadded net restated with
functional ops and OpenCV's border), the context module's identity initialisation, the two-stage training
hooks, the ImageNet trunk import and the compact registry models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refine_cli.errors import UsageError, WeightsError
from refine_cli.models import registry
from refine_cli.models.common import SegOutput
from refine_cli.models.dilated import (
    CONTEXT_NAMES,
    ContextModule,
    DilatedNet,
    context_widths,
    dilated_context_vgg16,
    dilated_frontend_vgg16,
    identity_init_,
)

from ._vgg16_checkpoints import (
    TORCHVISION_CONV_INDEX,
    TRUNK_CONV_NAMES,
    VGG16_TRUNK_SHAPES,
    fabricated_torchvision_vgg16,
    meta_state_dict,
    randomise_,
)

SMALL = {"width": 0.125, "fc_channels": 16}
SIZES = [(1, 1), (37, 53), (9, 17), (64, 64)]


def _cells(n: int, padding: str) -> int:
    return -(-(n - 1) // 8) + 1 if padding == "reflect" else -(-n // 8)


def _zoom_matrix(n: int, out: int) -> torch.Tensor:
    """(out, n) linear-interpolation weights placing output pixel y at score coordinate y / 8."""
    y = torch.arange(out, dtype=torch.float64)[:, None] / 8.0
    return (1.0 - (y - torch.arange(n, dtype=torch.float64)[None, :]).abs()).clamp(min=0.0)


def _reference_reflect_frontend(
    sd: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' front end (eval mode) in functional ops: image reflected with OpenCV's
    BORDER_REFLECT_101 by 186 (top/left) and 186 + 8n - H (bottom/right), no padding in any conv, 2x2
    pools after blocks 1-3, conv5 dilated 2, fc6 7x7 dilated 4, fc7, final; then each logit pixel y read
    at score coordinate y / 8 (predict.py's `interp_map`). Returns (scores, logits)."""
    height, width = x.shape[-2:]
    n, m = _cells(height, "reflect"), _cells(width, "reflect")
    pad = (186, 186 + 8 * n - height, 186, 186 + 8 * m - width)
    planes = [cv2.copyMakeBorder(c.numpy(), *pad, cv2.BORDER_REFLECT_101) for c in x[0]]
    h = torch.from_numpy(np.stack(planes))[None]
    for block, count in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, count + 1):
            w, b = sd[f"conv{block}_{i}.weight"], sd[f"conv{block}_{i}.bias"]
            h = F.relu(F.conv2d(h, w, b, dilation=2 if block == 5 else 1))
        if block <= 3:
            h = F.max_pool2d(h, 2, stride=2)
    h = F.relu(F.conv2d(h, sd["fc6.weight"], sd["fc6.bias"], dilation=4))
    h = F.relu(F.conv2d(h, sd["fc7.weight"], sd["fc7.bias"]))
    scores = F.conv2d(h, sd["final.weight"], sd["final.bias"])
    rows = _zoom_matrix(scores.shape[-2], height).to(scores.dtype)
    cols = _zoom_matrix(scores.shape[-1], width).to(scores.dtype)
    return scores, torch.einsum("yi,ncij,xj->ncyx", rows, scores, cols)


def test_published_layout() -> None:
    with torch.device("meta"):
        model = dilated_context_vgg16(num_classes=21)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        **VGG16_TRUNK_SHAPES,
        "fc6.weight": (4096, 512, 7, 7), "fc6.bias": (4096,),
        "fc7.weight": (4096, 4096, 1, 1), "fc7.bias": (4096,),
        "final.weight": (21, 4096, 1, 1), "final.bias": (21,),
    }
    # The released VOC model's context module (dilation8_pascal_voc_deploy.prototxt, ct_* layers).
    c_in = 21
    for name, c_out, k in zip(CONTEXT_NAMES, (42, 42, 84, 168, 336, 672, 672, 21), (3,) * 7 + (1,)):
        expected[f"context.{name}.weight"] = (c_out, c_in, k, k)
        expected[f"context.{name}.bias"] = (c_out,)
        c_in = c_out
    assert shapes == expected
    with torch.device("meta"):
        model.load_state_dict(meta_state_dict(expected), strict=True)
    assert model.fc6.dilation == (4, 4) and model.fc6.padding == (0, 0)
    assert all(getattr(model, f"conv5_{i}").dilation == (2, 2) for i in (1, 2, 3))
    assert all(getattr(model, n).padding == (0, 0) for n in TRUNK_CONV_NAMES)  # the authors' unpadded convs
    dilations = [getattr(model.context, n).dilation[0] for n in CONTEXT_NAMES]
    assert dilations == [1, 1, 2, 4, 8, 16, 1, 1]


@pytest.mark.parametrize("padding", ["reflect", "same"])
@pytest.mark.parametrize("size", SIZES)
def test_output_stride_8_and_input_size(padding: str, size: tuple[int, int]) -> None:
    model = dilated_context_vgg16(num_classes=3, context="basic", padding=padding, **SMALL).eval()
    x = torch.randn(2, 3, *size)
    h, w = size
    assert model.scores(x).shape == (2, 3, _cells(h, padding), _cells(w, padding))
    out = model(x)
    assert out.shape == (2, 3, h, w) and out.dtype == torch.float32 and out.is_contiguous()


def test_reflect_frontend_matches_the_authors_geometry() -> None:
    model = dilated_frontend_vgg16(num_classes=4, **SMALL).eval()
    randomise_(model, seed=0)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(1)
    for size in [(21, 30), (9, 1)]:
        x = torch.randn(1, 3, *size, generator=g)
        scores, logits = _reference_reflect_frontend(sd, x)
        torch.testing.assert_close(model.scores(x), scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)


def test_same_padding_centres_cells_on_their_8x8_blocks() -> None:
    model = dilated_frontend_vgg16(num_classes=3, padding="same", **SMALL).eval()
    randomise_(model, seed=2)
    x = torch.randn(1, 3, 29, 40)
    s = model.scores(x)
    assert s.shape[-2:] == (4, 5)
    plain = F.interpolate(s, scale_factor=8, mode="bilinear", align_corners=False)[..., :29, :40]
    torch.testing.assert_close(model(x), plain)


def test_identity_init_follows_the_papers_rule() -> None:
    conv = torch.nn.Conv2d(6, 12, 3)  # C = 3: c_i = 2C, c_{i+1} = 4C
    identity_init_(conv, 3, noise=0.0)
    w = conv.weight
    assert not conv.bias.any()
    assert not w[:, :, [0, 2]].any() and not w[:, :, :, [0, 2]].any()  # only the centre tap
    for b in range(12):
        for a in range(6):
            want = 3 / 12 if (a * 3) // 6 == (b * 3) // 12 else 0.0
            assert w[b, a, 1, 1].item() == want, (b, a)
    identity_init_(conv, 3, noise=1e-3)
    off = conv.weight.detach().clone()
    off[:, :, 1, 1] -= w.detach()[:, :, 1, 1]
    assert 0 < off.std().item() < 1e-3 * 3 / 12 * 1.5  # sigma = noise * C / c_{i+1}


@pytest.mark.parametrize("padding", ["once", "per_layer"])
def test_untrained_context_module_passes_its_input_through(padding: str) -> None:
    x = torch.randn(2, 3, 11, 9) * 3.0
    basic = ContextModule(3, context_widths(3, "basic"), padding=padding)
    assert torch.equal(basic(x), F.relu(x))  # exact: the identity, truncated by the first ReLU
    exact_large = ContextModule(3, context_widths(3, "large"), padding=padding, noise=0.0)
    torch.testing.assert_close(exact_large(x), F.relu(x), rtol=1e-6, atol=1e-6)
    large = ContextModule(3, context_widths(3, "large"), padding=padding)  # the paper's noisy init
    err = (large(x) - F.relu(x)).abs()
    assert 0 < err.max() < 0.05 * x.abs().max()


def test_untrained_context_net_returns_the_truncated_front_end_scores() -> None:
    model = dilated_context_vgg16(num_classes=3, context="basic", padding="same", **SMALL).eval()
    randomise_(model, seed=3)
    basic = ContextModule(3, context_widths(3, "basic"))
    model.context.load_state_dict(basic.state_dict())  # back to the identity init
    x = torch.randn(1, 3, 30, 26)
    assert torch.equal(model.scores(x), F.relu(model.frontend_scores(x)))


def test_two_stage_training() -> None:
    frontend = dilated_frontend_vgg16(num_classes=3, padding="same", **SMALL).eval()
    randomise_(frontend, seed=4)
    model = dilated_context_vgg16(num_classes=3, context="basic", padding="same", **SMALL)
    context_before = {k: v.clone() for k, v in model.context.state_dict().items()}
    keys = model.load_frontend(frontend.state_dict())
    assert keys == list(frontend.state_dict())
    for key, value in model.context.state_dict().items():
        assert torch.equal(value, context_before[key]), key
    x = torch.randn(2, 3, 24, 32)
    torch.testing.assert_close(model.eval().frontend_scores(x), frontend.scores(x))

    n_context = sum(p.numel() for p in model.context_parameters())
    n_frontend = sum(p.numel() for p in model.frontend_parameters())
    assert n_context == sum(p.numel() for p in model.context.parameters()) > 0
    assert n_context + n_frontend == sum(p.numel() for p in model.parameters())

    model.freeze_frontend()
    model.train()
    assert not model.drop6.training and not model.drop7.training and model.context.training
    assert all(not p.requires_grad for p in model.frontend_parameters())
    model.forward_train(x).out.square().mean().backward()
    assert all(p.grad is None for p in model.frontend_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context_parameters())
    torch.testing.assert_close(model.frontend_scores(x), frontend.scores(x))  # no dropout in train mode
    model.freeze_frontend(False)
    assert model.drop6.training and all(p.requires_grad for p in model.frontend_parameters())


def test_stage_hook_names_each_stages_parameters() -> None:
    model = dilated_context_vgg16(num_classes=3, context="basic", padding="same", **SMALL)
    stages = ("frontend", "context", "joint")
    ids = {stage: {id(p) for p in model.trainable_parameters(stage)} for stage in stages}
    assert ids["context"] == {id(p) for p in model.context.parameters()}
    assert ids["frontend"] | ids["context"] == ids["joint"] == {id(p) for p in model.parameters()}
    assert not ids["frontend"] & ids["context"]
    with pytest.raises(UsageError, match="unknown training stage 'decoder'"):
        model.trainable_parameters("decoder")
    # The trainer's generic freeze (requires_grad on the stage's parameters only), then train():
    for p in model.parameters():
        p.requires_grad_(id(p) in ids["context"])
    model.train()
    assert not model.drop6.training and not model.fc6.training and model.context.training
    frontend = dilated_frontend_vgg16(num_classes=3, padding="same", **SMALL)
    assert frontend.trainable_parameters("context") == []  # nothing to train: the trainer refuses
    for p in frontend.parameters():
        p.requires_grad_(False)
    assert frontend.train().drop6.training  # no context module: train() is plain


def test_load_frontend_refuses_what_does_not_fit() -> None:
    model = dilated_context_vgg16(num_classes=3, context="basic", padding="same", **SMALL)
    before = model.fc6.weight.clone()
    wider = dilated_frontend_vgg16(num_classes=3, padding="same", width=0.125, fc_channels=24)
    with pytest.raises(WeightsError, match=r"fc6\.weight.*\(24, 64, 7, 7\).*\(16, 64, 7, 7\)"):
        model.load_frontend(wider.state_dict())
    assert torch.equal(model.fc6.weight, before)  # checked before anything was copied
    with pytest.raises(WeightsError, match="context.conv1_1.weight"):
        model.load_frontend(model.state_dict())  # a context net's state dict is not a front end
    adaptive = dilated_frontend_vgg16(num_classes=3, padding="same", adaptive_rf=True, **SMALL)
    with pytest.raises(WeightsError, match="rf.factor"):
        model.load_frontend(adaptive.state_dict())


@pytest.mark.parametrize("padding", ["reflect", "same"])
def test_adaptive_receptive_field(padding: str) -> None:
    plain = dilated_frontend_vgg16(num_classes=3, padding=padding, **SMALL).eval()
    randomise_(plain, seed=5)
    model = dilated_frontend_vgg16(num_classes=3, padding=padding, adaptive_rf=True, **SMALL).eval()
    model.load_state_dict({**plain.state_dict(), "rf.factor": torch.tensor(1.0)})
    x = torch.randn(1, 3, 19, 12)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-6)  # f = 1: unchanged
    with torch.no_grad():
        model.rf.factor.fill_(0.7)
    out = model(x)
    assert out.shape == (1, 3, 19, 12) and not torch.allclose(out, plain(x))
    out.square().mean().backward()
    assert model.rf.factor.grad.abs() > 0 and model.rf_factor == pytest.approx(0.7)


def test_receptive_field() -> None:
    assert dilated_frontend_vgg16(num_classes=3, **SMALL).receptive_field() == 380
    context = dilated_context_vgg16(num_classes=3, context="basic", **SMALL)
    assert context.receptive_field() == 380 + 66 * 8
    assert context.receptive_field(2.0) == 188 + 24 * 8 / 2 + 66 * 8


def test_forward_train_and_dropout() -> None:
    model = dilated_frontend_vgg16(num_classes=3, padding="same", **SMALL)
    randomise_(model, seed=6)
    x = torch.randn(1, 3, 24, 24)
    out = model.train().forward_train(x)
    assert isinstance(out, SegOutput) and out.aux is None and out.out.shape == (1, 3, 24, 24)
    assert not torch.allclose(out.out, model.eval()(x))  # dropout in training only
    with pytest.raises(TypeError):
        dilated_frontend_vgg16(21)  # type: ignore[misc]
    with pytest.raises(ValueError, match="padding"):
        DilatedNet(num_classes=3, padding="valid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context"):
        dilated_context_vgg16(num_classes=3, context="huge")  # type: ignore[arg-type]


def test_final_layer_init() -> None:
    model = dilated_frontend_vgg16(num_classes=21, padding="same", width=0.25, fc_channels=512)
    assert not model.final.bias.any()
    assert 0.0009 < model.final.weight.std().item() < 0.0011  # network.py: Gaussian std 0.001 (10752)


def test_compact_registry_models() -> None:
    frontend = registry.build("dilated_frontend_vgg16_compact")
    context = registry.build("dilated_context_vgg16_compact")
    for model in (frontend, context):
        assert isinstance(model, DilatedNet) and model.width == 0.25 and model.padding == "same"
        assert sum(p.numel() for p in model.parameters()) < 2_500_000
    assert context.context is not None and context.context.widths == (21,) * 8
    context.load_frontend(frontend.state_dict())  # the compact pair chains


def test_imagenet_trunk_refuses_what_does_not_fit() -> None:
    sd = fabricated_torchvision_vgg16(seed=0, real_classifier=False)
    with pytest.raises(WeightsError, match="width=0.25"):
        dilated_frontend_vgg16(num_classes=21, width=0.25).load_imagenet_trunk(sd)
    model = dilated_frontend_vgg16(num_classes=21, fc_channels=64)  # narrow fc6: classifier.0 cannot fit
    before = model.conv1_1.weight.clone()
    with pytest.raises(WeightsError, match=r"classifier\.0\.weight.*fc6\.weight.*\(64, 512, 7, 7\)"):
        model.load_imagenet_trunk(sd)
    assert torch.equal(model.conv1_1.weight, before)


@pytest.mark.slow
def test_imagenet_trunk_at_published_width() -> None:
    # One width-1 front end (134 M parameters) and a 117 M-parameter fabricated checkpoint: ~1 GB.
    sd = fabricated_torchvision_vgg16(seed=1, real_classifier=True)
    model = dilated_frontend_vgg16(num_classes=21)
    keys = model.load_imagenet_trunk(sd)
    convs = [f"{n}.{k}" for n in TRUNK_CONV_NAMES for k in ("weight", "bias")]
    assert keys == convs + ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"]
    for name, idx in zip(TRUNK_CONV_NAMES, TORCHVISION_CONV_INDEX):  # ImageNet input: no fold
        assert torch.equal(model.get_parameter(f"{name}.weight"), sd[f"features.{idx}.weight"]), name
    assert torch.equal(model.fc6.weight.flatten(1), sd["classifier.0.weight"])
    assert torch.equal(model.fc7.weight.flatten(1), sd["classifier.3.weight"])
