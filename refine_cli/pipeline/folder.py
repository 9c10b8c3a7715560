"""Folder runs: the output layout, resuming (finished files are skipped), coarse-mask matching, background writes,
and the claim one run holds on its output folder.

Outputs mirror the input tree under DIR: `masks/<rel>.png` (indexed palette PNG), `overlays/<rel>.jpg`,
`probs/<rel>.npz` (float16), `coarse/<rel>.png`. Every file is written atomically, so a killed run leaves only
complete files (and perhaps hidden temporary ones, which the next run deletes) and the next run picks up where it
stopped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two runs on one folder are not kept apart there
    fcntl = None  # type: ignore[assignment]

from refine_cli import io
from refine_cli.config import PipelineConfig
from refine_cli.errors import RefineError, UsageError, refused_for_good
from refine_cli.pipeline.engine import StageTimes
from refine_cli.pipeline.stream import Failure, Job, RefineResult

Palette = Sequence[tuple[int, int, int]]


class OutputsBlocked(RefineError):
    """The output folder takes no more files (disk full, quota, read-only): the run stopped there, since every
    later write would fail too."""


@dataclass(frozen=True)
class FolderOptions:
    overwrite: bool = False
    overlay: bool = True
    save_probs: bool = False
    save_coarse: bool = False


@dataclass(frozen=True)
class Outputs:
    """Where one input's results go; None for outputs not asked for."""

    mask: Path
    overlay: Path | None = None
    probs: Path | None = None
    coarse: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.mask, self.overlay, self.probs, self.coarse) if p is not None]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.paths())


MASKS, OVERLAYS, PROBS, COARSE = "masks", "overlays", "probs", "coarse"  # the output folders under DIR


def plan_outputs(out_dir: Path, relative: PurePosixPath, options: FolderOptions) -> Outputs:
    """The output files of one input, inside `out_dir` whatever the relative path holds."""
    return Outputs(
        mask=io.safe_output_path(out_dir / MASKS, relative, ".png"),
        overlay=io.safe_output_path(out_dir / OVERLAYS, relative, ".jpg") if options.overlay else None,
        probs=io.safe_output_path(out_dir / PROBS, relative, ".npz") if options.save_probs else None,
        coarse=io.safe_output_path(out_dir / COARSE, relative, ".png") if options.save_coarse else None,
    )


# ------------------------------------------------------------------------------------------ the folder's claim

LOCK_NAME = ".refine-cli.lock"
# Folders this process holds. flock belongs to an open file, not to a process, so a claim nested in the same
# process (the CLI's, then `run_folder`'s) must not lock a second time: it would wait on itself.
_held: dict[Path, int] = {}


@contextlib.contextmanager
def claim_output_folder(out_dir: str | Path, what: str = "the output folder") -> Iterator[int]:
    """Hold `out_dir` for one run, yielding how many stale temporary files were deleted.

    The folder is created and written to (a folder that cannot take files is a UsageError naming `what`), then
    locked: while one run holds it, a second is refused with a UsageError naming the holder's process. A run killed
    outright loses its lock with its process, so a lock never outlives its run. Holding the lock, no other run can
    be writing here, so the hidden temporary files that killed writers left in the output folders are deleted.
    Under torchrun one rank claims the folder for all, before any of them writes (see `pipeline.distributed`).
    A folder the claim created is removed again if the run left it empty."""
    out_dir = Path(out_dir)
    key = out_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield 0
        finally:
            _held[key] -= 1
        return
    created = not out_dir.exists()
    handle = _lock(out_dir, what)
    try:
        io.check_writable_folder(out_dir, what)
        removed = remove_stale_temps(out_dir)
        _held[key] = 1
        try:
            yield removed
        finally:
            del _held[key]
    finally:
        # Removed while still locked, so a run that opens the file later creates a new one (see `_lock`).
        (out_dir / LOCK_NAME).unlink(missing_ok=True)
        os.close(handle)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                out_dir.rmdir()


def _lock(out_dir: Path, what: str) -> int:
    """The open, locked lock file of `out_dir`, holding this process's id."""
    path = out_dir / LOCK_NAME
    while True:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot write into {what} {out_dir}: {io.os_reason(exc)}; choose a folder you can "
                             "write to") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode(errors="replace").strip() or "starting"
            os.close(handle)
            raise UsageError(f"another refine-cli run ({holder}) is writing into {out_dir}; wait for it to end, or "
                             "choose another output folder") from None
        # The run before may have ended, deleting the file, between our open and our lock: then lock the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return handle


