"""Training checkpoints (`RUN_DIR/last.pt`): everything a killed run needs to go on exactly where it stopped
(unwrapped network, optimizer, gradient scaler, step, `asdict(config)`, RNG states of every process, where the
data stream stands), written atomically, only while every tensor in it is finite, and read back with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refine_cli.errors import TrainingError, UsageError, WeightsError
from refine_cli.weights.format import atomic_torch_save, describe_non_finite, non_finite_tensors, read_torch_file

FORMAT = "refine-cli.training-state"
VERSION = 1
LAST = "last.pt"
MODEL = "model.pt"
METRICS = "metrics.jsonl"
CURVE = "curve.png"

# Settings a resumed run may change: they do not alter what is computed, only how and how it is reported.
RUNTIME_FIELDS: frozenset[str] = frozenset({
    "loop.device", "loop.workers", "loop.log_every", "loop.checkpoint_every", "loop.val_every", "loop.amp",
    "loop.deterministic", "probs", "probs_dir",
})


@dataclass(frozen=True)
class TrainingState:
    """What `last.pt` holds. `rng` maps "torch" (and "cuda" on GPUs) to one state tensor per process."""

    kind: str
    arch: str
    step: int
    elapsed_s: float
    model: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, Any]
    scaler: Mapping[str, Any] | None
    config: Mapping[str, Any]
    rng: Mapping[str, list[torch.Tensor]]
    sampler: Mapping[str, Any]
    data_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "kind": self.kind, "arch": self.arch, "step": self.step,
            "elapsed_s": self.elapsed_s, "model": dict(self.model), "optimizer": dict(self.optimizer),
            "scaler": None if self.scaler is None else dict(self.scaler), "config": dict(self.config),
            "rng": {k: list(v) for k, v in self.rng.items()}, "sampler": dict(self.sampler),
            "data_fingerprint": self.data_fingerprint,
        }


def non_finite_state(state: TrainingState) -> str | None:
    """What in the state's network (else its optimizer) is NaN or infinite; None when everything is finite."""
    for what, tensors in (("network", state.model), ("optimizer", state.optimizer)):
        bad, total = non_finite_tensors(tensors)
        if bad:
            return describe_non_finite(bad, total, f"{what} tensors")
    return None


def save_state(path: Path, state: TrainingState) -> Path:
    """Write atomically: a kill during the write leaves the previous `last.pt` whole. A state holding NaN or
    infinite values is refused (a TrainingError) and the previous file stays."""
    problem = non_finite_state(state)
    if problem:
        raise TrainingError(f"not writing {path} at step {state.step}: {problem}")
    atomic_torch_save(state.to_dict(), Path(path))
    return Path(path)


def load_state(path: Path) -> TrainingState:
    """Read `last.pt` (weights_only); a file that is not a training state is a TrainingError saying so."""
    path = Path(path)
    try:
        d = read_torch_file(path)
    except WeightsError as exc:
        raise TrainingError(f"cannot resume: {exc}") from None
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a refine-cli training state; point --out at the run folder to resume")
    if not isinstance(d.get("version"), int) or d["version"] > VERSION:
        raise TrainingError(f"{path} was written by a newer refine-cli (training state version {d.get('version')})")
    try:
        state = TrainingState(
            kind=d["kind"], arch=d["arch"], step=int(d["step"]), elapsed_s=float(d["elapsed_s"]), model=d["model"],
            optimizer=d["optimizer"], scaler=d["scaler"], config=d["config"], rng=d["rng"], sampler=d["sampler"],
            data_fingerprint=d["data_fingerprint"],
        )
    except KeyError as exc:
        raise TrainingError(f"{path} is a damaged training state (missing {exc}); start a new run") from None
    problem = non_finite_state(state)
    if problem:
        raise TrainingError(f"cannot resume: {path} (step {state.step}) is unusable: {problem}; start a new run")
    return state


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 1e-4, ...}: nested config dicts as dotted keys (tuples and lists compare as lists)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "arch_args":
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_changes(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """The settings that differ between a run's saved config and a resume request, other than RUNTIME_FIELDS,
    as "name: saved -> requested"."""
    a, b = flatten(saved), flatten(requested)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in RUNTIME_FIELDS and a.get(k) != b.get(k)]


def check_resumable(state: TrainingState, *, kind: str, config: Mapping[str, Any], data_fingerprint: str,
                    path: Path) -> None:
    """Refuse to continue `state` with this request: another trainer or other settings are usage errors (the
    command must change), a changed file list a TrainingError."""
    if state.kind != kind:
        raise UsageError(f"{path} is a {state.kind} training run; resume it with `refine-cli train {state.kind}`")
    changes = config_changes(state.config, config)
    if changes:
        shown = "; ".join(changes[:5]) + (f" (+{len(changes) - 5} more)" if len(changes) > 5 else "")
        raise UsageError(f"the run in {path.parent} was started with other settings ({shown}); repeat its "
                         "original options with --resume, or start a new run in another --out folder")
    if state.data_fingerprint != data_fingerprint:
        raise TrainingError(f"the dataset's file list changed since the run in {path.parent} started; the data "
                            "order cannot be continued: restore the list or start a new run")
