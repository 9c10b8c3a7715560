"""Folder runs: the output layout, resuming (finished files are skipped), coarse-mask matching, background writes.

Outputs mirror the input tree under DIR: `masks/<rel>.png` (indexed palette PNG), `overlays/<rel>.jpg`,
`probs/<rel>.npz` (float16), `coarse/<rel>.png`. Every file is written atomically, so a killed run leaves only
complete files and the next run picks up where it stopped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from refine_cli import io
from refine_cli.errors import RefineError
from refine_cli.pipeline.engine import StageTimes
from refine_cli.pipeline.stream import Failure, Job, RefineResult

Palette = Sequence[tuple[int, int, int]]


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


def plan_outputs(out_dir: Path, relative: PurePosixPath, options: FolderOptions) -> Outputs:
    """The output files of one input, inside `out_dir` whatever the relative path holds."""
    return Outputs(
        mask=io.safe_output_path(out_dir / "masks", relative, ".png"),
        overlay=io.safe_output_path(out_dir / "overlays", relative, ".jpg") if options.overlay else None,
        probs=io.safe_output_path(out_dir / "probs", relative, ".npz") if options.save_probs else None,
        coarse=io.safe_output_path(out_dir / "coarse", relative, ".png") if options.save_coarse else None,
    )


def output_folders(out_dir: Path) -> dict[Path, str]:
    """The folders a run writes under `out_dir` (whichever outputs it is asked for), as `io.list_inputs(exclude=)`
    takes them: outputs are never read as inputs, even with `out_dir` inside an input folder."""
    return {out_dir / name: "output folder" for name in ("masks", "overlays", "probs", "coarse")}


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
    """Counts and timing of a folder run so far."""

    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""
    left_out: dict[str, int] = field(default_factory=dict)  # entries the listing skipped on purpose, by reason

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
            "left_out": dict(self.left_out),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FolderSummary:
        return cls(
            processed=d["processed"],
            skipped=d["skipped"],
            failed=[(f["path"], f["reason"]) for f in d["failures"]],
            seconds=d["seconds"],
            device=d.get("device", ""),
            left_out=dict(d.get("left_out", {})),
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
    writers: int = 2,
    times: StageTimes | None = None,
) -> Iterator[FileEvent]:
    """Refine every item whose outputs are not all there yet (all of them with `overwrite`), writing results in a
    background pool so inference never waits on the disk. Yields one FileEvent per item: "skipped" at once,
    "done" when its files are on disk, "failed" with a reason."""
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

    def finished(result: RefineResult, future: Future[None]) -> FileEvent:
        assert result.path is not None and result.relative is not None
        try:
            future.result()
        except (RefineError, OSError) as exc:
            return FileEvent("failed", result.path, result.relative, f"could not write outputs: {exc}")
        return FileEvent("done", result.path, result.relative, outputs=planned[result.path])

    try:
        for outcome in refine(jobs):
            if isinstance(outcome, Failure):
                yield FileEvent("failed", outcome.path, outcome.relative, outcome.reason)
                continue
            assert outcome.path is not None
            future = pool.submit(write_outputs, outcome, planned[outcome.path], palette, times)
            inflight.append((outcome, future))
            while inflight and (inflight[0][1].done() or len(inflight) > 4 * max(1, writers)):
                yield finished(*inflight.popleft())
        while inflight:
            yield finished(*inflight.popleft())
    finally:
        pool.shutdown(wait=True)  # writes already started finish (each is atomic); nothing is left half-written
