"""Folder throughput (`refine-cli bench pipeline`): `Refiner.refine_items` over a folder with the base network
alone and with the refiner, where the time goes (decode, base, refiner, write), and the base network's bare forward
throughput that a folder run is held against; or, given coarse masks, the whole `refine --masks` run against the
dense CRF's time on the same images and masks."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refine_cli import io
from refine_cli.bench.timing import median_seconds
from refine_cli.bench.workload import write_synthetic_jpegs
from refine_cli.config import BenchConfig, CRFConfig
from refine_cli.crf import DenseCRF, label_probs, require_crf
from refine_cli.errors import InputError, UsageError
from refine_cli.pipeline import FolderOptions, Refiner, StageTimes
from refine_cli.pipeline.engine import mask_classes
from refine_cli.pipeline.folder import find_mask
from refine_cli.transforms import normalize, resize_images, resized_shape

_BENCH = BenchConfig()

BASE_ONLY, WITH_REFINER, MASKS_REFINER = "base only", "base + refiner", "masks + refiner"
STAGES: tuple[str, ...] = ("decode", "base", "refiner", "write")
SHARES_NOTE = (
    "decode and write run in background threads, overlapping the networks: stage shares are fractions of the "
    "summed stage time, not of the wall time"
)
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Stages:
    """One number per pipeline stage."""

    decode: float
    base: float
    refiner: float
    write: float

    @property
    def total(self) -> float:
        return self.decode + self.base + self.refiner + self.write


@dataclass(frozen=True)
class FolderRun:
    """One way of running the folder, `repeats` times.

    images_per_s: the median over repeats of images / wall seconds of the whole run (listing to last file written).
    wall_s: each repeat's wall seconds.
    ms_per_image: each stage's seconds summed over all repeats, per image (decode and write summed over threads).
    shares: each stage's fraction of the summed stage time (see SHARES_NOTE).
    """

    mode: str
    images_per_s: float
    wall_s: tuple[float, ...]
    ms_per_image: Stages
    shares: Stages


@dataclass(frozen=True)
class PipelineReport:
    source: str
    images: int
    size: int | None  # the side of the synthetic squares; None for a folder of given images
    device: str
    batch_size: int
    precision: str
    repeats: int
    base: str
    refiner: str | None
    runs: tuple[FolderRun, ...]
    bare_base_images_per_s: float | None  # the base network's forward alone (None with masks: no base network)
    masks: str | None = None  # the coarse masks' folder (`refine --masks`), or None
    crf_ms_per_image: float | None = None  # with masks: the dense CRF on the same images and masks
    crf: CRFConfig | None = None  # its settings
    note: str = SHARES_NOTE

    def run(self, mode: str) -> FolderRun | None:
        return next((r for r in self.runs if r.mode == mode), None)

    def ratio_to_bare(self, mode: str) -> float | None:
        """A folder run's throughput over the base network's bare forward throughput (1.0: I/O and the rest of the
        pipeline fully hidden behind the base network)."""
        run = self.run(mode)
        if run is None or self.bare_base_images_per_s is None:
            return None
        return run.images_per_s / self.bare_base_images_per_s

    def ratio_to_crf(self) -> float | None:
        """With masks: the whole `refine --masks` run's time per image (wall) over the dense CRF's."""
        run = self.run(MASKS_REFINER)
        if run is None or self.crf_ms_per_image is None:
            return None
        return 1e3 / run.images_per_s / self.crf_ms_per_image

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_to_bare_base"] = {run.mode: self.ratio_to_bare(run.mode) for run in self.runs}
        d["ratio_to_crf"] = self.ratio_to_crf()
        return d


def bench_pipeline(
    inputs: Sequence[str | Path],
    *,
    base: str | Path = "default",
    refiner: str | Path | None = "default",
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    repeats: int = _BENCH.repeats,
    workers: int | None = None,
    overlay: bool = True,
    compile: bool = False,
    size: int | None = None,
    source: str | None = None,
    masks: str | Path | None = None,
    num_classes: int | None = None,
    crf: CRFConfig = CRFConfig(iterations=_BENCH.crf_iterations),
    progress: Callable[[str], None] | None = None,
) -> PipelineReport:
    """Time `Refiner.refine_items` over `inputs` (files, folders, globs) into a temporary folder, overwriting, with
    the base network alone and (unless `refiner` is None) with the refiner: a warm-up run over the first batch of
    each, then `repeats` rounds taking each mode in turn (so load drifting on a shared machine hits both alike).
    Outputs are what `refine-cli refine` writes: masks, and overlays when `overlay`. `size` / `source` only label
    the report. `progress(message)` is called before each run. Every image must go through: a failed file raises
    InputError.

    With `masks` (a folder of coarse masks, as `refine --masks` takes, with `num_classes` or the class count read
    from each mask) `base` is not used: the one mode is the refiner on the masks, and the dense CRF at the settings
    `crf` (hard labels at its `label_confidence`) is timed on the same images and masks, once per repeat, decoding
    outside the timed part."""
    items = io.list_inputs([str(p) for p in inputs]).items
    options: dict[str, Any] = {"device": device, "batch_size": batch_size, "precision": precision,
                               "compile": compile}
    if workers is not None:
        options["workers"] = workers
    if masks is not None:
        if refiner is None:
            raise UsageError("timing `refine --masks` needs a refiner")
        require_crf()
        modes = {MASKS_REFINER: Refiner(None, refiner, **options)}
    else:
        modes = {BASE_ONLY: Refiner(base, None, **options)}
        if refiner is not None:
            modes[WITH_REFINER] = Refiner(base, refiner, **options)
    first = next(iter(modes.values()))
    refining = modes.get(WITH_REFINER, modes.get(MASKS_REFINER))
    masks_dir = Path(masks) if masks is not None else None
    folder_options = FolderOptions(overwrite=True, overlay=overlay)
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    stage_sums = {mode: StageTimes() for mode in modes}
    with tempfile.TemporaryDirectory(prefix="refine-cli-bench-") as tmp:
        out = Path(tmp)
        for mode, model in modes.items():
            if progress is not None:
                progress(f"warming up {mode}")
            _run_folder(model, items[: model.batch_size], out / "warmup", folder_options, masks_dir, num_classes)
        crf_runs: list[float] = []
        crf_inputs = _crf_inputs(items, masks_dir, num_classes) if masks_dir is not None else []
        for r in range(repeats):
            for i, (mode, model) in enumerate(modes.items()):
                if progress is not None:
                    progress(f"{mode}: run {r + 1} of {repeats}")
                wall, stages = _run_folder(model, items, out / f"mode{i}", folder_options, masks_dir, num_classes)
                walls[mode].append(wall)
                stage_sums[mode].add(stages)
            if crf_inputs:
                if progress is not None:
                    progress(f"dense CRF: run {r + 1} of {repeats}")
                crf_runs.append(_crf_seconds(crf_inputs, crf) / len(items))
    runs = tuple(_folder_run(mode, walls[mode], stage_sums[mode], len(items)) for mode in modes)
    bare = None
    if masks_dir is None:
        if progress is not None:
            progress("timing the base network's bare forward")
        bare = bare_base_throughput(first, items, repeats=max(_BENCH.kernel_repeats, repeats))
    return PipelineReport(
        source=source or ", ".join(str(p) for p in inputs),
        images=len(items),
        size=size,
        device=first.describe_device(),
        batch_size=first.batch_size,
        precision=precision,
        repeats=repeats,
        base=str(first.base.path) if first.base is not None else "",
        refiner=str(refining.refiner.path) if refining is not None and refining.refiner is not None else None,
        runs=runs,
        bare_base_images_per_s=bare,
        masks=str(masks_dir) if masks_dir is not None else None,
        crf_ms_per_image=1e3 * statistics.median(crf_runs) if crf_runs else None,
        crf=crf if masks_dir is not None else None,
    )


def _run_folder(model: Refiner, items: Sequence[io.InputItem], out: Path, options: FolderOptions,
                masks_dir: Path | None = None, num_classes: int | None = None) -> tuple[float, StageTimes]:
    """Wall seconds of one folder run and the stage seconds it added to the model's running totals."""
    before = replace(model.times)
    start = time.perf_counter()
    for event in model.refine_items(items, out, masks_dir=masks_dir, num_classes=num_classes, options=options):
        if event.status == "failed":
            raise InputError(f"{event.path}: {event.reason}; the benchmark needs every image to go through")
    wall = time.perf_counter() - start
    after = model.times
    return wall, StageTimes(**{f.name: getattr(after, f.name) - getattr(before, f.name) for f in fields(StageTimes)})


