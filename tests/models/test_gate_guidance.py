"""The learnt guidance of the colour-gated refiner: an untrained one changes nothing to speak of, its two outputs act
on the gates as documented (s scales the colour differences, c closes gates), and it trains through the torch
scans."""

from __future__ import annotations

import pytest
import torch

from refine_cli.models.colour_spn import ColourPropagation
from refine_cli.models.gate_guidance import CLOSURE_SCALE, GateGuidance, half_size

PLAIN = {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2}


def _scene(width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A faint vertical colour edge at column 24 (a step of 0.3 over RGB) and a mask whose boundary strays 8 px to
    its left: class 1 from column 16 on. Returns the image (1, 3, 20, W) and the one-hot mask (1, 2, 20, W)."""
    image = torch.full((1, 3, 20, width), 0.4)
    image[..., 24:] += 0.1
    labels = torch.zeros(20, width, dtype=torch.long)
    labels[:, 16:] = 1
    return image, torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1)[None].float()


def _set_outputs(module: ColourPropagation, scale: float, closure_bias: float) -> None:
    with torch.no_grad():
        module.guidance.out.bias.copy_(torch.tensor([scale, closure_bias]))


def test_an_untrained_guidance_leaves_the_refiner_as_it_was():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 30, 40)
    coarse = torch.rand(1, 3, 30, 40).softmax(1)
    plain = ColourPropagation(**PLAIN).refine_probabilities(image, coarse)
    guided = ColourPropagation(**PLAIN, guidance=8).refine_probabilities(image, coarse)
    # c starts at 0.5 * softplus(-6) = 0.0012, against colour differences of up to 3
    assert torch.allclose(plain, guided, atol=2e-3)
    assert not torch.equal(plain, guided)  # the guidance did run


def test_a_negative_scale_lets_the_scans_cross_a_faint_edge_and_closure_stops_them():
    image, coarse = _scene()
    plain = ColourPropagation(**PLAIN, guidance=4)
    crossing = ColourPropagation(**PLAIN, guidance=4)
    _set_outputs(crossing, -3.0, -20.0)  # every colour difference counts 0.05 times: the edge at 24 all but gone
    closed = ColourPropagation(**PLAIN, guidance=4)
    _set_outputs(closed, 0.0, 20.0)  # c = 10 on every link: no gate lets anything through
    class_one = {name: module.refine_probabilities(image, coarse)[0, 1, 10]
                 for name, module in (("plain", plain), ("crossing", crossing), ("closed", closed))}
    # At column 20, between the stray boundary and the edge: the plain scans average class 1's side up to the edge,
    # the crossing ones reach past it (class 1 spreads into the left, the edge no longer holds it), the closed ones
    # leave the mask as it was.
    assert class_one["closed"][12].item() < 1e-3 and class_one["closed"][20].item() > 1 - 1e-3
    assert class_one["crossing"][12].item() > class_one["plain"][12].item() + 0.05
    assert class_one["crossing"][40].item() < class_one["plain"][40].item() - 0.05


def test_closure_is_added_to_the_differences_and_scale_multiplies_them():
    guidance = GateGuidance(2)
    with torch.no_grad():
        guidance.out.bias.copy_(torch.tensor([0.5, 0.0]))
    image = torch.rand(1, 3, 6, 7)
    columns, rows = torch.rand(1, 6, 6), torch.rand(1, 5, 7)
    new_columns, new_rows = guidance.modulate(image, columns, rows)
    closure = CLOSURE_SCALE * torch.nn.functional.softplus(torch.tensor(0.0))
    assert torch.allclose(new_columns, columns * torch.tensor(0.5).exp() + closure, atol=1e-6)
    assert torch.allclose(new_rows, rows * torch.tensor(0.5).exp() + closure, atol=1e-6)


def test_the_guidance_trains_through_the_torch_scans():
    torch.manual_seed(0)
    module = ColourPropagation(**PLAIN, colour_weight=1.0, guidance=4, backend="torch")
    image, coarse = _scene(40)
    refined = module.refine_probabilities(image, coarse)
    loss = -refined[0, 1, :, 30:].clamp_min(1e-6).log().mean()
    loss.backward()
    for name, parameter in module.guidance.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert module.guidance.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [0, -2])
def test_the_guidance_needs_a_channel(channels: int):
    with pytest.raises(ValueError, match="at least 1"):
        ColourPropagation(**PLAIN, guidance=channels)


def test_a_batch_gets_what_each_image_gets_alone_and_odd_sizes_keep_their_size():
    torch.manual_seed(0)
    guidance = GateGuidance(4)
    for parameter in guidance.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    images = torch.rand(2, 3, 13, 21)  # odd on both sides: the half-size image rounds up
    with torch.no_grad():
        scale, closure = guidance(images)
        for index in range(2):
            alone = guidance(images[index:index + 1])
            assert torch.allclose(scale[index], alone[0][0], atol=1e-5)
            assert torch.allclose(closure[index], alone[1][0], atol=1e-5)
    assert scale.shape == closure.shape == (2, 13, 21)
    assert scale.abs().max() <= 3.0 and closure.min() >= 0
    assert scale.std() > 0.01  # the random weights reach the output


@pytest.mark.parametrize("shape", [(1, 3, 360, 480), (2, 3, 13, 21), (1, 3, 1, 1), (1, 3, 2, 5)])
def test_half_size_is_the_two_by_two_mean_less_a_half(shape: tuple[int, ...]):
    image = torch.rand(shape)
    expected = torch.nn.functional.avg_pool2d(image - 0.5, 2, ceil_mode=True)
    assert torch.allclose(half_size(image), expected, atol=1e-6)


def test_an_oriented_guidance_acts_on_the_links_along_rows_and_along_columns_apart():
    guidance = GateGuidance(2, oriented=True)
    with torch.no_grad():  # maps: scale and closure of the links along rows, then of the links along columns
        guidance.out.bias.copy_(torch.tensor([0.5, 20.0, 0.0, -20.0]))
    image = torch.rand(1, 3, 6, 7)
    columns, rows = torch.rand(1, 6, 6), torch.rand(1, 5, 7)
    new_columns, new_rows = guidance.modulate(image, columns, rows)
    closed = CLOSURE_SCALE * torch.nn.functional.softplus(torch.tensor(20.0))
    open_ = CLOSURE_SCALE * torch.nn.functional.softplus(torch.tensor(-20.0))
    assert torch.allclose(new_columns, columns * torch.tensor(0.5).exp() + closed, atol=1e-5)
    assert torch.allclose(new_rows, rows + open_, atol=1e-6)
    scale, closure = guidance(image)
    assert scale.shape == closure.shape == (1, 2, 6, 7)


def test_an_untrained_oriented_guidance_gives_what_an_untrained_plain_one_does():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 30, 40)
    coarse = torch.rand(1, 3, 30, 40).softmax(1)
    plain = ColourPropagation(**PLAIN, guidance=8).refine_probabilities(image, coarse)
    oriented = ColourPropagation(**PLAIN, guidance=8, guidance_oriented=True).refine_probabilities(image, coarse)
    assert torch.allclose(plain, oriented, atol=1e-6)


def test_the_guidance_is_its_documented_network_in_either_memory_layout():
    """On a CPU its convolutions run in NHWC whatever the module's layout (the pipeline turns networks NHWC, a
    module built directly is NCHW), and its output layer reads their maps without a copy: both layouts must give
    what the network written plainly in NCHW gives, and gradients must still reach every weight."""
    torch.manual_seed(0)
    guidance = GateGuidance(4, oriented=True)
    for parameter in guidance.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    nhwc = GateGuidance(4, oriented=True)
    nhwc.load_state_dict(guidance.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    image = torch.rand(2, 3, 17, 24)
    F = torch.nn.functional
    with torch.no_grad():  # three 3 x 3 convolutions at half size, their maps concatenated into a 1 x 1 output
        x1 = F.relu(guidance.conv1(F.avg_pool2d(image - 0.5, 2, ceil_mode=True).contiguous()))
        x2 = F.relu(guidance.conv2(x1))
        x3 = F.relu(guidance.conv3(x2))
        maps = F.conv2d(torch.cat([x1, x2, x3], 1), guidance.out.weight, guidance.out.bias)
        maps = F.interpolate(maps, scale_factor=2, mode="bilinear", align_corners=False)[..., :17, :24]
        expected = (maps[:, 0::2].clamp(-3, 3), CLOSURE_SCALE * F.softplus(maps[:, 1::2]))
        for module in (guidance, nhwc):
            for got, want in zip(module(image), expected):
                assert got.shape == (2, 2, 17, 24)
                assert torch.allclose(got, want, atol=1e-5)
    scale, closure = guidance(image)
    (scale.sum() + closure.sum()).backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in guidance.parameters())
