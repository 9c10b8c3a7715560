"""The guidance net and the SPN refiner: shapes, the universal form's per-class sharing, gradients."""

from __future__ import annotations

import pytest
import torch

from refine_cli import models
from refine_cli.models.guidance import GuidanceNet
from refine_cli.models.spn import SpatialPropagation, spn_universal, spn_voc21, suppress_absent_classes
from refine_cli.ops import DIRECTIONS, normalize_gates, propagate


def _probs(n, k, h, w, seed=0):
    return torch.softmax(torch.randn(n, k, h, w, generator=torch.Generator().manual_seed(seed)) * 3, dim=1)


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (64, 48)])
def test_guidance_gate_shape(size):
    net = GuidanceNet(channels=4, width=0.125)
    gates = net(torch.randn(2, 3, *size))
    assert gates.shape == (2, 4, 3, 4, size[0] // 2, size[1] // 2)


def test_spatial_propagation_is_max_over_directions_twice():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 6, 7, generator=gen)
    gates = torch.randn(1, 4, 3, 3, 6, 7, generator=gen)
    normed = [normalize_gates(gates[:, d]) for d in range(4)]
    expected = x
    for _ in range(2):
        expected = torch.stack([propagate(expected, g, d) for g, d in zip(normed, DIRECTIONS)]).amax(0)
    torch.testing.assert_close(SpatialPropagation(passes=2)(x, gates), expected)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_universal_refiner_any_number_of_classes(k):
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4).eval()
    out = refiner(torch.randn(2, 3, 33, 41), _probs(2, k, 33, 41))
    assert out.shape == (2, k, 33, 41) and torch.isfinite(out).all()


def test_universal_refiner_refines_each_class_alone_with_shared_weights():
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4).eval()
    image, coarse = torch.randn(1, 3, 32, 32), _probs(1, 3, 32, 32)
    together = refiner(image, coarse)
    for c in range(3):
        alone = refiner(image, coarse[:, c : c + 1])
        torch.testing.assert_close(together[:, c : c + 1], alone, rtol=1e-5, atol=1e-5)
    # A class permutation permutes the output the same way.
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(refiner(image, coarse[:, perm]), together[:, perm], rtol=1e-5, atol=1e-5)


def test_joint_refiner_takes_its_class_count_only():
    refiner = spn_voc21(classes=4, guidance_width=0.125, hidden=4, mid_channels=8).eval()
    assert refiner(torch.randn(1, 3, 32, 32), _probs(1, 4, 32, 32)).shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="takes 4 class maps"):
        refiner(torch.randn(1, 3, 32, 32), _probs(1, 3, 32, 32))


def test_refiner_rejects_mismatched_sizes():
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4)
    with pytest.raises(ValueError, match="must share"):
        refiner(torch.randn(1, 3, 32, 32), _probs(1, 2, 30, 32))


def test_every_refiner_parameter_gets_a_gradient():
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4)
    out = refiner(torch.randn(2, 3, 32, 32), _probs(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 32))).backward()
    missing = [n for n, p in refiner.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_propagation_uses_the_image():
    # Gates come from the image: a different image changes the refined output for the same coarse map.
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4).eval()
    torch.nn.init.normal_(refiner.guidance.gates.weight, std=0.1)
    coarse = _probs(1, 2, 32, 32)
    a = refiner(torch.randn(1, 3, 32, 32), coarse)
    b = refiner(torch.randn(1, 3, 32, 32), coarse)
    assert not torch.allclose(a, b)


def test_suppress_absent_classes():
    coarse = torch.zeros(1, 3, 2, 2)
    coarse[0, 0] = 0.6
    coarse[0, 2, 0, 0] = 0.9  # class 2 wins one pixel, class 1 none
    logits = torch.randn(1, 3, 2, 2)
    out = suppress_absent_classes(logits, coarse)
    assert torch.isinf(out[0, 1]).all()
    torch.testing.assert_close(out[0, [0, 2]], logits[0, [0, 2]])


@pytest.mark.parametrize("name", models.names("refiner"))
def test_registry_builds_refiners(name):
    refiner = models.build(name)
    assert isinstance(refiner, torch.nn.Module)
    assert models.spec(name).kind == "refiner"