def _crf_inputs(items: Sequence[io.InputItem], masks_dir: Path, num_classes: int | None
                ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Each image with its coarse mask and class count, decoded (the dense CRF is timed on them as they are)."""
    inputs = []
    for item in items:
        path = find_mask(masks_dir, item.relative)
        if path is None:
            raise InputError(f"{item.path}: no coarse mask for it under {masks_dir}; the benchmark needs every "
                             "image to have one")
        image, labels = io.read_image(item.path), io.read_mask(path, num_classes=num_classes)
        if labels.shape != image.shape[:2]:  # as the pipeline does: the mask is resized to its image
            labels = io.resize_labels(labels, image.shape[:2])
        k, _ = mask_classes(torch.from_numpy(labels.astype(np.int64)), num_classes)
        inputs.append((image, labels, k))
    return inputs


def _crf_seconds(inputs: Sequence[tuple[np.ndarray, np.ndarray, int]], config: CRFConfig) -> float:
    """Seconds for the dense CRF over every (image, mask, classes): unary from the hard labels, mean field, argmax."""
    start = time.perf_counter()
    for image, labels, k in inputs:
        probs = label_probs(labels, k, config.label_confidence)
        DenseCRF(image, k, config=config).marginals(probs).argmax(0)
    return time.perf_counter() - start


def _folder_run(mode: str, walls: list[float], stages: StageTimes, n: int) -> FolderRun:
    seconds = Stages(*(getattr(stages, s) for s in STAGES))
    per_image = Stages(*(1e3 * getattr(seconds, s) / max(1, stages.images) for s in STAGES))
    total = seconds.total
    shares = Stages(*((getattr(seconds, s) / total) if total > 0 else 0.0 for s in STAGES))
    return FolderRun(
        mode=mode,
        images_per_s=statistics.median(n / w for w in walls),
        wall_s=tuple(walls),
        ms_per_image=per_image,
        shares=shares,
    )


def bare_base_throughput(model: Refiner, items: Sequence[io.InputItem], *,
                         repeats: int = _BENCH.kernel_repeats) -> float:
    """Images per second of the base network's forward alone: one batch of `model.batch_size` images (the first
    image and the others of its size, repeated to fill the batch), decoded, moved to the device, resized and
    normalised as the base network asks, in the model's layout and precision, outside the timed call. The median
    of `repeats` calls after a warm-up."""
    if model.base is None:
        raise InputError("the bare forward throughput needs a base network")
    first = io.read_image(items[0].path)
    same = [first]
    for item in items[1 : model.batch_size]:
        image = io.read_image(item.path)
        if image.shape == first.shape:
            same.append(image)
    batch = np.stack([same[i % len(same)] for i in range(model.batch_size)])
    engine = model.engine
    pre = model.base.meta.preprocess
    x = torch.from_numpy(batch).to(engine.device).permute(0, 3, 1, 2).float().div_(255)
    x = normalize(resize_images(x, resized_shape(x.shape[-2], x.shape[-1], pre)), pre)
    if engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    module = model.base.module

    def forward() -> None:
        with torch.inference_mode(), _autocast(engine.device, engine.precision):
            module(x)

    return model.batch_size / median_seconds(forward, repeats=repeats, warmup=_BENCH.warmup)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


@contextlib.contextmanager
def synthetic_folder(n: int, size: int, *, seed: int = 0, progress: Callable[[int], None] | None = None
                     ) -> Iterator[Path]:
    """A temporary folder of `n` synthetic JPEGs of `size` x `size` (see `workload.write_synthetic_jpegs`),
    removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="refine-cli-bench-images-") as tmp:
        write_synthetic_jpegs(tmp, n=n, size=size, seed=seed, progress=progress)
        yield Path(tmp)
