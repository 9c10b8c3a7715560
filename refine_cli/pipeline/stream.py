"""Streaming inference over files: background decoding, size buckets, batches, per-file failures.

Images are decoded by a thread pool ahead of the GPU, grouped by size into batches (no padding, so a batch gives
exactly what each image would give alone), and run through the `Engine`. A file that cannot be read, or a batch
that runs out of memory at size 1, becomes a `Failure`; the stream goes on.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from refine_cli import io
from refine_cli.errors import InputError
from refine_cli.pipeline.engine import Engine, stack_images


@dataclass(frozen=True)
class Job:
    """One image to refine: where it is, its path relative to the input root, and an optional coarse mask file."""

    path: Path
    relative: PurePosixPath
    mask_path: Path | None = None


@dataclass(frozen=True)
class RefineResult:
    """The refinement of one image.

    labels: refined label map (H, W) at the image's full size, uint8 (uint16 beyond 256 classes); the base output
        when there is no refiner.
    coarse: the coarse label map at full size (base network's argmax, or the given mask).
    image: the (h, w, 3) uint8 RGB image the networks saw: the decoded image, or, when its long side exceeds
        `max_side`, the image scaled down to that working size (overlays are drawn on it).
    probs / coarse_probs: (K, h, w) float32 probabilities at the working size, when asked for.
    """

    labels: np.ndarray
    coarse: np.ndarray
    image: np.ndarray
    probs: np.ndarray | None = None
    coarse_probs: np.ndarray | None = None
    path: Path | None = None
    relative: PurePosixPath | None = None


@dataclass(frozen=True)
class Failure:
    """A file that could not be refined, and why (one line)."""

    path: Path
    relative: PurePosixPath
    reason: str


@dataclass(frozen=True)
class _Decoded:
    """An image at the size the networks run at (decoded scaled down when large), its coarse mask at that size, and
    what the results go back to: the image's full size and the mask as given."""

    job: Job
    image: np.ndarray
    mask: np.ndarray | None
    full_size: tuple[int, int]
    full_mask: np.ndarray | None


class _DecodeClock:
    """Decode seconds summed over worker threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.lock = engine, threading.Lock()

    def add(self, seconds: float) -> None:
        with self.lock:
            self.engine.times.decode += seconds


def _decode(job: Job, num_classes: int | None, engine: Engine, clock: _DecodeClock) -> _Decoded:
    start = time.perf_counter()
    scaled = io.read_image_scaled(job.path, engine.max_side, max_pixels=engine.max_pixels)
    image, full = scaled.rgb, scaled.full_size
    mask = small = None
    if job.mask_path is not None:
        mask = io.read_mask(job.mask_path, num_classes=num_classes, max_pixels=engine.max_pixels)
        if mask.shape != full:
            raise InputError(
                f"{job.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image "
                f"{job.path.name} is {full[1]}x{full[0]}; a coarse mask must have its image's size"
                f"{io.turned_hint(mask.shape, scaled)}"
            )
        small = io.resize_labels(mask, image.shape[:2]).astype(np.int32)
    clock.add(time.perf_counter() - start)
    return _Decoded(job, image, small, full, mask)


def stream(
    engine: Engine,
    jobs: Iterable[Job],
    *,
    batch_size: int,
    workers: int = 4,
    num_classes: int | None = None,
    want_probs: bool = False,
    want_coarse_probs: bool = False,
) -> Iterator[RefineResult | Failure]:
    """Refine `jobs`, yielding one RefineResult or Failure per job as batches finish (not in input order).

    At most `2 * batch_size` decoded images wait in size buckets: when no bucket fills, the oldest is run
    part-full, so a folder of all-different sizes still streams in bounded memory."""
    clock = _DecodeClock(engine)
    pin = engine.device.type == "cuda"
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="refine-decode")
    pending: deque[tuple[Job, Future[_Decoded]]] = deque()
    buckets: OrderedDict[tuple[int, int, bool], list[_Decoded]] = OrderedDict()
    prefetch = max(2 * batch_size, 2 * workers)
    job_iter = iter(jobs)
    state = {"batch": batch_size}

    def fill() -> None:
        while len(pending) < prefetch:
            job = next(job_iter, None)
            if job is None:
                return
            pending.append((job, pool.submit(_decode, job, num_classes, engine, clock)))

    def run(group: list[_Decoded]) -> Iterator[RefineResult | Failure]:
        done = 0
        while done < len(group):  # the batch size may shrink while the group is being worked through
            chunk = group[done : done + state["batch"]]
            yield from _run_batch(chunk)
            done += len(chunk)

    def _run_batch(group: list[_Decoded]) -> Iterator[RefineResult | Failure]:
        masks = [d.mask for d in group]
        try:
            out = engine.run(
                stack_images([d.image for d in group], pin=pin),
                torch.from_numpy(np.stack(masks)) if masks[0] is not None else None,
                num_classes=num_classes,
                out_sizes=[d.full_size for d in group],
                want_probs=want_probs,
                want_coarse_probs=want_coarse_probs,
            )
        except torch.OutOfMemoryError:
            if engine.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(group) == 1:
                d = group[0]
                h, w = d.image.shape[:2]
                yield Failure(d.job.path, d.job.relative, f"out of memory at {w}x{h}; lower --max-side")
                return
            state["batch"] = max(1, len(group) // 2)  # later batches stay at the size that fits
            yield from run(group)
            return
        except (RuntimeError, ValueError) as exc:
            if len(group) > 1:  # isolate the image that fails
                for d in group:
                    yield from _run_batch([d])
                return
            d = group[0]
            yield Failure(d.job.path, d.job.relative, f"inference failed: {str(exc).splitlines()[0]}")
            return
        for i, d in enumerate(group):
            yield RefineResult(
                labels=out.labels[i],
                coarse=out.coarse[i] if d.full_mask is None else d.full_mask,
                image=d.image,
                probs=out.probs[i] if out.probs is not None else None,
                coarse_probs=out.coarse_probs[i] if out.coarse_probs is not None else None,
                path=d.job.path,
                relative=d.job.relative,
            )

    try:
        fill()
        held = 0
        while pending:
            job, future = pending.popleft()
            fill()
            try:
                decoded = future.result()
            except InputError as exc:
                yield Failure(job.path, job.relative, str(exc))
                continue
            key = (*decoded.image.shape[:2], decoded.mask is not None)
            buckets.setdefault(key, []).append(decoded)
            held += 1
            if len(buckets[key]) >= state["batch"]:
                group = buckets.pop(key)
            elif held >= prefetch:
                group = buckets.pop(next(iter(buckets)))
            else:
                continue
            held -= len(group)
            yield from run(group)
        while buckets:
            yield from run(buckets.pop(next(iter(buckets))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
