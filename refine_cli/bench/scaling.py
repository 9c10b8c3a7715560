"""How time and memory grow with image size and batch (`refine-cli bench scaling`): the base network and the refiner
timed apart on batches of synthetic images, per image, with their peak memory; and the plot of both."""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refine_cli import io
from refine_cli.bench.timing import extra_peak_mib, median_seconds
from refine_cli.bench.workload import write_synthetic_jpegs
from refine_cli.config import BenchConfig
from refine_cli.errors import UsageError
from refine_cli.ops import resolve_backend
from refine_cli.pipeline import Refiner

_BENCH = BenchConfig()

STAGES: tuple[str, ...] = ("base", "refiner")
CPU_MEMORY = "extra peak resident memory of one call, in a fresh process (MiB)"
CUDA_MEMORY = "peak CUDA memory allocated by one call, above what was allocated before it (MiB)"


@dataclass(frozen=True)
class ScalingPoint:
    """One stage at one image size and batch.

    ms_per_image: median time of one batched call / batch (None when it ran out of memory).
    peak_mib: see ScalingReport.memory (None when not measured or out of memory).
    classes_propagated: the refiner's class maps propagated per batch (the universal refiner runs only the classes
        the base network votes for in the batch); None for the base network.
    """

    stage: str
    size: int
    batch: int
    ms_per_image: float | None
    peak_mib: float | None
    classes_propagated: int | None = None
    note: str = ""


