"""Scale-out of folder runs under `torchrun` (the process group itself: `refine_cli.distributed`): rank 0 claims the
output folder for all ranks, each rank takes a disjoint shard of the sorted inputs and writes its own outputs, and
every rank gets the merged summary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from refine_cli import distributed
from refine_cli.distributed import DistInfo
from refine_cli.pipeline.folder import FolderSummary, claim_output_folder


@contextlib.contextmanager
def claim_for_run(out_dir: Path, info: DistInfo, what: str = "the output folder") -> Iterator[None]:
    """Hold `out_dir` for the whole run (`folder.claim_output_folder`). Under torchrun rank 0 claims it for every
    rank, deleting stale temporary files before any rank can write, and tells the others whether it could: when
    not, rank 0 raises the reason and the others a `StoppedByRankZero` with the same exit code. (Ranks on other
    machines without a shared file system write into folders of their own, which nobody claims.)"""
    with contextlib.ExitStack() as held:
        def claim() -> None:
            held.enter_context(claim_output_folder(out_dir, what))

        distributed.on_main(claim, info)
        yield


def gather_summaries(summary: FolderSummary, info: DistInfo) -> FolderSummary:
    """All ranks' summaries merged (every rank gets the merge; time is the slowest rank's)."""
    if not info.enabled:
        return summary
    merged = FolderSummary(device=f"{summary.device} x {info.world_size} ranks")
    for d in distributed.all_gather_objects(summary.to_dict(), info):
        merged.merge(FolderSummary.from_dict(d))
    return merged