@pytest.mark.parametrize("size", [(32, 32), (37, 53)])
def test_guidance_half_skip_and_pointwise_gates_keep_the_gate_shape(size):
    net = GuidanceNet(channels=4, width=0.125, batch_norm=True, half_skip=True, gate_kernel=1).eval()
    assert net.gates.kernel_size == (1, 1)
    assert net(torch.randn(2, 3, *size)).shape == (2, 4, 3, 4, size[0] // 2, size[1] // 2)


def test_guidance_half_skip_puts_conv2_2_into_the_gates():
    # With the skip, the gates see conv2_2: a change confined to conv2_2's output changes them. Without it,
    # conv2_2 reaches the gates only through the deeper blocks, which a zeroed conv3_1 cuts off.
    torch.manual_seed(0)
    image = torch.randn(1, 3, 32, 32)
    for skip in (True, False):
        net = GuidanceNet(channels=2, width=0.125, half_skip=skip, gate_kernel=1).eval()
        torch.nn.init.normal_(net.gates.weight, std=0.1)
        torch.nn.init.zeros_(net.conv3_1.weight)
        before = net(image)
        torch.nn.init.normal_(net.conv2_2.bias, std=1.0)
        assert torch.allclose(before, net(image)) != skip


def test_guidance_rejects_mismatched_half_skip_and_gate_kernel():
    with pytest.raises(ValueError, match="half_skip"):
        GuidanceNet(channels=2, width=0.125, last_channels=64, half_skip=True)
    with pytest.raises(ValueError, match="gate_kernel"):
        GuidanceNet(channels=2, width=0.125, gate_kernel=5)


def test_half_resolution_decoding_upsamples_only_the_logits():
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4, decode_at="half").eval()
    image, coarse = torch.randn(1, 3, 30, 42), _probs(1, 3, 30, 42)
    out = refiner(image, coarse)
    assert out.shape == (1, 3, 30, 42)
    # Same as decoding the propagated half-resolution maps by hand and resizing the logits.
    gates = refiner.guidance(image)
    hidden = refiner.encode(coarse.reshape(3, 1, 30, 42)).view(1, 3, 4, 15, 21)
    hidden = refiner.propagation(hidden, gates).flatten(0, 1)
    logits = refiner.decode_out(torch.relu(refiner.decode_mid(hidden)))
    expected = torch.nn.functional.interpolate(logits, size=(30, 42), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected.view(1, 3, 30, 42))
    with pytest.raises(ValueError, match="decode_at"):
        spn_universal(guidance_width=0.125, hidden=4, mid_channels=4, decode_at="quarter")


def test_untrained_residual_refiner_returns_the_coarse_prediction():
    refiner = spn_universal(guidance_width=0.125, hidden=4, mid_channels=4, decode_at="half", residual=True).eval()
    torch.nn.init.normal_(refiner.guidance.gates.weight, std=0.1)  # propagation far from the identity
    coarse = _probs(2, 3, 30, 42)
    out = refiner(torch.randn(2, 3, 30, 42), coarse)
    torch.testing.assert_close(out, coarse.clamp_min(1e-3).log())
    # A residual refiner learns corrections: after one step on the labels the output moves toward them.
    labels = coarse.argmin(1)
    opt = torch.optim.SGD(refiner.parameters(), lr=1.0)
    image = torch.randn(2, 3, 30, 42)
    before = torch.nn.functional.cross_entropy(refiner(image, coarse), labels)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(refiner(image, coarse), labels).backward()
        opt.step()
    assert torch.nn.functional.cross_entropy(refiner(image, coarse), labels) < before


def test_released_forms_decode_from_the_propagated_maps_alone():
    assert not spn_voc21(classes=4, guidance_width=0.125, hidden=4, mid_channels=8).residual
    assert not spn_universal(guidance_width=0.125, hidden=4, mid_channels=4).residual
    compact = models.build("spn_universal_compact")
    assert compact.residual and compact.decode_at == "half" and compact.guidance.half_skip


def test_class_map_and_present_classes_agree_with_argmax_and_one_hot_on_ties():
    from refine_cli.models.spn import present_classes
    from refine_cli.ops.class_map import class_map

    probs = _probs(2, 5, 16, 16, seed=3)
    probs[:, :, :4] = 0.2  # uniform: every class ties, the first wins
    probs[1] = 0.2
    probs[1, :, 8:] = 0.0
    probs[1, 3:5, 8:] = 0.5  # classes 3 and 4 tie, 3 wins
    for scores in (probs, probs.log(), probs.half()):
        torch.testing.assert_close(class_map(scores), scores.argmax(1))
        expected = torch.nn.functional.one_hot(scores.argmax(1), 5).flatten(1, 2).amax(1).bool()
        torch.testing.assert_close(present_classes(scores), expected)
    assert present_classes(probs)[1].tolist() == [True, False, False, True, False]


def test_colour_affinity_joins_each_gate_to_the_neighbour_the_scan_weighs():
    from refine_cli.models.guidance import colour_affinity

    h, w, sigma = 5, 6, 0.7
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    got = colour_affinity(image, (h, w), sigma)[0]  # (4, 3, h, w)
    # The neighbour gate k of each direction weighs at (i, j), k = 0, 1, 2 (refine_cli.ops.reference's convention).
    neighbour = {
        "left_to_right": lambda i, j, k: (i + k - 1, j - 1),
        "right_to_left": lambda i, j, k: (i + k - 1, j + 1),
        "top_to_bottom": lambda i, j, k: (i - 1, j + k - 1),
        "bottom_to_top": lambda i, j, k: (i + 1, j + k - 1),
    }
    values = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
    for name in DIRECTIONS:  # the convention is the kernels': one gate of 1 copies the neighbour it names
        for k in range(3):
            gates = torch.zeros(1, 3, 1, h, w, dtype=torch.float64)
            gates[0, k, 0, 2, 3] = 1
            copied = propagate(values, gates, name, backend="reference")[0, 0, 2, 3]
            assert copied == values[0, 0][neighbour[name](2, 3, k)]
    for d, name in enumerate(DIRECTIONS):
        for k in range(3):
            for i in range(h):
                for j in range(w):
                    a, b = neighbour[name](i, j, k)
                    if not (0 <= a < h and 0 <= b < w):
                        continue  # outside the map: the kernels never use this gate
                    dist = (image[0, :, i, j] - image[0, :, a, b]).square().sum()
                    expected = torch.exp(-dist / (2 * sigma**2))
                    torch.testing.assert_close(got[d, k, i, j], expected, msg=f"{name} gate {k} at {(i, j)}")


