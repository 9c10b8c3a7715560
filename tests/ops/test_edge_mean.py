"""`edge_mean`, the colour-gated refiner's step: both kernels agree with the definition written out pixel by pixel."""

from __future__ import annotations

import pytest
import torch

from refine_cli.errors import UsageError
from refine_cli.ops import cpp
from refine_cli.ops.edge_mean import edge_mean

needs_cpp = pytest.mark.skipif(not cpp.available(), reason="the C++ kernels could not be built here")


def _definition(x: torch.Tensor, links: torch.Tensor, dim: int) -> torch.Tensor:
    """out[k, t] = sum_s x[k, s] prod(links between s and t) / the same summed over k, in float64, line by line."""
    x, links = x.double(), links.double()
    if dim == 2:  # along columns: the same along rows of the transposed maps
        return _definition(x.transpose(-1, -2), links.transpose(-1, -2), 3).transpose(-1, -2)
    n, k, h, w = x.shape
    out = torch.empty_like(x)
    for b in range(n):
        for r in range(h):
            for t in range(w):
                weights = torch.ones(w, dtype=torch.float64)
                for s in range(w):
                    lo, hi = min(s, t), max(s, t)
                    weights[s] = links[b, r, lo:hi].prod()
                total = (x[b, :, r, :] * weights).sum(-1)
                out[b, :, r, t] = total / total.sum()
    return out


def _inputs(shape: tuple[int, int, int, int], dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, k, h, w = shape
    x = torch.softmax(3 * torch.randn(shape, generator=g), 1)
    links = 0.99 * torch.rand((n, h, w - 1) if dim == 3 else (n, h - 1, w), generator=g)
    return x, links


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 4), (1, 2, 6, 1), (1, 4, 70, 9), (1, 2, 21, 45)])
def test_matches_the_definition(backend: str, dim: int, shape: tuple[int, int, int, int]):
    x, links = _inputs(shape, dim)
    got = edge_mean(x, links, dim, backend=backend)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), _definition(x, links, dim), rtol=1e-5, atol=1e-6)


@needs_cpp
@pytest.mark.parametrize("dim", [2, 3])
def test_kernels_agree_on_a_frame(dim: int):
    # 130 rows and 70 columns: blocks of 64 lines with a partial last one in both directions.
    x, links = _inputs((1, 11, 130, 70), dim, seed=1)
    torch.testing.assert_close(edge_mean(x, links, dim, backend="cpp"), edge_mean(x, links, dim, backend="torch"),
                               rtol=1e-5, atol=1e-6)


def test_a_closed_link_separates_the_two_sides():
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])[None, :, None, :]  # two classes, one row
    links = torch.tensor([[[0.9, 0.0, 0.9]]])  # nothing passes between the 2nd and 3rd pixel
    for backend in ("torch", *(("cpp",) if cpp.available() else ())):
        torch.testing.assert_close(edge_mean(x.clamp_min(1e-6), links, 3, backend=backend), x, atol=1e-5, rtol=0)


def test_gradients_take_the_torch_kernel_and_cpp_refuses_them():
    x, links = _inputs((1, 2, 4, 5), 3)
    links.requires_grad_(True)
    edge_mean(x, links, 3)[:, 0].sum().backward()  # "auto": the differentiable kernel
    assert links.grad is not None and links.grad.abs().sum() > 0
    if cpp.available():
        with pytest.raises(UsageError, match="no backward"):
            edge_mean(x, links, 3, backend="cpp")


def test_bad_arguments_are_named():
    x, links = _inputs((1, 2, 4, 5), 3)
    with pytest.raises(ValueError, match="links must be"):
        edge_mean(x, links, 2)
    with pytest.raises(ValueError, match="dim must be"):
        edge_mean(x, links, 1)
    with pytest.raises(ValueError, match="unknown backend"):
        edge_mean(x, links, 3, backend="fast")
