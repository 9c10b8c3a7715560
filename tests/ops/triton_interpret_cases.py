"""Parity of the Triton kernels with the reference loop, run on CPU tensors by the Triton interpreter.

Not collected on its own (no test_ prefix): test_triton_interpret.py runs this file in a fresh process with
TRITON_INTERPRET=1, which must be set before triton is first imported. Sizes stay tiny: the interpreter executes every
program of the grid in Python.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through test_triton_interpret.py (needs TRITON_INTERPRET=1 before triton is imported)",
                allow_module_level=True)
pytest.importorskip("triton")

from refine_cli.ops import DIRECTIONS, normalize_gates, propagate, propagate_directions, triton_scan  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the random gradient weights below: same draw whichever tests run first


def _inputs(n, k, c, h, w, *, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w) if k is None else (n, k, c, h, w), generator=gen, dtype=dtype)
    raw = torch.randn(n, 4, 3, c, h, w, generator=gen, dtype=dtype) * 2
    return x, raw


def _definition(x, raw, gate_norm):
    sets = [raw[:, d] if gate_norm is None else normalize_gates(raw[:, d], gate_norm) for d in range(4)]
    return functools.reduce(
        torch.maximum, [propagate(x, g, d, backend="reference") for g, d in zip(sets, DIRECTIONS)]
    )


def _grads(fn, x, raw, weight):
    a, b = x.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    out = fn(a, b)
    (out.double() * weight).sum().backward()
    return out.detach(), a.grad, b.grad


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_single_direction_forward_and_backward(direction):
    # Grouped maps, odd H != W; W = 7 leaves a partial 4-step tile at the end of the horizontal scans.
    x, raw = _inputs(1, 2, 1, 5, 7)
    gates = normalize_gates(raw[:, 0])
    weight = torch.randn_like(x)
    got = _grads(lambda a, b: propagate(a, b, direction, backend="triton"), x, gates, weight)
    want = _grads(lambda a, b: propagate(a, b, direction, backend="reference"), x, gates, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("gate_norm", [None, "bounded", "unit_sum"])
def test_four_directions_with_fused_normalisation(gate_norm):
    x, raw = _inputs(1, 2, 1, 4, 6)
    weight = torch.randn_like(x)
    got = _grads(lambda a, b: propagate_directions(a, b, gate_norm=gate_norm, backend="triton"), x, raw, weight)
    want = _grads(lambda a, b: _definition(a, b, gate_norm), x, raw, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_full_lane_block_and_padded_map_block():
    # H = W = 16 fills the 16-lane block exactly; K = 3 maps run in a block of 4 with one masked row.
    x, raw = _inputs(1, 3, 1, 16, 16)
    assert triton_scan.block_sizes(3, 16)[:2] == (4, 16)
    weight = torch.randn_like(x)
    got = _grads(lambda a, b: propagate_directions(a, b, gate_norm="bounded", backend="triton"), x, raw, weight)
    want = _grads(lambda a, b: _definition(a, b, "bounded"), x, raw, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_maps_split_over_programs_add_gate_gradients_atomically(monkeypatch):
    # One lane block per program: the 3 maps of a plane go to 3 programs whose gate gradients meet in atomic adds.
    monkeypatch.setattr(triton_scan, "LANES_PER_PROGRAM", 16)
    assert triton_scan.block_sizes(3, 5)[0] == 1
    x, raw = _inputs(1, 3, 1, 5, 4)
    weight = torch.randn_like(x)
    got = _grads(lambda a, b: propagate_directions(a, b, gate_norm="bounded", backend="triton"), x, raw, weight)
    want = _grads(lambda a, b: _definition(a, b, "bounded"), x, raw, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_ungrouped_maps_and_single_pixel_width():
    for shape in [(2, None, 1, 3, 5), (1, None, 2, 1, 6), (1, None, 1, 6, 1)]:
        x, raw = _inputs(*shape)
        torch.testing.assert_close(
            propagate_directions(x, raw, gate_norm="bounded", backend="triton"), _definition(x, raw, "bounded")
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float32(dtype):
    x, raw = _inputs(1, 1, 1, 4, 9, dtype=torch.float32)
    x, raw = x.to(dtype), raw.to(dtype)  # the reference runs below see exactly these rounded inputs
    weight = torch.randn(x.shape, dtype=torch.float64)
    run = functools.partial(propagate_directions, gate_norm="unit_sum", backend="triton")
    got = _grads(run, x, raw, weight)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    # Forward: the float32 kernel on the same inputs, rounded once at the end: bit for bit in float16. The
    # interpreter's own float32 -> bfloat16 cast is off by up to one unit in the last place (a GPU rounds to nearest).
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(got[0], run(x.float(), raw.float()).to(dtype), rtol=ulp, atol=0)
    # Backward: float32 arithmetic, but the saved hidden states are in `dtype`.
    want = _grads(lambda a, b: _definition(a.double(), b.double(), "unit_sum"), x, raw, weight)
    tol = {torch.float16: 2e-2, torch.bfloat16: 6e-2}[dtype]
    torch.testing.assert_close(got[1].double(), want[1].double(), rtol=tol, atol=tol)
    torch.testing.assert_close(got[2].double(), want[2].double(), rtol=tol, atol=tol)


def test_float32_matches_float64_definition():
    x, raw = _inputs(1, 1, 1, 4, 9, dtype=torch.float32)
    weight = torch.randn(x.shape, dtype=torch.float64)
    got = _grads(lambda a, b: propagate_directions(a, b, gate_norm="unit_sum", backend="triton"), x, raw, weight)
    want = _grads(lambda a, b: _definition(a.double(), b.double(), "unit_sum"), x, raw, weight)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-5)


def test_inference_merges_directions_in_place():
    # Without gradients each launch maxes into the output instead of keeping four maps; NaN still wins.
    x, raw = _inputs(1, 2, 1, 4, 6, dtype=torch.float32)
    x[0, 0, 0, 1, 5] = float("nan")  # reaches (1, 3) only through the right-to-left scan
    with torch.no_grad():
        got = propagate_directions(x, raw, gate_norm="bounded", backend="triton")
    assert torch.isnan(got[0, 0, 0, 1, 3])
    torch.testing.assert_close(got, _definition(x, raw, "bounded"), equal_nan=True)
