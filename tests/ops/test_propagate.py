"""The propagation op against the paper's formula, the literal loop, autograd and its invariants, for every CPU
backend (the Triton kernels are checked under the interpreter in test_triton_interpret.py)."""

from __future__ import annotations

import pytest
import torch

from refine_cli.ops import DIRECTIONS, normalize_gates, propagate, unavailable_reason
from refine_cli.ops.reference import scan_left_to_right_reference


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the random gradient weights below: same draw whichever tests run first


@pytest.fixture(params=["torch", "cpp"])
def backend(request):
    reason = unavailable_reason(request.param, "cpu")
    if reason is not None:
        pytest.skip(reason)
    return request.param


def _inputs(n=2, c=3, h=5, w=7, *, k=None, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, c, h, w) if k is None else (n, k, c, h, w)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    gates = normalize_gates(torch.randn(n, 3, c, h, w, generator=gen, dtype=dtype))
    return x, gates


def test_left_to_right_matches_hand_computed_example(backend):
    # One 3x2 map, one channel: column 1 computed by hand from the recurrence, borders included.
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]).view(1, 1, 3, 2)
    g1 = torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.0, 0.3]])
    g2 = torch.tensor([[0.0, 0.4], [0.0, 0.3], [0.0, 0.2]])
    g3 = torch.tensor([[0.0, 0.5], [0.0, 0.1], [0.0, 0.4]])
    gates = torch.stack([g1, g2, g3]).view(1, 3, 1, 3, 2)
    out = propagate(x, gates, "left_to_right", backend=backend)[0, 0]
    # top row: no row above, so g1 drops out of (1 - sum) and contributes nothing.
    top = (1 - 0.4 - 0.5) * 10 + 0.4 * 1 + 0.5 * 2
    mid = (1 - 0.2 - 0.3 - 0.1) * 20 + 0.2 * 1 + 0.3 * 2 + 0.1 * 3
    # bottom row: no row below, so g3 drops out.
    bottom = (1 - 0.3 - 0.2) * 30 + 0.3 * 2 + 0.2 * 3
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out[:, 1], torch.tensor([top, mid, bottom]))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 6), (1, 2, 6, 1), (3, 1, 8, 8)])
def test_left_to_right_matches_reference_loop(shape, backend):
    x, gates = _inputs(*shape)
    expected = scan_left_to_right_reference(x, gates)
    torch.testing.assert_close(propagate(x, gates, "left_to_right", backend=backend), expected)


# Each direction is left_to_right on the transformed maps, mapped back: written here independently of the op.
_TRANSFORMS = {
    "left_to_right": (lambda t: t, lambda t: t),
    "right_to_left": (lambda t: t.flip(-1), lambda t: t.flip(-1)),
    "top_to_bottom": (lambda t: t.transpose(-1, -2), lambda t: t.transpose(-1, -2)),
    "bottom_to_top": (lambda t: t.transpose(-1, -2).flip(-1), lambda t: t.flip(-1).transpose(-1, -2)),
}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_direction_is_left_to_right_on_transformed_maps(direction, backend):
    x, gates = _inputs(2, 3, 5, 7)
    fwd, back = _TRANSFORMS[direction]
    expected = back(scan_left_to_right_reference(fwd(x), fwd(gates)))
    torch.testing.assert_close(propagate(x, gates, direction, backend=backend), expected)
    torch.testing.assert_close(propagate(x, gates, direction, backend="reference"), expected)


def test_directions_differ(backend):
    x, gates = _inputs(1, 2, 6, 6)
    outs = [propagate(x, gates, d, backend=backend) for d in DIRECTIONS]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(outs[i], outs[j])


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_grouped_maps_share_gates(direction, backend):
    x, gates = _inputs(2, 3, 5, 6, k=4)
    out = propagate(x, gates, direction, backend=backend)
    for k in range(4):
        torch.testing.assert_close(out[:, k], propagate(x[:, k], gates, direction, backend="reference"))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gradcheck(direction, backend):
    x, gates = _inputs(2, 2, 4, 5)
    x.requires_grad_(True)
    gates.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: propagate(a, b, direction, backend=backend), (x, gates))


def test_gradcheck_grouped(backend):
    x, gates = _inputs(1, 2, 4, 5, k=3)
    x.requires_grad_(True)
    gates.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: propagate(a, b, "bottom_to_top", backend=backend), (x, gates))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_backward_matches_autograd_of_reference_loop(direction, backend):
    x, gates = _inputs(2, 4, 9, 11, dtype=torch.float32)
    weight = torch.randn_like(x)
    grads = []
    for name in (backend, "reference"):
        a, b = x.clone().requires_grad_(True), gates.clone().requires_grad_(True)
        (propagate(a, b, direction, backend=name) * weight).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