def remove_stale_temps(out_dir: Path) -> int:
    """Delete the temporary files of `io.atomic_path` under the output folders of `out_dir`; only safe while holding
    its claim (no live writer then). Returns how many were deleted."""
    removed = 0
    for name in (MASKS, OVERLAYS, PROBS, COARSE):
        for folder, _, files in os.walk(out_dir / name):
            for file in files:
                if io.is_temp_name(file):
                    Path(folder, file).unlink(missing_ok=True)
                    removed += 1
    return removed
def output_folders(out_dir: Path) -> dict[Path, str]:
    """The folders a run writes under `out_dir` (whichever outputs it is asked for), as `io.list_inputs(exclude=)`
    takes them: outputs are never read as inputs, even with `out_dir` inside an input folder."""
    return {out_dir / name: "output folder" for name in ("masks", "overlays", "probs", "coarse")}


def refuse_masks_among_outputs(masks_dir: Path, out_dir: Path) -> None:
    """A UsageError where the coarse masks' folder is, or lies inside, a folder the run writes: with `--overwrite`
    the refined masks would replace the coarse ones being read (the user's input, gone), without it every file would
    read as already done."""
    masks = masks_dir.resolve()
    for folder in output_folders(out_dir):
        folder = folder.resolve()
        if masks == folder or folder in masks.parents:
            where = "is" if masks == folder else "lies inside"
            raise UsageError(f"--masks {masks_dir} {where} the output folder {folder}, where this run writes its "
                             "results: it would overwrite the coarse masks it reads; choose another --out")


def find_mask(masks_dir: Path, relative: PurePosixPath) -> Path | None:
    """The coarse mask for an input: same relative folder and stem under `masks_dir`, any image suffix
    (PNG first)."""
    folder = masks_dir.joinpath(*relative.parent.parts)
    stem = relative.stem
    for suffix in (".png", *io.IMAGE_SUFFIXES):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class FileEvent:
    """What happened to one input file."""

    status: Status
    path: Path
    relative: PurePosixPath
    reason: str | None = None
    outputs: Outputs | None = None