def test_edge_sigma_gates_are_the_learned_gates_times_the_colour_affinity():
    from refine_cli.models.guidance import colour_affinity

    torch.manual_seed(0)
    plain = GuidanceNet(channels=4, width=0.125, batch_norm=True).eval()
    edged = GuidanceNet(channels=4, width=0.125, batch_norm=True, edge_sigma=0.5).eval()
    edged.load_state_dict(plain.state_dict())  # no parameters of its own: a plain checkpoint fits
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 2.0  # one vertical colour edge
    g_plain, g_edged = plain(image), edged(image)
    torch.testing.assert_close(g_edged, g_plain * colour_affinity(image, (16, 16), 0.5)[:, :, :, None])
    across = g_edged[:, 0, :, :, :, 8]  # left-to-right gates of the first column past the edge (half resolution)
    assert across.abs().max() < 1e-3 * g_plain[:, 0, :, :, :, 8].abs().max()
    torch.testing.assert_close(g_edged[:, 0, :, :, :, 4], g_plain[:, 0, :, :, :, 4])  # flat colour: unchanged
    with pytest.raises(ValueError, match="edge_sigma"):
        GuidanceNet(channels=4, edge_sigma=0.0)


def test_keep_gate_starts_near_the_coarse_map_and_can_overrule_a_hard_one():
    from refine_cli.models.spn import KEEP_BIAS, RESIDUAL_EPS

    torch.manual_seed(0)
    model = spn_universal(guidance_width=0.125, guidance_batch_norm=True, hidden=4, mid_channels=4, residual=True,
                          keep_gate=True).eval()
    image = torch.randn(1, 3, 24, 24)
    coarse = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 24, 24)), 3).permute(0, 3, 1, 2).float()
    keep, correction = model.forward_parts(image, coarse)
    assert keep.shape == correction.shape == coarse.shape
    torch.testing.assert_close(keep, torch.full_like(keep, torch.sigmoid(torch.tensor(KEEP_BIAS)).item()))
    assert correction.abs().max() == 0
    logits = model(image, coarse)
    torch.testing.assert_close(logits, keep * coarse.clamp_min(RESIDUAL_EPS).log() + correction)
    assert torch.equal(logits.argmax(1), coarse.argmax(1))
    # a keep of 0 leaves the decision to the correction alone, whatever the one-hot input says
    with torch.no_grad():
        model.decode_out.bias.copy_(torch.tensor([0.0, -100.0]))
    keep, _ = model.forward_parts(image, coarse)
    assert keep.max() < 1e-30


def test_keep_gate_needs_a_residual_refiner():
    with pytest.raises(ValueError, match="residual"):
        spn_universal(guidance_width=0.125, hidden=4, keep_gate=True)


def test_prototype_similarity_is_the_cosine_to_each_class_mean():
    from refine_cli.models.spn import prototype_similarity

    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, :, 0] = 1.0  # left column points along d0
    features[0, 1, :, 1] = 1.0  # right column along d1
    coarse = torch.zeros(1, 3, 2, 2)
    coarse[0, 0, :, 0] = 1.0  # class 0 is the left column
    coarse[0, 1, :, 1] = 1.0  # class 1 the right one; class 2 nowhere
    s = prototype_similarity(features, coarse)
    torch.testing.assert_close(s[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(s[0, 1], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert s[0, 2].abs().max() == 0


def test_prototype_refiner_takes_any_number_of_classes_and_starts_as_the_identity():
    torch.manual_seed(0)
    model = spn_universal(guidance_width=0.125, guidance_batch_norm=True, hidden=4, mid_channels=4, residual=True,
                          keep_gate=True, prototype=True).eval()
    for k in (1, 2, 5):
        coarse = torch.softmax(torch.randn(2, k, 20, 28), 1)
        image = torch.randn(2, 3, 20, 28)
        assert torch.equal(model(image, coarse).argmax(1), coarse.argmax(1))
    with pytest.raises(ValueError, match="universal"):
        from refine_cli.models.guidance import GuidanceNet
        from refine_cli.models.spn import SPNRefiner

        SPNRefiner(guidance=GuidanceNet(channels=4, width=0.125), per_class=False, classes=3, prototype=True)
