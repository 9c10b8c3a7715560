"""The deterministic order in which training samples are drawn, and how it is split between processes.

The training set is read as one endless stream: epoch e is a permutation of the dataset drawn from (seed, e), and
step s consumes stream positions [s * B, (s + 1) * B) for a global batch of B samples. Every sample also gets its
own augmentation seed from (seed, position). So the data a step sees depends on (seed, step) alone: a resumed run
picks up at its step with nothing to replay, and the same global batch split over several processes (each rank
takes a contiguous share of every step's positions) draws exactly the samples and augmentations of one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

_EPOCH_STREAM = 1  # SeedSequence spawn keys keep the permutation and augmentation streams independent
_SAMPLE_STREAM = 2


class Draw(NamedTuple):
    """One sample to load: its dataset index and the seed of its augmentation."""

    index: int
    seed: int


def derive_seed(*words: int) -> int:
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])  # 63 bits: fits torch.Generator.manual_seed


def epoch_permutation(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n samples in `epoch` (int64 tensor)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, _EPOCH_STREAM, epoch))
    return torch.randperm(n, generator=gen)


def sample_seed(*, seed: int, position: int) -> int:
    """The augmentation seed of the sample at stream `position`."""
    return derive_seed(seed, _SAMPLE_STREAM, position)


class StreamSampler(Sampler[Draw]):
    """This process's draws for steps [start_step, total_steps): `per_rank` consecutive positions of every step.

    n: dataset size; global_batch: samples per step over all processes (a multiple of `world_size`).
    Yields `Draw`s; feed it to a DataLoader with batch_size=per_rank (drop_last is never needed).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        global_batch: int,
        start_step: int,
        total_steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n < 1:
            raise ValueError("the dataset is empty")
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(f"global batch {global_batch} must be a positive multiple of {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.seed, self.global_batch = n, seed, global_batch
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size
        self.per_rank = global_batch // world_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.per_rank

    def __iter__(self) -> Iterator[Draw]:
        epoch, perm = -1, None
        for step in range(self.start_step, self.total_steps):
            first = step * self.global_batch + self.rank * self.per_rank
            for position in range(first, first + self.per_rank):
                e, offset = divmod(position, self.n)
                if e != epoch:
                    epoch, perm = e, epoch_permutation(self.n, seed=self.seed, epoch=e)
                yield Draw(int(perm[offset]), sample_seed(seed=self.seed, position=position))


def stream_state(*, step: int, global_batch: int, dataset_size: int, seed: int) -> dict[str, int]:
    """Where the stream stands after `step` updates (what a checkpoint records; informative only, since the order
    is a function of seed and step)."""
    position = step * global_batch
    epoch, offset = divmod(position, dataset_size)
    return {"seed": seed, "global_batch": global_batch, "dataset_size": dataset_size, "position": position,
            "epoch": epoch, "offset_in_epoch": offset}
