"""Multi-process runs under `torchrun`, for training and for folder refinement alike: joining the process group
(NCCL on GPUs, gloo on CPUs), this process's rank and device, and the few collectives the callers need. Outside
torchrun everything is a no-op for a single process of rank 0, so callers have one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from refine_cli.device import resolve_device
from refine_cli.errors import RefineError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """rank / world_size: this process among all; device: where it trains; owns_group: whether `setup` created
    the process group (and `teardown` must destroy it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, evaluates the summary and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 (or no torchrun), read from the environment: usable before `setup`."""
    return os.environ.get("RANK", "0") == "0"


class StoppedByRankZero(RefineError):
    """Raised on the other ranks when rank 0 failed in `on_main`; rank 0 reports why, and every rank exits with
    its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def setup(device_spec: str) -> DistInfo:
    """The device and, under torchrun, the process group. With "auto" or "cuda", each process takes the GPU of
    its LOCAL_RANK; a fixed "cuda:N" with several processes is refused (they would share one GPU)."""
    if not launched_by_torchrun():
        return DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(device_spec))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    spec = device_spec.strip().lower()
    if spec.startswith("cuda:"):
        raise UsageError(f"--device {device_spec} under torchrun would put every process on one GPU; use --device "
                         "cuda (each process takes the GPU of its LOCAL_RANK)")
    device = resolve_device(spec)
    if device.type == "cuda":
        device = resolve_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over processes, in place (and returned)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's `obj`, in rank order (picklable objects, in memory only)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """`fn()` run by rank 0 alone (it reads what only rank 0 may have, e.g. files on its node), its result handed
    to every process. A RefineError on rank 0 is raised there and, as one line naming it, on every other process,
    with the same exit code, so no process is left waiting in a collective and all exit alike."""
    if not info.enabled:
        return fn()
    outcome: tuple[bool, Any, int] = (True, None, 0)
    error: RefineError | None = None
    if info.is_main:
        try:
            outcome = (True, fn(), 0)
        except RefineError as exc:
            error, outcome = exc, (False, str(exc), exc.exit_code)
    ok, value, code = broadcast_object(outcome, info)
    if error is not None:
        raise error
    if not ok:
        raise StoppedByRankZero(f"stopped because rank 0 failed: {value}", code)
    return value


def wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around `module` when there are several processes; the module itself otherwise.
    Checkpoints always take the unwrapped network, never this wrapper.

    On GPUs every BatchNorm becomes a SyncBatchNorm first (in place: same parameters, same state-dict keys), so
    N processes normalise over the global batch as one process would. PyTorch has no CPU SyncBatchNorm: under gloo
    each process normalises over its own share, which makes BatchNorm nets differ slightly from a single run."""
    if not info.enabled:
        return module
    if info.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