@dataclass
class FolderSummary:
    """Counts and timing of a folder run so far; interrupted: stopped by Ctrl-C before the end; stopped: why the run
    stopped before the end otherwise (the output folder took no more files), "" when it did not."""

    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""
    interrupted: bool = False
    left_out: dict[str, int] = field(default_factory=dict)  # entries the listing skipped on purpose, by reason
    stopped: str = ""

    def add(self, event: FileEvent) -> None:
        if event.status == "done":
            self.processed += 1
        elif event.status == "skipped":
            self.skipped += 1
        else:
            self.failed.append((str(event.path), event.reason or "unknown"))

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: FolderSummary) -> None:
        self.processed += other.processed
        self.skipped += other.skipped
        self.failed.extend(other.failed)
        self.seconds = max(self.seconds, other.seconds)
        self.interrupted = self.interrupted or other.interrupted
        self.stopped = self.stopped or other.stopped
        for why, count in other.left_out.items():
            self.left_out[why] = self.left_out.get(why, 0) + count

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "failures": [{"path": p, "reason": r} for p, r in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "device": self.device,
            "interrupted": self.interrupted,
            "left_out": dict(self.left_out),
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FolderSummary:
        return cls(
            processed=d["processed"],
            skipped=d["skipped"],
            failed=[(f["path"], f["reason"]) for f in d["failures"]],
            seconds=d["seconds"],
            device=d.get("device", ""),
            interrupted=d.get("interrupted", False),
            left_out=dict(d.get("left_out", {})),
            stopped=d.get("stopped", ""),
        )


def write_outputs(
    result: RefineResult, outputs: Outputs, palette: Palette, times: StageTimes | None = None
) -> None:
    """All files of one result, each atomically."""
    start = time.perf_counter()
    io.write_mask(outputs.mask, result.labels, palette)
    if outputs.overlay is not None:  # drawn on the image the networks saw: the working size for large images
        io.write_overlay(outputs.overlay, result.image, io.resize_labels(result.labels, result.image.shape[:2]),
                         palette)
    if outputs.probs is not None and result.probs is not None:
        io.write_probs(outputs.probs, result.probs)
    if outputs.coarse is not None:
        io.write_mask(outputs.coarse, result.coarse, palette)
    if times is not None:
        times.write += time.perf_counter() - start


def run_folder(
    items: Iterable[io.InputItem],
    out_dir: Path,
    *,
    options: FolderOptions,
    palette: Palette,
    refine: Callable[[Iterable[Job]], Iterator[RefineResult | Failure]],
    masks_dir: Path | None = None,
    writers: int = PipelineConfig().write_workers,
    backlog: int = PipelineConfig().write_backlog,
    times: StageTimes | None = None,
    claim: bool = True,
) -> Generator[FileEvent, None, None]:
    """Refine every item whose outputs are not all there yet (all of them with `overwrite`), writing results in a
    background pool of `writers` threads so inference never waits on the disk (it pauses while `backlog` results per
    writer wait). Yields one FileEvent per item: "skipped" at once,
    "done" when its files are on disk, "failed" with a reason.

    claim: hold `out_dir` while running (`claim_output_folder`); False where the caller holds it for several
    processes. Ctrl-C (KeyboardInterrupt) lets the writes already started finish and yields their events before it
    is raised again; after a Ctrl-C outside the generator, `drain_interrupted` collects them. A write refused for
    good (`refused_for_good`: disk full, quota, read-only) ends the run the same way, with OutputsBlocked raised."""
    if masks_dir is not None:
        refuse_masks_among_outputs(masks_dir, out_dir)
    with claim_output_folder(out_dir) if claim else contextlib.nullcontext():
        yield from _run_folder(items, out_dir, options=options, palette=palette, refine=refine, masks_dir=masks_dir,
                               writers=writers, backlog=backlog, times=times)


def _run_folder(
    items: Iterable[io.InputItem],
    out_dir: Path,
    *,
    options: FolderOptions,
    palette: Palette,
    refine: Callable[[Iterable[Job]], Iterator[RefineResult | Failure]],
    masks_dir: Path | None,
    writers: int,
    backlog: int,
    times: StageTimes | None,
) -> Generator[FileEvent, None, None]:
    planned: dict[Path, Outputs] = {}
    early: list[FileEvent] = []
    jobs: list[Job] = []
    for item in items:
        try:
            outputs = plan_outputs(out_dir, item.relative, options)
        except RefineError as exc:
            early.append(FileEvent("failed", item.path, item.relative, str(exc)))
            continue
        if not options.overwrite and outputs.complete():
            early.append(FileEvent("skipped", item.path, item.relative, outputs=outputs))
            continue
        mask_path = None
        if masks_dir is not None:
            mask_path = find_mask(masks_dir, item.relative)
            if mask_path is None:
                want = masks_dir.joinpath(*item.relative.parent.parts, f"{item.relative.stem}.png")
                early.append(FileEvent("failed", item.path, item.relative, f"no coarse mask found (looked for {want})"))
                continue
        planned[item.path] = outputs
        jobs.append(Job(item.path, item.relative, mask_path))
    yield from early

    pool = ThreadPoolExecutor(max_workers=max(1, writers), thread_name_prefix="refine-write")
    inflight: deque[tuple[RefineResult, Future[None]]] = deque()
    blocked: list[OSError] = []  # writes the output folder refused for good

    def oldest() -> FileEvent:
        """The event of the oldest write, once it has finished. It leaves `inflight` only then, so a Ctrl-C during
        the wait loses no file."""
        result, future = inflight[0]
        assert result.path is not None and result.relative is not None
        try:
            future.result()
            event = FileEvent("done", result.path, result.relative, outputs=planned[result.path])
        except (RefineError, OSError) as exc:
            event = FileEvent("failed", result.path, result.relative, f"could not write outputs: {exc}")
            cause = refused_for_good(exc)
            if cause is not None:
                blocked.append(cause)
        inflight.popleft()
        return event

    try:
        for outcome in refine(jobs):
            if isinstance(outcome, Failure):
                yield FileEvent("failed", outcome.path, outcome.relative, outcome.reason)
                continue
            assert outcome.path is not None
            future = pool.submit(write_outputs, outcome, planned[outcome.path], palette, times)
            inflight.append((outcome, future))
            while inflight and (inflight[0][1].done() or len(inflight) > backlog * max(1, writers)):
                yield oldest()
            if blocked:
                break
        while inflight:
            yield oldest()
        if blocked:
            reason = blocked[0].strerror or str(blocked[0])
            raise OutputsBlocked(f"'{out_dir}' takes no more files ({reason}): the run stopped; make room (or make it "
                                 "writable) and run the same command again: the files already written are kept and "
                                 "skipped")
    except KeyboardInterrupt:
        # Ctrl-C: no new work, but the writes already started finish and are reported, so the summary counts every
        # file that is on disk.
        while inflight:
            yield oldest()
        raise
    finally:
        pool.shutdown(wait=True)  # writes already started finish (each is atomic); nothing is left half-written


def drain_interrupted(events: Generator[FileEvent, None, None]) -> Iterator[FileEvent]:
    """After a Ctrl-C that stopped the consumer of `run_folder`'s events: pass it into the generator and yield the
    events of the writes it still finishes (nothing when the interrupt was raised inside the generator, which has
    reported them already)."""
    try:
        event = events.throw(KeyboardInterrupt())
        while True:
            yield event
            event = next(events)
    except (KeyboardInterrupt, StopIteration):
        return
