"""Scale-out of folder runs under `torchrun`: each rank takes a disjoint shard of the sorted inputs, writes its own
outputs, and rank 0 reports the merged summary (gathered with torch.distributed)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from refine_cli.device import resolve_device
from refine_cli.pipeline.folder import FolderSummary


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
