"""Scale-out of folder runs under `torchrun`: rank 0 claims the output folder for all ranks, each rank takes a
disjoint shard of the sorted inputs and writes its own outputs, and rank 0 reports the merged summary (gathered
with torch.distributed)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from refine_cli.device import resolve_device
from refine_cli.errors import RefineError
from refine_cli.pipeline.folder import FolderSummary, claim_output_folder


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int
    device: str


def shard_from_env(device: str) -> Shard | None:
    """None outside torchrun (WORLD_SIZE unset or 1). Under torchrun: joins the process group (NCCL on GPUs, gloo on
    CPUs) and gives this rank's shard and device: with "auto" or "cuda", the GPU of LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    resolved = resolve_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return Shard(rank=rank, world=world, device=str(resolved))


class StoppedByRankZero(RefineError):
    """Raised on the other ranks when rank 0 could not start the run; rank 0 reports why, and every rank exits
    with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def claim_for_run(out_dir: Path, shard: Shard | None, what: str = "the output folder") -> Iterator[None]:
    """Hold `out_dir` for the whole run (`folder.claim_output_folder`). Under torchrun rank 0 claims it for every
    rank, deleting stale temporary files before any rank can write, and tells the others whether it could: when
    not, rank 0 raises the reason and the others a StoppedByRankZero with the same exit code. (Ranks on other
    machines without a shared file system write into folders of their own, which nobody claims.)"""
    if shard is None:
        with claim_output_folder(out_dir, what):
            yield
        return
    with contextlib.ExitStack() as held:
        error: RefineError | None = None
        outcome: list[tuple[bool, str, int]] = [(True, "", 0)]
        if shard.rank == 0:
            try:
                held.enter_context(claim_output_folder(out_dir, what))
            except RefineError as exc:
                error, outcome = exc, [(False, str(exc), exc.exit_code)]
        dist.broadcast_object_list(outcome, src=0)
        if error is not None:
            raise error
        ok, message, code = outcome[0]
        if not ok:
            raise StoppedByRankZero(f"stopped because rank 0 failed: {message}", code)
        yield


def gather_summaries(summary: FolderSummary) -> FolderSummary:
    """All ranks' summaries merged (every rank gets the merge; time is the slowest rank's); leaves the group."""
    gathered: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, summary.to_dict())
    merged = FolderSummary(device=f"{summary.device} x {dist.get_world_size()} ranks")
    for d in gathered:
        assert d is not None
        merged.merge(FolderSummary.from_dict(d))
    dist.destroy_process_group()
    return merged
