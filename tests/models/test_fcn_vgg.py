"""FCN-32s/16s/8s: the port's key set and shapes, strict loading of its checkpoints, output size for any
input, parity with a functional re-statement of the Caffe forward, and the ImageNet trunk import."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from refine_cli.errors import WeightsError
from refine_cli.models import registry
from refine_cli.models.common import SegOutput, bilinear_kernel, scaled
from refine_cli.models.fcn_vgg import FCN, fcn8s, fcn16s, fcn32s
from refine_cli.transforms import CAFFE_FCN, IMAGENET, normalize
from tests.tolerance import assert_sums_close

from ._vgg16_checkpoints import (
    TORCHVISION_CONV_INDEX,
    TRUNK_CONV_NAMES,
    VGG16_TRUNK_SHAPES,
    fabricated_torchvision_vgg16,
    meta_state_dict,
    randomise_,
    torchvision_vgg16_shapes,
)

# The state dicts of wkentaro/pytorch-fcn's FCN32s / FCN16s / FCN8s (n_class=21), in their order.
_FC = {
    "fc6.weight": (4096, 512, 7, 7), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096, 1, 1), "fc7.bias": (4096,),
    "score_fr.weight": (21, 4096, 1, 1), "score_fr.bias": (21,),
}
PORT_SHAPES: dict[int, dict[str, tuple[int, ...]]] = {
    32: {**VGG16_TRUNK_SHAPES, **_FC, "upscore.weight": (21, 21, 64, 64)},
    16: {
        **VGG16_TRUNK_SHAPES, **_FC,
        "score_pool4.weight": (21, 512, 1, 1), "score_pool4.bias": (21,),
        "upscore2.weight": (21, 21, 4, 4),
        "upscore16.weight": (21, 21, 32, 32),
    },
    8: {
        **VGG16_TRUNK_SHAPES, **_FC,
        "score_pool3.weight": (21, 256, 1, 1), "score_pool3.bias": (21,),
        "score_pool4.weight": (21, 512, 1, 1), "score_pool4.bias": (21,),
        "upscore2.weight": (21, 21, 4, 4),
        "upscore8.weight": (21, 21, 16, 16),
        "upscore_pool4.weight": (21, 21, 4, 4),
    },
}
BUILDERS = {32: fcn32s, 16: fcn16s, 8: fcn8s}
SIZES = [(37, 53), (64, 64), (100, 81)]
SMALL = {"width": 0.125, "fc_channels": 32}


def _reference_fcn(
    sd: dict[str, torch.Tensor], x: torch.Tensor, stride: int, pool4_scale: float = 1.0,
    pool3_scale: float = 1.0,
) -> torch.Tensor:
    """The Caffe FCN forward (eval mode) restated with functional ops on a state dict: conv1_1 padded by
    100, ceil-mode 2x2 pools, unpadded 7x7 fc6, bias-free transposed convs, crops 5 / 9 and 19 / 27 / 31."""

    def conv(h: torch.Tensor, name: str, padding: int = 0) -> torch.Tensor:
        return F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=padding)

    def up(h: torch.Tensor, name: str, s: int) -> torch.Tensor:
        return F.conv_transpose2d(h, sd[f"{name}.weight"], stride=s)

    def crop(h: torch.Tensor, offset: int, size: tuple[int, ...]) -> torch.Tensor:
        return h[:, :, offset : offset + size[0], offset : offset + size[1]]

    pools = []
    h = x
    for block, n in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, n + 1):
            h = F.relu(conv(h, f"conv{block}_{i}", padding=100 if block == i == 1 else 1))
        h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
        pools.append(h)
    h = conv(F.relu(conv(F.relu(conv(pools[4], "fc6")), "fc7")), "score_fr")
    size = tuple(x.shape[-2:])
    if stride == 32:
        return crop(up(h, "upscore", 32), 19, size)
    h = up(h, "upscore2", 2)
    h = h + crop(conv(pools[3] * pool4_scale, "score_pool4"), 5, tuple(h.shape[-2:]))
    if stride == 16:
        return crop(up(h, "upscore16", 16), 27, size)
    h = up(h, "upscore_pool4", 2)
    h = h + crop(conv(pools[2] * pool3_scale, "score_pool3"), 9, tuple(h.shape[-2:]))
    return crop(up(h, "upscore8", 8), 31, size)


def _assert_matches(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_published_layout_is_the_ports_key_for_key(stride: int) -> None:
    with torch.device("meta"):
        model = BUILDERS[stride](num_classes=21)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == PORT_SHAPES[stride]
        assert list(model.state_dict()) == list(PORT_SHAPES[stride])  # the port's order too
        model.load_state_dict(meta_state_dict(PORT_SHAPES[stride]), strict=True)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ConvTranspose2d):
            assert module.bias is None, name


def test_fcn8s_at_once_has_fcn8s_keys() -> None:
    with torch.device("meta"):
        model = fcn8s(num_classes=21, at_once=True)
        model.load_state_dict(meta_state_dict(PORT_SHAPES[8]), strict=True)
    with pytest.raises(ValueError, match="FCN-8s"):
        FCN(stride=16, num_classes=21, at_once=True)


def test_width_scales_trunk_and_fc_separately() -> None:
    model = fcn8s(num_classes=5, width=0.25, fc_channels=48)
    published = dict(VGG16_TRUNK_SHAPES)
    for key, value in model.state_dict().items():
        if key in published and key.endswith(".weight"):
            out_c, in_c = published[key][:2]
            want_in = 3 if in_c == 3 else scaled(in_c, 0.25)
            assert tuple(value.shape) == (scaled(out_c, 0.25), want_in, 3, 3), key
    assert model.block_channels == (16, 32, 64, 128, 128)
    assert tuple(model.fc6.weight.shape) == (48, 128, 7, 7)
    assert tuple(model.fc7.weight.shape) == (48, 48, 1, 1)
    assert tuple(model.score_pool3.weight.shape) == (5, 64, 1, 1)
    assert tuple(model.score_pool4.weight.shape) == (5, 128, 1, 1)


def test_compact_registry_model_is_small() -> None:
    model = registry.build("fcn8s_vgg16_compact")
    assert isinstance(model, FCN) and model.width == 0.25 and model.fc_channels == 256
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 3_000_000  # ~11 MB in float32: a checkpoint small enough to ship


def test_initialisation_follows_the_port() -> None:
    model = fcn8s(num_classes=4, **SMALL)
    for name, k in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        assert torch.equal(getattr(model, name).weight, bilinear_kernel(4, k)), name
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not getattr(model, name).weight.any() and not getattr(model, name).bias.any()
    assert model.conv1_1.weight.std() > 0 and model.fc6.weight.std() > 0  # trainable from scratch
    assert not model.eval()(torch.randn(1, 3, 20, 30)).any()  # zero scores -> zero logits


@pytest.mark.parametrize("stride", [32, 16, 8])
@pytest.mark.parametrize("size", SIZES + [(1, 1), (31, 2)])
def test_output_is_at_input_size(stride: int, size: tuple[int, int]) -> None:
    model = BUILDERS[stride](num_classes=3, **SMALL).eval()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 3, *size) and out.dtype == torch.float32 and out.is_contiguous()


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_matches_functional_caffe_forward(stride: int) -> None:
    model = BUILDERS[stride](num_classes=5, **SMALL).eval()
    randomise_(model, seed=stride)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(0)
    for size in SIZES:
        x = torch.randn(1, 3, *size, generator=g) * 50.0
        _assert_matches(model(x), _reference_fcn(sd, x, stride))


def test_fcn8s_at_once_scales_the_skips() -> None:
    model = fcn8s(num_classes=5, at_once=True, **SMALL).eval()
    randomise_(model, seed=1)
    with torch.no_grad():  # as a trained at-once net would: skip scores of the same order as score_fr
        model.score_pool4.weight.mul_(100.0)
        model.score_pool3.weight.mul_(10_000.0)
    sd = model.state_dict()
    x = torch.randn(1, 3, 45, 38, generator=torch.Generator().manual_seed(3)) * 50.0
    out = model(x)
    _assert_matches(out, _reference_fcn(sd, x, 8, pool4_scale=0.01, pool3_scale=0.0001))
    assert not torch.allclose(out, _reference_fcn(sd, x, 8), rtol=1e-3, atol=1e-3)


def test_forward_train_and_dropout() -> None:
    model = fcn16s(num_classes=3, **SMALL)
    assert all(isinstance(d, torch.nn.Dropout) and d.p == 0.5 for d in (model.drop6, model.drop7))
    randomise_(model, seed=2)
    x = torch.randn(1, 3, 24, 24)
    torch.manual_seed(0)
    train_out = model.train().forward_train(x)
    assert isinstance(train_out, SegOutput) and train_out.aux is None
    assert train_out.out.shape == (1, 3, 24, 24)
    train_out.out.square().mean().backward()
    assert model.conv1_1.weight.grad is not None and model.conv1_1.weight.grad.abs().sum() > 0
    eval_out = model.eval()(x)
    assert not torch.allclose(train_out.out.detach(), eval_out)  # dropout active in training only
    assert torch.equal(model.forward_train(x).out, eval_out)


def test_builders_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        fcn8s(21)  # type: ignore[misc]


def test_imagenet_trunk_refuses_what_does_not_fit() -> None:
    sd = fabricated_torchvision_vgg16(seed=0, real_classifier=False)
    with pytest.raises(WeightsError, match="width=0.25"):
        fcn8s(num_classes=21, width=0.25).load_imagenet_trunk(sd)

    model = fcn32s(num_classes=21, fc_channels=64)  # published trunk, narrow fc6: classifier.0 cannot fit
    before = model.conv1_1.weight.clone()
    shapes = r"classifier\.0\.weight.*\(4096, 25088\).*fc6\.weight.*\(64, 512, 7, 7\)"
    with pytest.raises(WeightsError, match=shapes):
        model.load_imagenet_trunk(sd)
    assert torch.equal(model.conv1_1.weight, before)  # validated before anything was copied

    del sd["features.28.bias"]
    with pytest.raises(WeightsError, match=r"features\.28\.bias.*conv5_3\.bias"):
        model.load_imagenet_trunk(sd)


def test_fabricated_checkpoint_has_torchvisions_layout(tv: ModuleType) -> None:
    with torch.device("meta"):
        reference = tv.models.vgg16()
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == torchvision_vgg16_shapes()


@pytest.mark.slow
def test_imagenet_trunk_at_published_width() -> None:
    # One width-1 FCN-8s (134 M parameters) and one 117 M-parameter fabricated checkpoint: ~1 GB, ~10 s.
    sd = fabricated_torchvision_vgg16(seed=1, real_classifier=True)
    model = fcn8s(num_classes=21).eval()

    keys = model.load_imagenet_trunk(sd, preprocess=IMAGENET)  # torchvision's own input: copied as is
    convs = [f"{n}.{k}" for n in TRUNK_CONV_NAMES for k in ("weight", "bias")]
    assert keys == convs + ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"]
    for name, idx in zip(TRUNK_CONV_NAMES, TORCHVISION_CONV_INDEX):
        assert torch.equal(model.get_parameter(f"{name}.weight"), sd[f"features.{idx}.weight"]), name
        assert torch.equal(model.get_parameter(f"{name}.bias"), sd[f"features.{idx}.bias"]), name
    # Convolutionalisation: fc6 at one position of pool5 is classifier.0 on pool5 flattened as (C, H, W).
    # 25,088 terms per output, added in another order by each kernel: the tolerance scales with the sum.
    pool5 = torch.randn(2, 512, 7, 7)
    as_linear = F.linear(pool5.flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])
    magnitude = F.linear(pool5.flatten(1).abs(), sd["classifier.0.weight"].abs(), sd["classifier.0.bias"].abs())
    assert_sums_close(model.fc6(pool5).flatten(1), as_linear, terms=pool5[0].numel() + 1,
                      magnitude=magnitude.max().item())
    assert torch.equal(model.fc7.weight.flatten(1), sd["classifier.3.weight"])
    assert not model.score_fr.weight.any()  # heads keep their init

    # Default: the Caffe input (BGR, 0..255 minus the mean) folded into conv1_1. Away from the padding,
    # conv1_1 on the Caffe input equals the ImageNet conv1_1 on torchvision's input of the same image.
    model.load_imagenet_trunk(sd)
    image = torch.rand(1, 3, 24, 24)
    ours = F.conv2d(normalize(image, CAFFE_FCN), model.conv1_1.weight, model.conv1_1.bias)
    theirs = F.conv2d(normalize(image, IMAGENET), sd["features.0.weight"], sd["features.0.bias"])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    # The whole published-size network still equals the Caffe forward (heads randomised to be seen).
    randomise_(model.score_fr, seed=5)
    randomise_(model.score_pool4, seed=6)
    randomise_(model.score_pool3, seed=7)
    x = normalize(torch.rand(1, 3, 64, 64), CAFFE_FCN)
    with torch.inference_mode():
        _assert_matches(model(x), _reference_fcn(model.state_dict(), x, 8))
