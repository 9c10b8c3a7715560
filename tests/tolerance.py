"""Tolerances for comparing two float computations of the same sums, that hold on any x86 CPU and thread count.

Two kernels that compute the same sum (a convolution and the linear layer it equals, an AVX2 and an AVX-512 build
of one convolution, one thread and eight) add its terms in different orders, and float rounding depends on the
order. The error grows with the number of terms: an inner product of n terms computed in any order is within
lambda * sqrt(n) * u * sum(|terms|) of the exact value with probability at least 1 - 2n exp(-lambda^2 / 2)
(Higham & Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019, Theorem 3.1;
u is the unit roundoff). Two such computations differ by at most twice that. LAMBDA = 8 makes a failure from
rounding alone below 1e-9 per sum for n up to 10^5, while a wrong weight layout still differs by about the size of
the outputs themselves.
"""

from __future__ import annotations

import math

import torch

# Unit roundoff: half the distance from 1 to the next float.
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
LAMBDA = 8.0


def sum_atol(terms: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """The largest difference two `dtype` computations of a sum of `terms` terms may show, whatever order each adds
    them in, when the terms' absolute values add up to at most `magnitude` (for a layer: the same layer run on |x|
    with |weights| and |bias|, its largest output)."""
    if terms < 1 or magnitude < 0:
        raise ValueError(f"need terms >= 1 and magnitude >= 0, got {terms} and {magnitude}")
    return 2 * LAMBDA * math.sqrt(terms) * UNIT_ROUNDOFF[dtype] * magnitude


def assert_sums_close(actual: torch.Tensor, expected: torch.Tensor, *, terms: int, magnitude: float) -> None:
    """`torch.testing.assert_close` with the tolerance of `sum_atol` (and no relative part: the absolute one
    already covers every output, since no output exceeds `magnitude`)."""
    atol = sum_atol(terms, magnitude, expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol)
