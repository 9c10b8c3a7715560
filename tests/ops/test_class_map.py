"""class_map: argmax(1)'s answer (the first class on ties) through the C++ pass and through max(1)."""

from __future__ import annotations

import pytest
import torch

from refine_cli.ops import cpp
from refine_cli.ops.class_map import class_map


@pytest.mark.parametrize("k", [1, 2, 11])
def test_the_best_class_and_the_first_on_ties(k: int):
    scores = torch.randn(2, k, 37, 53, generator=torch.Generator().manual_seed(k))
    scores[0, :, :5, :5] = 0.5  # every class tied: class 0
    scores[1, k // 2 :, 7, :] = 9.0  # the upper half tied: its first class
    got = class_map(scores)
    assert got.dtype == torch.int64 and got.shape == (2, 37, 53)
    assert torch.equal(got, scores.argmax(1))
    assert got[0, :5, :5].eq(0).all() and got[1, 7].eq(k // 2).all()


def test_the_cpp_pass_is_used_on_cpu_float32_without_gradients(monkeypatch: pytest.MonkeyPatch):
    if not cpp.available():
        pytest.skip("the C++ kernels could not be built")
    calls = []
    real = torch.ops.refine_cli_colour.class_map
    monkeypatch.setattr(torch.ops.refine_cli_colour, "class_map", lambda s: calls.append(s.shape) or real(s))
    scores = torch.randn(1, 3, 8, 8)
    class_map(scores)
    class_map(scores.double())  # other dtypes and tensors that need gradients take max(1)
    class_map(scores.clone().requires_grad_())
    assert calls == [scores.shape]
