"""Adaptive receptive fields: the two resampling layers (parity with bilinear interpolation, exact inverse
at f = 1), dLoss/df against finite differences and the paper's chain rule, the receptive-field formula,
and the option on FCN and DeepLab-LargeFOV (off: unchanged; on: one parameter, f learns)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_cli.models.adaptive_rf import (
    AdaptiveReceptiveField,
    fc_receptive_field,
    inflate,
    interpolate,
    vgg_trunk_field,
)
from refine_cli.models.fcn_vgg import fcn8s, fcn32s
from refine_cli.models.largefov import deeplab_largefov

from ._vgg16_checkpoints import randomise_

SMALL = {"width": 0.125, "fc_channels": 16}
F64 = torch.float64


def _f(value: float, *, grad: bool = False) -> torch.Tensor:
    return torch.tensor(value, dtype=F64, requires_grad=grad)


def test_unit_factor_is_the_identity() -> None:
    x = torch.randn(2, 3, 9, 6, dtype=F64)
    assert torch.equal(inflate(x, _f(1.0)), x)
    assert torch.equal(interpolate(x, _f(1.0), (9, 6)), x)
    assert torch.equal(interpolate(x, _f(1.0), (9, 6), offset=3.0), x)


@pytest.mark.parametrize("factor, size", [(1.5, (15, 9)), (0.5, (5, 3)), (2.0, (20, 12))])
def test_inflate_is_bilinear_resizing(factor: float, size: tuple[int, int]) -> None:
    # Where f * H is a whole number the half-pixel grid is F.interpolate's (align_corners=False).
    x = torch.randn(1, 2, 10, 6, dtype=F64)
    out = inflate(x, _f(factor))
    assert out.shape[-2:] == size
    torch.testing.assert_close(out, F.interpolate(x, size=size, mode="bilinear", align_corners=False))


def test_inflate_size_rounds_and_respects_min_size() -> None:
    x = torch.randn(1, 1, 10, 7, dtype=F64)
    assert inflate(x, _f(1.3)).shape[-2:] == (13, 9)
    assert inflate(x, _f(0.3), min_size=7).shape[-2:] == (7, 7)


def test_interpolate_undoes_inflate_on_smooth_maps() -> None:
    # A map linear in position is reproduced exactly by bilinear resampling away from the clamped border.
    rows = torch.arange(12, dtype=F64)[:, None]
    cols = torch.arange(10, dtype=F64)[None, :]
    x = (2.0 * rows - 0.5 * cols)[None, None]
    f = _f(1.7)
    back = interpolate(inflate(x, f), f, (12, 10))
    torch.testing.assert_close(back[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])


def test_offset_keeps_grids_aligned_across_unpadded_convs() -> None:
    # An unpadded 3x3 conv whose kernel is a centre 1 crops one cell a side; interpolating with offset 1
    # must land back on the cropped original (a linear map, read away from the clamped border).
    rows = torch.arange(14, dtype=F64)[:, None]
    cols = torch.arange(11, dtype=F64)[None, :]
    x = (1.5 * rows + 0.25 * cols)[None, None]
    centre = torch.zeros(1, 1, 3, 3, dtype=F64)
    centre[0, 0, 1, 1] = 1.0
    for value in (0.6, 1.7):
        f = _f(value)
        back = interpolate(F.conv2d(inflate(x, f), centre), f, (12, 9), offset=1.0)
        torch.testing.assert_close(back[..., 2:-2, 2:-2], x[..., 3:-3, 3:-3])


def _pipeline(f_inflate: torch.Tensor, f_interp: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """inflate -> unpadded 3x3 conv (trims one cell a side) -> interpolate back, weighted sum."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 10, 7, dtype=F64, generator=g)
    w = torch.randn(3, 2, 3, 3, dtype=F64, generator=g)
    weights = torch.randn(1, 3, 8, 5, dtype=F64, generator=g)
    h = F.conv2d(inflate(x, f_inflate), w)
    out = interpolate(h, f_interp, (8, 5), scale=scale, offset=1.0)
    return (out * weights).sum()


def test_factor_gradient_matches_central_differences() -> None:
    # f = 1.3 on 10 x 7: sizes 13 x 9 stay put for |df| < 0.01, and no sampling position lands on a cell
    # centre (where bilinear weights have kinks), so central differences are exact to O(eps^2).
    f = _f(1.3, grad=True)
    assert torch.autograd.gradcheck(lambda t: _pipeline(t, t), (f,), eps=1e-6, atol=1e-7, rtol=1e-5)
    loss = _pipeline(f, f)
    (grad,) = torch.autograd.grad(loss, f)
    eps = 1e-5
    with torch.no_grad():
        plus, minus = _f(1.3 + eps), _f(1.3 - eps)
        numeric = (_pipeline(plus, plus) - _pipeline(minus, minus)) / (2 * eps)
    assert grad.abs() > 1e-3  # a gradient that could not be mistaken for zero
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


