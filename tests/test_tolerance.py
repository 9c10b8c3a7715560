"""The tolerance rule of tests/tolerance.py against real kernel differences: a convolution compared with the linear
layer it equals, over 25,088 terms, under the CPU kernels another machine would pick (AVX2, as on AMD EPYC; the
generic build; one thread). Each setting runs in a fresh process, since the kernels are chosen at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tolerance import sum_atol

ROOT = Path(__file__).resolve().parents[1]

# fc6 of VGG-16 at one position of pool5: a 7x7 convolution over 512 channels is a linear layer over 25,088 terms.
_SCRIPT = """
import torch, torch.nn.functional as F
from tests.tolerance import assert_sums_close
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 512, 7, 7, generator=g)
w = torch.randn(64, 512, 7, 7, generator=g) * 0.01
b = torch.randn(64, generator=g) * 0.03
conv = F.conv2d(x, w, b).flatten(1)
linear = F.linear(x.flatten(1), w.flatten(1), b)
magnitude = F.linear(x.flatten(1).abs(), w.flatten(1).abs(), b.abs()).max().item()
terms = x[0].numel() + 1
assert_sums_close(conv, linear, terms=terms, magnitude=magnitude)
# The tolerance still tells a wrong layout apart: the weights read as (C, W, H) instead of (C, H, W).
swapped = F.linear(x.flatten(1), w.transpose(2, 3).flatten(1), b)
try:
    assert_sums_close(conv, swapped, terms=terms, magnitude=magnitude)
except AssertionError:
    pass
else:
    raise SystemExit("a transposed weight layout passed the tolerance")
print((conv - linear).abs().max().item())
"""

KERNELS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}


@pytest.mark.slow
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_long_sums_agree_within_tolerance_on_any_cpu_kernel(kernel: str) -> None:
    env = {**os.environ, **KERNELS[kernel], "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]


def test_sum_tolerance_grows_with_the_terms_and_their_size() -> None:
    assert sum_atol(4 * 25_088, 10.0) == pytest.approx(2 * sum_atol(25_088, 10.0))
    assert sum_atol(100, 3.0) == pytest.approx(3 * sum_atol(100, 1.0))
    # float32 over 25,088 terms of total size 146 (fc6 on a random pool5): about 0.02, where the default
    # assert_close tolerance (1e-5 + 1.3e-6 * |value|) is exceeded by an AVX2 kernel's 3e-5.
    assert 0.01 < sum_atol(25_088, 146.0) < 0.03
    with pytest.raises(ValueError):
        sum_atol(0, 1.0)
