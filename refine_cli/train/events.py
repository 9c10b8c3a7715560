"""What a training run reports while it runs: small frozen events passed to an `on_event` callback (the CLI
renders them with Rich; the library itself only logs). Only rank 0 emits them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Note:
    """A one-line message worth showing (initialisation, cache use, resume)."""

    text: str


@dataclass(frozen=True)
class CacheProgress:
    """Coarse probabilities computed so far for one split (done of total samples)."""

    split: str
    done: int
    total: int


@dataclass(frozen=True)
class Started:
    start_step: int
    total_steps: int
    device: str
    world_size: int
    parameters: int
    trainable: int


@dataclass(frozen=True)
class StepLogged:
    """Averages over the steps since the previous log line (what `metrics.jsonl` records)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    images_per_s: float
    step_s: float
    eta_s: float
    elapsed_s: float


@dataclass(frozen=True)
class Evaluated:
    step: int
    split: str
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpointed:
    step: int
    path: Path


@dataclass(frozen=True)
class Finished:
    result: Any  # refine_cli.train.loop.TrainResult


Event = Note | CacheProgress | Started | StepLogged | Evaluated | Checkpointed | Finished
EventFn = Callable[[Event], None]
