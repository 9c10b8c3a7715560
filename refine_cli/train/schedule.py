"""The learning-rate schedule: a pure function of the step, nothing else (so a resumed run is on schedule)."""

from __future__ import annotations


def poly_lr(step: int, *, base_lr: float, total_steps: int, power: float) -> float:
    """The "poly" policy (Caffe, as used by DeepLab and the released SPN): base_lr * (1 - step / total_steps) ** power.

    step counts the updates already made (0 for the first); the last update (step total_steps - 1) still gets a
    small positive rate. Steps past the end get 0.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    progress = min(step, total_steps) / total_steps
    return base_lr * (1.0 - progress) ** power
