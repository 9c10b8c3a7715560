"""`propagate_directions` (four scans, max, fused gate normalisation) against its definition, and backend selection:
what "auto" picks, what a named backend that cannot run says, and a C++ build that fails."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from refine_cli.errors import UsageError
from refine_cli.ops import (
    BACKENDS,
    DIRECTIONS,
    available_backends,
    normalize_gates,
    propagate,
    propagate_directions,
    resolve_backend,
    unavailable_reason,
)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the random gradient weights below: same draw whichever tests run first


@pytest.fixture(params=["torch", "cpp"])
def backend(request):
    reason = unavailable_reason(request.param, "cpu")
    if reason is not None:
        pytest.skip(reason)
    return request.param


def _inputs(n, k, c, h, w, *, dtype=torch.float64, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, c, h, w) if k is None else (n, k, c, h, w)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    raw = torch.randn(n, 4, 3, c, h, w, generator=gen, dtype=dtype) * scale  # many pixels with sum |g| > 1
    return x, raw


def _by_definition(x, raw, gate_norm, eps=1e-6):
    sets = [raw[:, d] if gate_norm is None else normalize_gates(raw[:, d], gate_norm, eps=eps) for d in range(4)]
    outs = [propagate(x, g, direction, backend="reference") for g, direction in zip(sets, DIRECTIONS)]
    return functools.reduce(torch.maximum, outs)


@pytest.mark.parametrize("gate_norm", [None, "bounded", "unit_sum"])
@pytest.mark.parametrize("shape", [(2, 3, 2, 5, 7), (1, None, 3, 6, 6), (1, 2, 1, 1, 5)])
def test_matches_definition(backend, gate_norm, shape):
    x, raw = _inputs(*shape)
    expected = _by_definition(x, raw, gate_norm)
    torch.testing.assert_close(propagate_directions(x, raw, gate_norm=gate_norm, backend=backend), expected)


@pytest.mark.parametrize("gate_norm", [None, "bounded", "unit_sum"])
def test_gradients_match_autograd_of_definition(backend, gate_norm):
    x, raw = _inputs(2, 3, 2, 5, 6)
    weight = torch.randn_like(x)
    grads = []
    for run in (
        lambda a, b: propagate_directions(a, b, gate_norm=gate_norm, backend=backend),
        lambda a, b: _by_definition(a, b, gate_norm),
    ):
        a, b = x.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        (run(a, b) * weight).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_gradcheck(backend):
    x, raw = _inputs(1, 2, 1, 3, 4)
    x.requires_grad_(True)
    raw.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: propagate_directions(a, b, gate_norm="bounded", backend=backend), (x, raw)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    x, raw = _inputs(1, 2, 2, 6, 40, dtype=torch.float32)
    x, raw = x.to(dtype), raw.to(dtype)
    out = propagate_directions(x, raw, gate_norm="unit_sum", backend=backend)
    assert out.dtype == dtype
    expected = propagate_directions(x.float(), raw.float(), gate_norm="unit_sum", backend=backend)
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), rtol=0, atol=0)


def test_constant_map_stays_constant(backend):
    x = torch.full((1, 2, 3, 5, 7), -1.25)
    _, raw = _inputs(1, 2, 3, 5, 7, dtype=torch.float32)
    torch.testing.assert_close(propagate_directions(x, raw, gate_norm="bounded", backend=backend), x)


def test_nan_from_one_direction_wins_the_max(backend):
    # A NaN at column 3 reaches (1, 1) only through the right-to-left scan; torch.maximum keeps it, so must the kernels.
    x, raw = _inputs(1, 1, 1, 4, 4, dtype=torch.float32)
    x[0, 0, 0, 1, 3] = float("nan")
    out = propagate_directions(x, raw, gate_norm="bounded", backend=backend)
    assert torch.isnan(out[0, 0, 0, 1, 1])
    torch.testing.assert_close(out, _by_definition(x, raw, "bounded"), equal_nan=True)


def test_shape_and_option_errors():
    x, raw = _inputs(1, 2, 1, 3, 4)
    with pytest.raises(ValueError, match="gates must be"):
        propagate_directions(x, raw[:, :3])
    with pytest.raises(ValueError, match="gate normalisation"):
        propagate_directions(x, raw, gate_norm="softmax")
    with pytest.raises(ValueError, match="backend"):
        propagate_directions(x, raw, backend="magic")


def test_available_backends_on_cpu():
    names = available_backends("cpu")
    assert names[-1] == "reference" and "torch" in names and "auto" not in names
    assert set(names) <= set(BACKENDS)
    assert resolve_backend("auto", "cpu") == names[0]
    assert names[0] == ("cpp" if unavailable_reason("cpp", "cpu") is None else "torch")


def test_named_backend_that_cannot_run_raises(monkeypatch):
    with pytest.raises(UsageError, match="CPU tensors only"):
        resolve_backend("cpp", "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UsageError, match="triton"):
        propagate(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2), "left_to_right", backend="triton")


@pytest.mark.slow
def test_failed_cpp_build_warns_and_auto_falls_back(tmp_path):
    # A fresh process (the build result is cached per process) whose compiler does not exist.
    script = textwrap.dedent(
        """
        import logging, torch
        from refine_cli.errors import UsageError
        from refine_cli.ops import available_backends, cpp, propagate
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        result = cpp.load()
        assert not result.ok and result.error, result
        assert available_backends("cpu") == ("torch", "reference")
        x, gates = torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2)
        assert propagate(x, gates, "left_to_right").shape == x.shape
        try:
            propagate(x, gates, "left_to_right", backend="cpp")
        except UsageError as exc:
            print("USAGE:", exc)
        """
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING the C++ propagation kernels could not be built" in done.stderr
    assert "USAGE: propagation backend 'cpp' is not available" in done.stdout and "compiler" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_backends_match_cpu(dtype):
    x, raw = _inputs(2, 3, 4, 16, 24, dtype=torch.float32)
    x, raw = x.to(dtype), raw.to(dtype)
    weight = torch.randn(x.shape)
    a, b = x.float().requires_grad_(True), raw.float().requires_grad_(True)
    expected = propagate_directions(a, b, gate_norm="bounded", backend="torch")
    (expected * weight).sum().backward()
    for name in available_backends("cuda"):
        a_cuda, b_cuda = x.cuda().requires_grad_(True), raw.cuda().requires_grad_(True)
        out = propagate_directions(a_cuda, b_cuda, gate_norm="bounded", backend=name)
        assert out.dtype == dtype
        (out.float() * weight.cuda()).sum().backward()
        torch.testing.assert_close(out.float().cpu(), expected.detach(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(a_cuda.grad.float().cpu(), a.grad, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(b_cuda.grad.float().cpu(), b.grad, rtol=5e-2, atol=5e-2)