def test_gradient_is_the_sum_of_both_layers() -> None:
    f1, f2, shared = _f(1.3, grad=True), _f(1.3, grad=True), _f(1.3, grad=True)
    _pipeline(f1, f2).backward()
    _pipeline(shared, shared).backward()
    assert f1.grad.abs() > 1e-3 and f2.grad.abs() > 1e-3  # both layers move f
    torch.testing.assert_close(f1.grad + f2.grad, shared.grad)


def test_interpolation_follows_the_papers_chain_rule() -> None:
    # The interpolation layer's factor is g = F / f, so dLoss/df = dLoss/dg * (-F / f^2). Feed it
    # f = F / g with g a leaf: its gradient is dLoss/dg.
    scale, f_value = 2.0, 1.3
    f = _f(f_value, grad=True)
    _pipeline(_f(f_value), f, scale=scale).backward()
    g = _f(scale / f_value, grad=True)
    _pipeline(_f(f_value), scale / g, scale=scale).backward()
    torch.testing.assert_close(f.grad, g.grad * (-scale / f_value**2))


def test_module_owns_one_clamped_factor() -> None:
    rf = AdaptiveReceptiveField(1.5, min_size=3, offset=1.0)
    assert [k for k, _ in rf.named_parameters()] == ["factor"] and rf.value == 1.5
    with torch.no_grad():
        rf.factor.fill_(10.0)
    assert rf.value == 4.0  # the upper bound
    x = torch.randn(1, 2, 5, 5)
    assert rf.inflate(x).shape[-2:] == (20, 20)
    with pytest.raises(ValueError, match="rf_init"):
        AdaptiveReceptiveField(0.1)


def test_receptive_field_formula() -> None:
    assert vgg_trunk_field(pools=((2, 2),) * 5, conv5_dilation=1) == (212, 32)
    largefov_pools = ((3, 2), (3, 2), (3, 2), (3, 1), (3, 1))
    assert vgg_trunk_field(pools=largefov_pools, conv5_dilation=2, extra_pool=3) == (243, 8)
    assert fc_receptive_field(trunk_field=212, stride=32, kernel_extent=7) == 404
    assert fc_receptive_field(trunk_field=243, stride=8, kernel_extent=25) == 435
    assert fc_receptive_field(trunk_field=243, stride=8, kernel_extent=9) == 307  # fc6 dilated 4
    assert fc_receptive_field(trunk_field=243, stride=8, kernel_extent=25, factor=2.0) == 243 + 96
    with pytest.raises(ValueError):
        fc_receptive_field(trunk_field=1, stride=1, kernel_extent=3, factor=0.0)


def test_models_report_receptive_field_and_factor() -> None:
    fcn = fcn32s(num_classes=3, adaptive_rf=True, rf_init=2.0, **SMALL)
    assert fcn.rf_factor == 2.0 and fcn.receptive_field() == 212 + 96 and fcn.receptive_field(1.0) == 404
    plain = deeplab_largefov(num_classes=3, **SMALL)
    assert plain.rf_factor is None and plain.receptive_field() == 435


@pytest.mark.parametrize("builder", [fcn8s, deeplab_largefov])
def test_option_off_keeps_keys_and_on_adds_one_parameter(builder) -> None:
    with torch.device("meta"):
        off = list(builder(num_classes=21).state_dict())
        on = list(builder(num_classes=21, adaptive_rf=True).state_dict())
    assert on == off + ["rf.factor"]


def _randomised_pair(builder, factor: float, seed: int):
    """(plain model, adaptive model) with the same random weights, the adaptive one at `factor`."""
    plain = builder(num_classes=4, **SMALL).eval()
    randomise_(plain, seed=seed)  # every layer random, score layers included
    adaptive = builder(num_classes=4, adaptive_rf=True, **SMALL).eval()
    adaptive.load_state_dict({**plain.state_dict(), "rf.factor": torch.tensor(factor)})
    return plain, adaptive


@pytest.mark.parametrize("builder", [fcn8s, deeplab_largefov])
def test_unit_factor_leaves_outputs_unchanged(builder) -> None:
    plain, adaptive = _randomised_pair(builder, 1.0, seed=1)
    x = torch.randn(1, 3, 45, 38)
    torch.testing.assert_close(adaptive(x), plain(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("builder", [fcn8s, deeplab_largefov])
@pytest.mark.parametrize("size", [(1, 1), (37, 53)])
def test_learned_factor_gets_a_gradient_through_the_network(builder, size: tuple[int, int]) -> None:
    plain, model = _randomised_pair(builder, 1.3, seed=2)
    x = torch.randn(2, 3, *size)
    out = model.forward_train(x).out
    assert out.shape == (2, 4, *size)
    out.square().mean().backward()
    if size != (1, 1):  # DeepLab's 1x1 input gives a one-cell map, which resampling leaves alone
        assert not torch.allclose(out, plain(x))  # the factor changes what the network computes
        assert model.rf.factor.grad.abs() > 0
