"""The C++ CPU kernels (csrc/scan_cpu.cpp: the three-way scans; csrc/edge_mean_cpu.cpp: the colour-gated refiner's
step; csrc/colour_model_cpu.cpp: its local colour models' per-pixel passes): built once at first use with torch.utils.cpp_extension, cached in the
torch extensions folder, and wrapped as an autograd function. A machine without a compiler gets a logged warning
and the PyTorch kernels instead (`available()` is False, `build_error()` says why).

Builds never wait forever. torch guards a build folder with a bare `lock` file that a killed build leaves behind,
and every later build then waits on it without end. Each build here first takes an operating-system lock on a file
beside the folder (released by the kernel when its holder dies, however it dies): whoever holds it is the only
builder, so a torch `lock` found then is stale and is removed. A live build elsewhere is waited for at most
`BUILD_WAIT_S` seconds; after that this process uses the PyTorch kernels and says why."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import errno
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

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "scan_cpu.cpp", CSRC / "edge_mean_cpu.cpp", CSRC / "colour_model_cpu.cpp")
HEADERS = (CSRC / "transpose.h",)


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
        return ["/O2", "/openmp", *_isa()[1], f"/D{_headers_key()}"], []
    if sys.platform == "darwin":
        return ["-O3", *_isa()[1], f"-D{_headers_key()}"], []
    return ["-O3", "-fopenmp", *_isa()[1], f"-D{_headers_key()}"], ["-fopenmp"]


@functools.cache
def _headers_key() -> str:
    """A macro naming the headers' content: torch rebuilds when the sources or the flags change, and does not read
    the headers, so their digest rides in the flags."""
    digest = hashlib.sha256(b"".join(header.read_bytes() for header in HEADERS)).hexdigest()[:16]
    return f"REFINE_CLI_HEADERS_{digest}"


# The name keys torch's build cache; torch rebuilds by itself when the source or the flags change.
EXTENSION_NAME = f"refine_cli_spn_cpu_{_isa()[0]}"
NORM_CODES = {None: 0, "bounded": 1, "unit_sum": 2}  # the Norm enum of scan_cpu.cpp
BUILD_WAIT_S = 600.0  # how long to wait for another process's build (a normal one takes well under a minute)


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
    raises and never waits without end: a failed build is reported in the result and logged once."""
    return _build(build_directory(), BUILD_WAIT_S)


def _build(folder: Path, wait_s: float) -> BuildResult:
    from torch.utils import cpp_extension

    start = time.perf_counter()
    log.info("loading the C++ propagation kernels (built once, then cached in %s)", folder)
    try:
        with _sole_builder(folder, wait_s), _build_tools_on_path():
            # Registers torch.ops.refine_cli_spn.scan_forward / scan_backward, torch.ops.refine_cli_edge.edge_mean
            # and torch.ops.refine_cli_colour.colour_counts / colour_reweigh (TORCH_LIBRARY in the sources).
            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(source) for source in SOURCES],
                extra_cflags=_flags()[0],
                extra_ldflags=_flags()[1],
                build_directory=str(folder),
                is_python_module=False,
                verbose=False,
            )
    # No compiler or ninja, a compile or link error, an unloadable library, a build elsewhere that never ends: all
    # end in the PyTorch kernels.
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


def build_directory() -> Path:
    """Where the extension is built: one folder per Python, torch version and kind of CPU under the torch extensions
    folder (TORCH_EXTENSIONS_DIR when set), so a torch upgrade never loads a library built against another torch."""
    torch_version = torch.__version__.split("+")[0]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(_build_root()) / f"{python}_torch{torch_version}" / EXTENSION_NAME


@contextlib.contextmanager
def _sole_builder(folder: Path, wait_s: float) -> Iterator[None]:
    """Hold the operating-system lock of `folder`'s builds (waiting up to `wait_s` seconds for another holder), then
    clear the torch `lock` file a killed build left. Raises TimeoutError when the other build outlasts the wait."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".build-lock"), "a+b") as handle:
        deadline = time.monotonic() + wait_s
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"another process has been building the C++ kernels in {folder} for over {wait_s:.0f} s"
                )
            time.sleep(0.2)
        try:
            stale = folder / "lock"  # torch's FileBaton: nobody else can be building now
            if stale.exists():
                log.warning("removing %s, left by a C++ kernel build that was killed", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            _unlock(handle)


def _try_lock(handle) -> bool:
    """Take the exclusive lock on an open file without blocking; False when another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN, errno.EDEADLK):
            return False
        raise
    return True


def _unlock(handle) -> None:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
