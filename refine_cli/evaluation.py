"""Evaluation: the seed paper's table (pixel accuracy, mean class accuracy, mean IoU) plus boundary F, for the base
segmenter, base + SPN and base + dense CRF, with each refinement's time per image.

Every method starts from the same base probabilities of the same image, so the rows differ only by the
refinement; timings cover the refinement alone (the base row: the base network). `foreground_ious` scores a
multi-class base network on binary object masks (DAVIS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from refine_cli.config import CRFConfig
from refine_cli.crf import dense_crf
from refine_cli.data import Sample
from refine_cli.labels import IGNORE_INDEX
from refine_cli.metrics import BoundaryF, ConfusionMatrix
from refine_cli.models.spn import class_map
from refine_cli.pipeline import Refiner

BASE, SPN, CRF = "base", "base + SPN", "base + dense CRF"


@dataclass(frozen=True)
class MethodScores:
    """One row of the table. Scores are fractions in [0, 1]; `ms_per_image` is the median time of the method's
    own step (the base network for the base row, the refinement alone for the others)."""

    method: str
    pixel_accuracy: float
    mean_accuracy: float
    miou: float
    boundary_f: float
    iou: tuple[float, ...]
    ms_per_image: float


@dataclass(frozen=True)
class EvalReport:
    dataset: str
    images: int
    classes: tuple[str, ...]
    base: str
    refiner: str | None
    crf: dict[str, Any] | None
    device: str
    boundary_tolerance_px: float
    methods: tuple[MethodScores, ...]

    def row(self, method: str) -> MethodScores:
        return next(m for m in self.methods if m.method == method)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = [
            {**asdict(m), "iou": {c: (None if np.isnan(v) else v) for c, v in zip(self.classes, m.iou)}}
            for m in self.methods
        ]
        return d


@dataclass
class _Accumulator:
    num_classes: int
    tolerance_px: float
    cm: ConfusionMatrix = field(init=False)
    bf: BoundaryF = field(init=False)
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cm = ConfusionMatrix(self.num_classes)
        self.bf = BoundaryF(tolerance_px=self.tolerance_px)

    def add(self, pred: np.ndarray, gt: np.ndarray, seconds: float) -> None:
        self.cm.update(pred, gt)
        self.bf.update(pred, gt)
        self.times.append(seconds)

    def scores(self, method: str) -> MethodScores:
        return MethodScores(
            method=method,
            pixel_accuracy=float(self.cm.pixel_accuracy),
            mean_accuracy=float(self.cm.mean_accuracy),
            miou=float(self.cm.miou),
            boundary_f=float(self.bf.score().f),
            iou=tuple(float(v) for v in self.cm.iou),
            ms_per_image=float(np.median(self.times) * 1e3) if self.times else float("nan"),
        )


def evaluate(
    samples: Iterable[Sample],
    refiner: Refiner,
    *,
    num_classes: int,
    crf: CRFConfig | None = None,
    dataset: str = "",
    tolerance_px: float = 2.0,
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Score the base network, base + SPN (when `refiner` has one) and base + dense CRF (when `crf` is given) on
    `samples` (images with ground truth, 255 ignored). `progress(i)` is called after each image."""
    engine = refiner.engine
    if engine.base is None:
        raise ValueError("evaluation needs a base network")
    rows = {BASE: _Accumulator(num_classes, tolerance_px)}
    if engine.refiner is not None:
        rows[SPN] = _Accumulator(num_classes, tolerance_px)
    if crf is not None:
        rows[CRF] = _Accumulator(num_classes, tolerance_px)
    count = 0
    with torch.inference_mode():
        for sample in samples:
            gt = sample.label.numpy()
            rgb = sample.image.permute(1, 2, 0).contiguous()
            x = rgb.to(engine.device)[None].permute(0, 3, 1, 2).float().div_(255)
            start = _now(engine.device)
            coarse = engine.base_probs(x)
            rows[BASE].add(class_map(coarse)[0].cpu().numpy(), gt, _now(engine.device) - start)
            if SPN in rows:
                start = _now(engine.device)
                refined = class_map(engine.refine_logits(x, coarse))[0].cpu().numpy()
                rows[SPN].add(refined, gt, _now(engine.device) - start)
            if crf is not None:
                probs = coarse[0].cpu().numpy()
                start = time.perf_counter()
                crf_pred = dense_crf(rgb.numpy(), probs, config=crf).argmax(0)
                rows[CRF].add(crf_pred, gt, time.perf_counter() - start)
            count += 1
            if progress is not None:
                progress(count)
    return EvalReport(
        dataset=dataset,
        images=count,
        classes=tuple(engine.base.meta.classes),
        base=str(engine.base.path),
        refiner=str(engine.refiner.path) if engine.refiner is not None else None,
        crf=asdict(crf) if crf is not None else None,
        device=refiner.describe_device(),
        boundary_tolerance_px=tolerance_px,
        methods=tuple(acc.scores(name) for name, acc in rows.items()),
    )


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass(frozen=True)
class ForegroundScore:
    """One image's foreground IoU (a fraction in [0, 1]; NaN when neither mask has a foreground pixel)."""

    name: str
    iou: float


def foreground_ious(samples: Iterable[Sample], refiner: Refiner, *, background: int = 0) -> list[ForegroundScore]:
    """How a multi-class base network scores on binary object masks (DAVIS): per image, the IoU of its foreground
    (every pixel whose class is not `background`) with the ground truth's (label != 0; 255 ignored)."""
    engine = refiner.engine
    if engine.base is None:
        raise ValueError("foreground scoring needs a base network")
    scores = []
    with torch.inference_mode():
        for sample in samples:
            x = sample.image.to(engine.device)[None].float().div_(255)
            pred = (class_map(engine.base_probs(x))[0] != background).cpu().numpy()
            label = sample.label.numpy()
            keep = label != IGNORE_INDEX
            gt = label != 0
            union = int((keep & (pred | gt)).sum())
            inter = int((keep & pred & gt).sum())
            scores.append(ForegroundScore(sample.name, inter / union if union else float("nan")))
    return scores
