"""The step loop shared by every trainer, read top to bottom: seed, (resume), for each step the poly learning rate,
forward under autocast, a non-finite loss stops the run, backward, gradient clipping, optimizer step; every so
often a metrics line, a validation pass and an atomic `last.pt` (non-finite weights stop the run instead); at the
end the exported `model.pt` and the curve.

What differs between trainers (the network, its data, its loss, its validation, what the exported checkpoint
says) lives in a `TrainTask`; `run_training` owns everything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

import refine_cli
from refine_cli import distributed
from refine_cli.config import Amp, Optimizer
from refine_cli.device import cpu_name, describe
from refine_cli.distributed import DistInfo
from refine_cli.errors import DivergedError, TrainingError, UsageError, refused_for_good
from refine_cli.models.contract import ReportsScalars
from refine_cli.train.curve import draw_curve
from refine_cli.train.events import Checkpointed, Evaluated, Event, EventFn, Finished, Note, Started, StepLogged
from refine_cli.train.metrics_log import MetricsLog, read_records
from refine_cli.train.order import derive_seed, stream_state
from refine_cli.train.schedule import poly_lr
from refine_cli.train.state import (
    CURVE,
    LAST,
    METRICS,
    MODEL,
    TrainingState,
    check_resumable,
    load_state,
    non_finite_state,
    save_state,
)
from refine_cli.weights.format import Checkpoint, save_checkpoint
from refine_cli.weights.locations import now_iso

log = logging.getLogger("refine_cli.train")

OPTIMIZERS = tuple(o.value for o in Optimizer)
AMP_MODES = tuple(a.value for a in Amp)
_RNG_STREAM = 3  # order.derive_seed stream for the per-process RNG (dropout)


class LossTerms(NamedTuple):
    """A batch's loss as a sum over its scored pixels and the number of those pixels. The loop divides by the
    count summed over all processes, so N processes compute exactly the mean of one process with N times the
    batch (label-255 pixels count nowhere, as in Caffe's normalised SoftmaxWithLoss)."""

    total: torch.Tensor
    count: torch.Tensor


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    start_step: int
    steps: int
    final_loss: float | None
    elapsed_s: float
    model_path: Path
    last_path: Path
    val: Mapping[str, float] | None
    # The same scores of the weights the run started from, measured before its first step (runs from `--from`).
    val_start: Mapping[str, float] | None = None


class TrainTask(ABC):
    """One trainer's specifics. Subclasses set the attributes in their constructor.

    kind: "base" or "refiner"; arch / arch_args: the registry name and full builder arguments.
    model: the network being trained (unwrapped, on the device); images_per_step: dataset samples per step over
    all processes; dataset_size: training samples; data_fingerprint: identifies the training file list (a resumed
    run must see the same);
    provenance: what `model.pt` records about data and initialisation besides the loop's own entries.
    """

    kind: str
    arch: str
    arch_args: dict[str, Any]
    model: nn.Module
    images_per_step: int
    dataset_size: int
    data_fingerprint: str
    provenance: dict[str, Any]
    val_name: str | None = None  # e.g. "synth-val": the key val scores go under in the checkpoint's metrics

    def train_module(self) -> nn.Module:
        """What the loop calls (and wraps in DDP): the model, or an adapter whose forward is its training forward."""
        return self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one over `trainable_parameters()` unless a task splits them. A group
        may set "lr_scale" (its learning rate is the scheduled one times this) and its own "weight_decay"."""
        return [{"params": self.trainable_parameters()}]

    @abstractmethod
    def batches(self, *, start_step: int, total_steps: int) -> Iterable[Any]:
        """One batch per step from `start_step` on, in the deterministic order of `refine_cli.train.order`."""

    @abstractmethod
    def loss_terms(self, module: nn.Module, batch: Any) -> LossTerms:
        """Forward `batch` through `module` (the possibly wrapped `train_module`) and score it."""

    def evaluate(self, autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> dict[str, float] | None:
        """Validation scores (every process takes part; all get the same numbers); None without a val split."""
        return None

    @abstractmethod
    def export(self, *, provenance: dict[str, Any], metrics: dict[str, Any]) -> Checkpoint:
        """The trained network in refine-cli's checkpoint format."""


# ------------------------------------------------------------------------------------------------- pieces


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `amp` on `device` (None: full precision)."""
    if amp not in AMP_MODES:
        raise UsageError(f"unknown --amp '{amp}'; choose one of {', '.join(AMP_MODES)}")
    if amp == Amp.auto:
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == Amp.fp16 and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], *, name: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """`params`: parameters, or parameter groups (dicts with "params") whose own settings override these."""
    if not params or all(isinstance(g, dict) and not g["params"] for g in params):
        raise UsageError("nothing to train: every parameter is frozen")
    if name == Optimizer.sgd:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == Optimizer.adam:
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    if name == Optimizer.adamw:
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise UsageError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the run (warn-only where an op has none), restored afterwards."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    wanted = (enabled, True) if enabled else (False, previous[1])
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable GEMMs
    # Only when it changes: the call imports torch's compiler configuration (seconds, once per process).
    if previous[:2] != wanted:
        torch.use_deterministic_algorithms(wanted[0], warn_only=wanted[1])
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    try:
        yield
    finally:
        if previous[:2] != wanted:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


def _capture_rng(info: DistInfo) -> dict[str, list[torch.Tensor]]:
    mine = {"torch": torch.get_rng_state()}
    if info.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(info.device)
    gathered = distributed.all_gather_objects(mine, info)
    return {key: [g[key] for g in gathered] for key in mine}


def _seed_process(seed: int, info: DistInfo, step: int) -> None:
    torch.manual_seed(derive_seed(seed, _RNG_STREAM, info.rank, step))


def _restore_rng(rng: Mapping[str, list[torch.Tensor]], info: DistInfo, *, seed: int, step: int,
                 emit: EventFn) -> None:
    states = rng.get("torch", [])
    if len(states) != info.world_size:
        _seed_process(seed, info, step)
        emit(Note(f"the run was saved by {len(states)} process(es), this one has {info.world_size}: random states "
                  "(dropout) reseeded; the data order is unchanged"))
        return
    torch.set_rng_state(states[info.rank])
    cuda = rng.get("cuda")
    if info.device.type == "cuda" and cuda and len(cuda) == info.world_size:
        torch.cuda.set_rng_state(cuda[info.rank], info.device)


def machine(info: DistInfo) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else None
    return {"device": describe(info.device), "cpu": cpu_name(), "gpu": gpu, "threads": torch.get_num_threads(),
            "processes": info.world_size}


class _Window:
    """Loss and time since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time spent inside (validation, checkpoints) does not count as step time."""
        t = time.perf_counter()
        yield
        self.start += time.perf_counter() - t


# ------------------------------------------------------------------------------------------- the run


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an existing run unless asked, and to resume where there is nothing to resume."""
    last, model = run_dir / LAST, run_dir / MODEL
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite starts it over: choose one")
    if resume and not last.is_file():
        raise UsageError(f"nothing to resume: {last} does not exist; drop --resume to start a new run")
    if not resume and not overwrite and (last.exists() or model.exists()):
        raise UsageError(f"{run_dir} already holds a training run; pass --resume to continue it, --overwrite to "
                         "start it over, or choose another --out folder")


def run_training(
    *,
    config: Any,
    run_dir: str | Path,
    build_task: Callable[[DistInfo, EventFn], TrainTask],
    resume: bool = False,
    overwrite: bool = False,
    on_event: EventFn | None = None,
) -> TrainResult:
    """Train `build_task(dist, emit)`'s network with `config.optim` / `config.loop`; files go to `run_dir`.

    config: a frozen trainer config (BaseTrainConfig, RefinerTrainConfig) with `optim` and `loop` fields; its
    `asdict` is saved in every checkpoint and must match on resume (see `state.RUNTIME_FIELDS`).
    Under torchrun every process calls this; only rank 0 emits events and writes files.
    """
    run_dir = Path(run_dir).expanduser()
    _check_loop(config)
    info = distributed.setup(config.loop.device)

    def emit(event: Event) -> None:
        if not info.is_main:
            return
        if isinstance(event, Note):
            log.info(event.text)
        if on_event is not None:
            on_event(event)

    try:
        # Rank 0 alone owns the run folder (other nodes need not share the file system).
        distributed.on_main(lambda: prepare_run_dir(run_dir, resume=resume, overwrite=overwrite), info)
        with deterministic_mode(config.loop.deterministic, info.device):
            if info.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                if overwrite:
                    for name in (LAST, MODEL, METRICS, CURVE):
                        (run_dir / name).unlink(missing_ok=True)
            distributed.barrier(info)
            torch.manual_seed(config.loop.seed)  # the same initial weights in every process
            task = build_task(info, emit)
            return _Run(task, config, run_dir, info, emit, resume).run()
    finally:
        distributed.teardown(info)


def _check_loop(config: Any) -> None:
    loop, optim = config.loop, config.optim
    for name in ("steps", "log_every", "checkpoint_every"):
        if getattr(loop, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if loop.val_every < 0 or loop.workers < 0:
        raise UsageError("--val-every and --workers must be >= 0")
    if optim.lr <= 0 or optim.grad_clip < 0 or optim.weight_decay < 0 or optim.poly_power < 0:
        raise UsageError("--lr must be positive; --grad-clip, --weight-decay and --poly-power must be >= 0")
    if optim.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{optim.optimizer}'; choose one of {', '.join(OPTIMIZERS)}")


class _Run:
    def __init__(self, task: TrainTask, config: Any, run_dir: Path, info: DistInfo, emit: EventFn,
                 resume: bool) -> None:
        self.task, self.config, self.run_dir, self.info, self.emit = task, config, run_dir, info, emit
        self.resume = resume
        self.loop, self.optim_cfg = config.loop, config.optim
        self.config_dict = asdict(config)
        self.amp = autocast_dtype(self.loop.amp, info.device)
        groups = task.param_groups()
        self.params = [p for group in groups for p in group["params"]]
        self.optimizer = make_optimizer(groups, name=self.optim_cfg.optimizer, lr=self.optim_cfg.lr,
                                        momentum=self.optim_cfg.momentum, weight_decay=self.optim_cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(info.device.type) if self.amp == torch.float16 else None
        self.last_path = run_dir / LAST
        self.saved_step: int | None = None
        self.elapsed0 = 0.0
        self.metrics = MetricsLog(run_dir / METRICS, enabled=info.is_main)
        self.val: dict[str, float] | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    # ----------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """`_train`, where a write the disk refuses for good (full, quota, read-only) stops the run with a
        TrainingError that says what is kept and how to go on."""
        try:
            return self._train()
        except Exception as exc:
            cause = refused_for_good(exc)
            if cause is None:
                raise
            then = "run the same command again" if self.saved_step is None else "go on with --resume"
            raise TrainingError(f"{self.run_dir} takes no more files ({cause.strerror or cause}): the run stopped; "
                                f"{self._kept()}; make room and {then}") from exc

    def _train(self) -> TrainResult:
        task, loop = self.task, self.loop
        start = self._restore() if self.resume else 0
        if not self.resume:
            _seed_process(loop.seed, self.info, 0)
        self.metrics.start(resume_step=start if self.resume else None)
        module = distributed.wrap(task.train_module(), self.info)
        total = sum(p.numel() for p in task.model.parameters())
        self.emit(Started(start, loop.steps, describe(self.info.device), self.info.world_size, total,
                          sum(p.numel() for p in self.params)))
        self.t0 = time.perf_counter()
        if start == 0 and getattr(self.config, "init_from", None):
            self._evaluate(0)  # the --from weights' own scores: what training has to beat
        window = _Window()
        last_loss: float | None = None
        task.model.train()
        batches = iter(task.batches(start_step=start, total_steps=loop.steps))
        for step in range(start, loop.steps):
            batch = next(batches)
            loss_value = self._step(module, batch, step)
            last_loss = loss_value
            window.losses.append(loss_value)
            done = step + 1
            if done % loop.log_every == 0 or done == loop.steps:
                self._log(done, window)
                window.reset()
            if loop.val_every and done % loop.val_every == 0 and done != loop.steps:
                with window.pause():
                    self._evaluate(done)
            if done % loop.checkpoint_every == 0 or done == loop.steps:
                with window.pause():
                    self._checkpoint(done)
        if start < loop.steps or self.val is None:
            self._evaluate(loop.steps)
        model_path = self._export()
        result = TrainResult(self.run_dir, start, loop.steps, last_loss, self.elapsed(), model_path, self.last_path,
                             self.val, self._val_at(0))
        self.emit(Finished(result))
        return result

    def _restore(self) -> int:
        state: TrainingState = distributed.on_main(lambda: load_state(self.last_path), self.info)
        check_resumable(state, kind=self.task.kind, config=self.config_dict,
                        data_fingerprint=self.task.data_fingerprint, path=self.last_path)
        self.task.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        _restore_rng(state.rng, self.info, seed=self.loop.seed, step=state.step, emit=self.emit)
        self.saved_step, self.elapsed0 = state.step, state.elapsed_s
        self.emit(Note(f"resuming {self.run_dir} at step {state.step} of {self.loop.steps}"))
        return state.step

    def _step(self, module: nn.Module, batch: Any, step: int) -> float:
        info, optim_cfg = self.info, self.optim_cfg
        lr = poly_lr(step, base_lr=optim_cfg.lr, total_steps=self.loop.steps, power=optim_cfg.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.lr = lr
        with self.autocast():
            terms = self.task.loss_terms(module, batch)
        totals = torch.stack([terms.total.detach().float(), terms.count.detach().float().to(terms.total.device)])
        distributed.all_reduce_sum(totals, info)
        count = totals[1].clamp_min(1.0)
        loss_value = float(totals[0] / count)
        if not math.isfinite(loss_value):
            raise self._non_finite(loss_value, step + 1)
        loss = terms.total.float() * info.world_size / count
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if optim_cfg.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, optim_cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss_value

    def _non_finite(self, value: float, step: int) -> DivergedError:
        """The error for a NaN or infinite loss in the forward pass of `step` (1-based): it ran on the weights of
        step - 1."""
        if self.saved_step == step - 1:
            kept = (f"{self.last_path} holds the weights of step {self.saved_step}, the ones this loss came from "
                    "(--resume would run the same batch on them again)")
        else:
            kept = self._kept()
        return DivergedError(f"loss became {value} at step {step}; {kept}; {self._hints()}", step)

    def _diverged(self, step: int, problem: str) -> DivergedError:
        """The error for weights or optimizer state that became NaN or infinite by `step`, found before writing
        them."""
        return DivergedError(f"the weights went bad by step {step} and were not saved ({problem}); "
                             f"{self._kept()}; {self._hints()}", step)

    def _kept(self) -> str:
        if self.saved_step is None:
            first = min(self.loop.checkpoint_every, self.loop.steps)
            return f"no checkpoint was written yet (the first comes at step {first}), so nothing is lost but the run"
        return f"{self.last_path} holds the finite weights of step {self.saved_step}"

    def _hints(self) -> str:
        hints = [f"lower --lr (now {self.optim_cfg.lr:g})"]
        if self.optim_cfg.grad_clip == 0:
            hints.append("turn on --grad-clip")
        if self.amp is not None:
            hints.append("try --amp off")
        return f"{' or '.join(hints)} and start a new run (--resume would repeat the same settings)"

    def _log(self, done: int, window: _Window) -> None:
        seconds = time.perf_counter() - window.start
        n = max(1, len(window.losses))
        step_s = seconds / n
        record = {
            "kind": "train", "step": done, "loss": sum(window.losses) / n, "lr": self.lr,
            "images_per_s": self.task.images_per_step / step_s if step_s > 0 else float("inf"),
            "step_s": step_s, "time": self.elapsed(),
        }
        # Scalars the network reports about itself (e.g. an adaptive receptive field's learned factor).
        if isinstance(self.task.model, ReportsScalars):
            record.update({k: float(v) for k, v in self.task.model.training_scalars().items() if k not in record})
        self.metrics.append(record)
        self.emit(StepLogged(done, self.loop.steps, record["loss"], self.lr, record["images_per_s"], step_s,
                             (self.loop.steps - done) * step_s, record["time"]))

    def _evaluate(self, done: int) -> None:
        was_training = self.task.model.training
        self.task.model.eval()
        try:
            scores = self.task.evaluate(self.autocast)
        finally:
            self.task.model.train(was_training)
        if scores is None:
            return
        self.val = scores
        self.metrics.append({"kind": "val", "step": done, "split": self.task.val_name, **scores,
                             "time": self.elapsed()})
        self.emit(Evaluated(done, self.task.val_name or "val", scores))

    def _val_at(self, step: int) -> dict[str, float] | None:
        """The val scores the metrics log holds for `step` (a resumed run's come from before its restart)."""
        for record in read_records(self.run_dir / METRICS):
            if record.get("kind") == "val" and record.get("step") == step:
                return {k: v for k, v in record.items()
                        if k not in ("kind", "step", "split", "time") and isinstance(v, (int, float))}
        return None

    def _checkpoint(self, done: int) -> None:
        rng = _capture_rng(self.info)  # a collective: every process takes part
        state = TrainingState(
            kind=self.task.kind, arch=self.task.arch, step=done, elapsed_s=self.elapsed(),
            model=self.task.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scaler=None if self.scaler is None else self.scaler.state_dict(), config=self.config_dict,
            rng=rng, sampler=self._sampler_state(done), data_fingerprint=self.task.data_fingerprint,
        )
        # Every process checks (their weights are the same), so all stop together and none waits in a collective.
        problem = non_finite_state(state)
        if problem:
            raise self._diverged(done, problem)
        if self.info.is_main:
            save_state(self.last_path, state)
            draw_curve(read_records(self.run_dir / METRICS), self.run_dir / CURVE)
        distributed.barrier(self.info)
        self.saved_step = done
        self.emit(Checkpointed(done, self.last_path))

    def _sampler_state(self, done: int) -> dict[str, int]:
        return {**stream_state(step=done, global_batch=self.task.images_per_step,
                               dataset_size=self.task.dataset_size, seed=self.loop.seed),
                "world_size": self.info.world_size}

    def _export(self) -> Path:
        path = self.run_dir / MODEL
        if self.info.is_main:
            provenance = {
                "trainer": f"refine-cli train {self.task.kind}",
                **self.task.provenance,
                "recipe": self.config_dict,
                "steps": self.loop.steps,
                "wall_time_s": round(self.elapsed(), 3),
                "machine": machine(self.info),
                "torch": torch.__version__,
                "refine_cli": getattr(refine_cli, "__version__", "unknown"),
                "created": now_iso(),
            }
            metrics: dict[str, Any] = {}
            if self.val is not None and self.task.val_name:
                metrics[self.task.val_name] = {**{k: v for k, v in self.val.items() if math.isfinite(v)},
                                               "steps": self.loop.steps, "measured_by": "refine-cli train"}
            # Through JSON: str / float subclasses (torch's TorchVersion, numpy scalars) become plain values that
            # torch.load(weights_only=True) reads back.
            provenance, metrics = json.loads(json.dumps(provenance)), json.loads(json.dumps(metrics))
            save_checkpoint(path, self.task.export(provenance=provenance, metrics=metrics))
            draw_curve(read_records(self.run_dir / METRICS), self.run_dir / CURVE)
        distributed.barrier(self.info)
        return path
