"""The C++ CPU kernels (csrc/scan_cpu.cpp): built once at first use with torch.utils.cpp_extension, cached in the
torch extensions folder, and wrapped as an autograd function. A machine without a compiler gets a logged warning
and the PyTorch kernels instead (`available()` is False, `build_error()` says why)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "scan_cpu.cpp"


def _isa() -> tuple[str, list[str]]:
    """Instruction-set suffix and flags: AVX2 + FMA where the CPU has them (about 25 % faster here than the SSE2
    baseline), nothing elsewhere. The suffix keeps one build per kind of CPU in a shared torch extensions folder."""
    if torch.backends.cpu.get_cpu_capability().startswith("AVX"):  # "AVX2", "AVX512"; "DEFAULT" / "SVE..." else
        return "avx2", ["/arch:AVX2"] if sys.platform == "win32" else ["-mavx2", "-mfma"]
    return "generic", []


def _flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags. OpenMP where the compiler has it by default (gcc, MSVC); Apple clang has none, and the
    kernels then run on one thread (at::parallel_for degrades to a plain loop)."""
    if sys.platform == "win32":
        return ["/O2", "/openmp", *_isa()[1]], []
    if sys.platform == "darwin":
        return ["-O3", *_isa()[1]], []
    return ["-O3", "-fopenmp", *_isa()[1]], ["-fopenmp"]


# The name keys torch's build cache; torch rebuilds by itself when the source or the flags change.
EXTENSION_NAME = f"refine_cli_spn_cpu_{_isa()[0]}"
NORM_CODES = {None: 0, "bounded": 1, "unit_sum": 2}  # the Norm enum of scan_cpu.cpp


@dataclass(frozen=True)
class BuildResult:
    ok: bool
    error: str | None
    seconds: float


@contextlib.contextmanager
def _build_tools_on_path() -> Iterator[None]:
    """torch runs `ninja` from PATH. The pip package `ninja` puts it next to the interpreter (the venv's bin), which
    is not on PATH when a user runs `.venv/bin/refine-cli` directly: add both places for the build only."""
    extra = [os.path.dirname(sys.executable)]
    with contextlib.suppress(ImportError):
        import ninja

        extra.insert(0, ninja.BIN_DIR)
    old = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join([*extra, old or os.defpath])
    try:
        yield
    finally:
        if old is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old


@functools.cache
def load() -> BuildResult:
    """Build (first call on a machine: tens of seconds) or load (cached: well under a second) the extension. Never
    raises: a failed build is reported in the result and logged once."""
    from torch.utils import cpp_extension

    start = time.perf_counter()
    log.info("loading the C++ propagation kernels (built once, then cached under %s)", _build_root())
    try:
        with _build_tools_on_path():
            # Registers torch.ops.refine_cli_spn.scan_forward / scan_backward (TORCH_LIBRARY in the source).
            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(SOURCE)],
                extra_cflags=_flags()[0],
                extra_ldflags=_flags()[1],
                is_python_module=False,
                verbose=False,
            )
    # No compiler or ninja, a compile or link error, an unloadable library: all end in the PyTorch kernels.
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as exc:
        seconds = time.perf_counter() - start
        message = _first_cause(exc)
        log.warning(
            "the C++ propagation kernels could not be built (%s); using the slower PyTorch kernels. Install a C++ "
            "compiler (g++ or clang) and `pip install ninja` to get them.",
            message,
        )
        return BuildResult(False, message, seconds)
    seconds = time.perf_counter() - start
    log.info("C++ propagation kernels ready in %.1f s", seconds)
    return BuildResult(True, None, seconds)


def _first_cause(exc: BaseException) -> str:
    """One line out of a build failure (torch puts the whole compiler log in the message): the first line that names
    an error or a missing tool, else the last one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    words = ("not found", "no such file", "error:", "required")
    telling = [line for line in lines if any(word in line.lower() for word in words)]
    return (telling or lines[-1:])[0][:300]


def _build_root() -> str:
    from torch.utils import cpp_extension

    return os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()


def available() -> bool:
    """True when the extension is built (building it now if needed)."""
    return load().ok


def build_error() -> str | None:
    return load().error


class CppScan(torch.autograd.Function):
    """Max over directional scans with the C++ kernels.

    x: (N, K, C, H, W); gates: (N, D, 3, C, H, W), same dtype, raw when `norm` is given (normalised inside) else used
    as given; dirs: D direction codes (indices into refine_cli.ops.DIRECTIONS). Returns (N, K, C, H, W) like x.
    The backward recomputes the hidden states instead of keeping D full-size float maps alive.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, dirs: Sequence[int], norm: str | None, eps: float):
        x, gates = x.contiguous(), gates.contiguous()
        ctx.save_for_backward(x, gates)
        ctx.args = (list(dirs), NORM_CODES[norm], float(eps))
        return torch.ops.refine_cli_spn.scan_forward(x, gates, *ctx.args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, gates = ctx.saved_tensors
        need_dx, need_dg = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx, dg = torch.ops.refine_cli_spn.scan_backward(
            grad.to(x.dtype).contiguous(), x, gates, *ctx.args, need_dx, need_dg
        )
        return (
            dx.to(x.dtype) if need_dx else None,
            dg.to(gates.dtype) if need_dg else None,
            None,
            None,
            None,
        )