@dataclass(frozen=True)
class ScalingReport:
    device: str
    precision: str
    base: str
    refiner: str
    repeats: int
    memory: str  # what peak_mib means on this device
    points: tuple[ScalingPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batch(engine_device: torch.device, paths: Sequence[str]) -> torch.Tensor:
    images = np.stack([io.read_image(p) for p in paths])
    return torch.from_numpy(images).to(engine_device).permute(0, 3, 1, 2).float().div_(255)


def _stage_fn(model: Refiner, stage: str, x: torch.Tensor) -> tuple[Callable[[], Any], int | None]:
    """The call that runs `stage` on the (N, 3, H, W) batch `x` (on the device, in [0, 1]), and for the refiner the
    number of classes it propagates. The refiner's coarse input is the base network's output, computed here."""
    engine = model.engine
    if stage == "base":
        def run_base() -> None:
            with torch.inference_mode():
                engine.base_probs(x)

        return run_base, None
    with torch.inference_mode():
        coarse = engine.base_probs(x)
    classes = int(coarse.argmax(1).unique().numel())

    def run_refiner() -> None:
        with torch.inference_mode():
            engine.refine_logits(x, coarse)

    return run_refiner, classes


def _fresh_process_call(base: str, refiner: str, stage: str, paths: tuple[str, ...], precision: str
                        ) -> Callable[[], Any]:
    """What `extra_peak_mib` runs in its fresh process: the networks loaded, the propagation kernels loaded and the
    batch decoded (not counted), then one call of the stage (counted)."""
    model = Refiner(base, refiner, device="cpu", precision=precision, refiner_side=None)
    resolve_backend("auto", model.device)  # loads the C++ kernels now, not inside the measured call
    return _stage_fn(model, stage, _batch(model.device, paths))[0]


def _cuda_peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def bench_scaling(
    *,
    base: str | Path = "default",
    refiner: str | Path = "default",
    sizes: Sequence[int] = _BENCH.scaling_sizes,
    batches: Sequence[int] = _BENCH.scaling_batches,
    device: str = "auto",
    precision: str = "fp32",
    repeats: int = _BENCH.repeats,
    memory: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ScalingReport:
    """Per image size and batch, the base network (`Engine.base_probs`) and the refiner (`Engine.refine_logits` on
    the base network's output) on batches of distinct synthetic images of size x size: the median time of `repeats`
    calls after a warm-up, per image, and (with `memory`) the peak memory of one call: on a CPU the extra peak
    resident memory in a fresh process (`timing.extra_peak_mib`; Linux only), on CUDA the peak allocated. A call
    that runs out of GPU memory is recorded as such, and the larger batches of that size are skipped. The refiner
    runs at full resolution (`refiner_side=None`): this is the networks' own scaling, not the CPU default's cap."""
    if not sizes or not batches:
        raise UsageError("give at least one image size and one batch size")
    if min(sizes) < 32 or min(batches) < 1:
        raise UsageError("image sizes must be at least 32 pixels and batches at least 1")
    model = Refiner(base, refiner, device=device, precision=precision, refiner_side=None)
    if model.base is None or model.refiner is None:
        raise UsageError("the scaling benchmark times a base network and a refiner; give both")
    on_cuda = model.device.type == "cuda"
    base_path, refiner_path = str(model.base.path), str(model.refiner.path)
    points: list[ScalingPoint] = []
    with tempfile.TemporaryDirectory(prefix="refine-cli-scaling-") as tmp:
        for size in sorted(sizes):
            if progress is not None:
                progress(f"rendering {max(batches)} images of {size}x{size}")
            paths = [str(p) for p in write_synthetic_jpegs(Path(tmp) / str(size), n=max(batches), size=size,
                                                           seed=seed)]
            for batch in sorted(batches):
                for stage in STAGES:
                    if progress is not None:
                        progress(f"{stage} at {size}x{size}, batch {batch}")
                    points.append(_measure(model, stage, size, batch, paths[:batch], repeats=repeats,
                                           memory=memory, on_cuda=on_cuda, base_path=base_path,
                                           refiner_path=refiner_path, precision=precision))
                if any(p.note == "out of memory" for p in points[-len(STAGES):]):
                    break
    return ScalingReport(
        device=model.describe_device(),
        precision=precision,
        base=base_path,
        refiner=refiner_path,
        repeats=repeats,
        memory=CUDA_MEMORY if on_cuda else CPU_MEMORY,
        points=tuple(points),
    )


def _measure(model: Refiner, stage: str, size: int, batch: int, paths: Sequence[str], *, repeats: int, memory: bool,
             on_cuda: bool, base_path: str, refiner_path: str, precision: str) -> ScalingPoint:
    try:
        fn, classes = _stage_fn(model, stage, _batch(model.device, paths))
        ms = 1e3 * median_seconds(fn, repeats=repeats) / batch
        peak = None
        if memory and on_cuda:
            peak = _cuda_peak_mib(fn, model.device)
        elif memory:
            peak = extra_peak_mib(functools.partial(
                _fresh_process_call, base_path, refiner_path, stage, tuple(paths), precision))
        return ScalingPoint(stage, size, batch, ms, peak, classes)
    except torch.OutOfMemoryError:
        if on_cuda:
            torch.cuda.empty_cache()
        return ScalingPoint(stage, size, batch, None, None, None, "out of memory")


def require_matplotlib() -> None:
    """UsageError, saying what to install, when matplotlib (the `plot` extra) is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError('the scaling plot needs matplotlib: pip install "refine-cli[plot]"')


def plot_scaling(report: ScalingReport, path: str | Path) -> Path:
    """Write a PNG: time per image (left) and peak memory (right) against image size, one line per stage and
    batch, both axes logarithmic. Needs matplotlib (the `plot` extra)."""
    require_matplotlib()
    from matplotlib import ticker  # optional dependency: imported only to draw
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_time, ax_mem = fig.subplots(1, 2)
    sizes = sorted({p.size for p in report.points})
    for stage in STAGES:
        for i, batch in enumerate(sorted({p.batch for p in report.points})):
            pts = sorted((p for p in report.points if p.stage == stage and p.batch == batch), key=lambda p: p.size)
            # One colour per batch, solid for the base network, dashed for the refiner.
            style = {"color": f"C{i}", "marker": "o" if stage == "base" else "s",
                     "linestyle": "-" if stage == "base" else "--"}
            label = f"{stage}, batch {batch}"
            timed = [p for p in pts if p.ms_per_image is not None]
            if timed:
                ax_time.plot([p.size for p in timed], [p.ms_per_image for p in timed], label=label, **style)
            measured = [p for p in pts if p.peak_mib is not None]
            if measured:
                ax_mem.plot([p.size for p in measured], [max(p.peak_mib, 1e-3) for p in measured], label=label,
                            **style)
    for ax, ylabel in ((ax_time, "ms per image"), (ax_mem, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("image side (px)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    ax_mem.set_title(report.memory, fontsize="small")
    ax_time.set_title(f"{report.device}, {report.precision}", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