def test_gates_of_first_column_and_outside_neighbours_get_no_gradient(backend):
    x, gates = _inputs(1, 2, 4, 5)
    gates.requires_grad_(True)
    propagate(x, gates, "left_to_right", backend=backend).sum().backward()
    assert gates.grad[..., 0].abs().max() == 0  # column 0 passes x through
    assert gates.grad[:, 0, :, 0, :].abs().max() == 0  # no row above the top row
    assert gates.grad[:, 2, :, -1, :].abs().max() == 0  # no row below the bottom row
    assert gates.grad[..., 1:].abs().max() > 0


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_constant_map_stays_constant(direction, backend):
    _, gates = _inputs(2, 3, 6, 8, dtype=torch.float32)
    gates = torch.randn_like(gates)  # holds for any gates, normalised or not
    x = torch.full((2, 3, 6, 8), 0.37)
    torch.testing.assert_close(propagate(x, gates, direction, backend=backend), x)


def test_positive_normalised_gates_stay_within_input_range(backend):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 2, 16, 64, generator=gen)
    gates = normalize_gates(torch.rand(1, 3, 2, 16, 64, generator=gen) * 3, "bounded")
    for direction in DIRECTIONS:
        out = propagate(x, gates, direction, backend=backend)
        assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype, backend):
    x, gates = _inputs(1, 4, 8, 96, dtype=torch.float32)
    out = propagate(x.to(dtype), gates.to(dtype), "left_to_right", backend=backend)
    assert out.dtype == dtype
    expected = propagate(x.to(dtype).float(), gates.to(dtype).float(), "left_to_right", backend=backend)
    # Only the final rounding to `dtype` differs from a float32 run on the same (rounded) inputs.
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), rtol=0, atol=0)


def test_half_precision_backward(backend):
    x, gates = _inputs(1, 2, 5, 6, dtype=torch.float32)
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for dtype in (torch.bfloat16, torch.float32):
        a = x.to(torch.bfloat16).to(dtype).requires_grad_(True)
        b = gates.to(torch.bfloat16).to(dtype).requires_grad_(True)
        (propagate(a, b, "top_to_bottom", backend=backend).float() * weight).sum().backward()
        assert a.grad.dtype == dtype and b.grad.dtype == dtype
        grads.append((a.grad.float(), b.grad.float()))
    # The bfloat16 run accumulates in float32; only the incoming gradient and the results are rounded to bfloat16
    # (2^-8 relative each), so the error stays within a few roundings of the largest term.
    for low, high in zip(grads[0], grads[1]):
        torch.testing.assert_close(low, high, rtol=2e-2, atol=2e-2 * high.abs().max().item())


def test_normalize_gates_bounded_and_unit_sum():
    gates = torch.tensor([[0.1, 0.2, -0.3], [2.0, -1.0, 1.0]]).T.reshape(1, 3, 1, 1, 2)
    bounded = normalize_gates(gates, "bounded")
    torch.testing.assert_close(bounded[..., 0], gates[..., 0])  # sum of magnitudes 0.6: untouched
    torch.testing.assert_close(bounded.abs().sum(1)[..., 1], torch.ones(1, 1, 1))
    unit = normalize_gates(gates, "unit_sum")
    torch.testing.assert_close(unit.abs().sum(1), torch.ones(1, 1, 1, 2), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(normalize_gates(torch.zeros(1, 3, 2, 2), "unit_sum")).all()
    with pytest.raises(ValueError, match="bounded"):
        normalize_gates(gates, "nope")


def test_shape_and_direction_errors():
    x, gates = _inputs(1, 2, 4, 5)
    with pytest.raises(ValueError, match="direction"):
        propagate(x, gates, "diagonal")
    with pytest.raises(ValueError, match="gates must be"):
        propagate(x, gates[:, :2], "left_to_right")
    with pytest.raises(ValueError, match="backend"):
        propagate(x, gates, "left_to_right", backend="magic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    x, gates = _inputs(2, 4, 16, 24, dtype=torch.float32)
    for direction in DIRECTIONS:
        expected = propagate(x.to(dtype), gates.to(dtype), direction).float()
        got = propagate(x.to(dtype).cuda(), gates.to(dtype).cuda(), direction).float().cpu()
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
