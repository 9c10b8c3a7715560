"""Training loops for base segmenters and SPN refiners: one shared step loop (poly schedule, gradient clipping,
mixed precision, non-finite stop, atomic resumable checkpoints, metrics and curve), DDP under torchrun."""

from refine_cli.train.base import BaseTask, train_base
from refine_cli.train.events import (
    CacheProgress,
    Checkpointed,
    Evaluated,
    Event,
    EventFn,
    Finished,
    Note,
    Started,
    StepLogged,
)
from refine_cli.train.loop import LossTerms, TrainResult, TrainTask, run_training
from refine_cli.train.refiner import RefinerTask, train_refiner
from refine_cli.train.schedule import poly_lr
from refine_cli.train.state import TrainingState, load_state

__all__ = [
    "BaseTask", "CacheProgress", "Checkpointed", "Evaluated", "Event", "EventFn", "Finished", "LossTerms", "Note",
    "RefinerTask", "Started", "StepLogged", "TrainResult", "TrainTask", "TrainingState", "load_state", "poly_lr",
    "run_training", "train_base", "train_refiner",
]
