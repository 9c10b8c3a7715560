"""Evaluation: the seed paper's table (pixel accuracy, mean class accuracy, mean IoU) plus boundary F for a coarse
segmentation, coarse + SPN and coarse + dense CRF, with each method's time per image; and the grid search that tunes
the dense CRF on another split.

The coarse segmentation is a base network's (rows "base ...") or made elsewhere ("coarse ..."): masks or `.npz`
probabilities in a folder, matched to the dataset's samples. Every method starts from the same coarse input of the
same image, so the rows differ only by the refinement. The SPN row runs what `refine-cli refine` runs (`Engine.run`;
masks read by `io.read_mask` with the dataset's class count, as `refine --masks DIR --num-classes K`); timings cover
each method's own step (the base row: the base network; given masks: none). `foreground_ious` scores a
multi-class base network on binary object masks (DAVIS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch

from refine_cli import io
from refine_cli.config import CRFConfig, CRFTuneConfig
from refine_cli.crf import DenseCRF, label_probs
from refine_cli.data import Sample, SegmentationDataset
from refine_cli.data.cache import load_probs
from refine_cli.errors import InputError, UsageError
from refine_cli.labels import IGNORE_INDEX
from refine_cli.metrics import BoundaryF, ConfusionMatrix
from refine_cli.ops.class_map import class_map
from refine_cli.pipeline import Refiner, find_mask
from refine_cli.pipeline.engine import BatchOutput, Engine, StageTimes, stack_images

BASE, SPN, CRF = "base", "base + SPN", "base + dense CRF"
COARSE, COARSE_SPN, COARSE_CRF = "coarse", "coarse + SPN", "coarse + dense CRF"
CRITERIA: tuple[str, ...] = ("miou", "boundary_f", "miou+boundary_f")
PROBS_SUFFIX = ".npz"


@dataclass(frozen=True)
class MethodScores:
    """One row of the table. Scores are fractions in [0, 1]; `ms_per_image` is the median time of the method's
    own step (the base network for the base row, the refinement alone for the others; NaN for masks given as
    they are). `foreground_iou`: the IoU of class 1 on two-class data, else None."""

    method: str
    pixel_accuracy: float
    mean_accuracy: float
    miou: float
    boundary_f: float
    iou: tuple[float, ...]
    ms_per_image: float
    foreground_iou: float | None = None


@dataclass(frozen=True)
class EvalReport:
    """coarse: where the coarse input came from ("base network", "masks" or "probabilities"); masks: the folder
    of given masks or probabilities; skipped: samples left out for want of a coarse file; unknown_pixels: how many
    scored pixels the given masks mark unknown (255; they count as wrong in the coarse row); crf_tuning: the grid
    search that chose `crf` (`TunedCRF.to_dict`)."""

    dataset: str
    images: int
    classes: tuple[str, ...]
    base: str | None
    refiner: str | None
    crf: dict[str, Any] | None
    device: str
    boundary_tolerance_px: float
    methods: tuple[MethodScores, ...]
    coarse: str = "base network"
    masks: str | None = None
    skipped: tuple[str, ...] = ()
    unknown_pixels: int = 0
    crf_tuning: dict[str, Any] | None = None

    def row(self, method: str) -> MethodScores:
        return next(m for m in self.methods if m.method == method)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; NaN (a score with nothing to stand on, a time not measured) becomes None."""
        d = asdict(self)
        d["methods"] = [
            {**_finite(asdict(m)), "iou": {c: _none_if_nan(v) for c, v in zip(self.classes, m.iou)}}
            for m in self.methods
        ]
        return d


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or value != value else value


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _none_if_nan(v) if isinstance(v, float) else v for k, v in d.items()}


# --------------------------------------------------------------------------------------------- coarse inputs


@dataclass(frozen=True)
class CoarseInput:
    """One image's coarse input made elsewhere: hard labels (H, W) int64 (255 = unknown) or class probabilities
    (K, H, W) float32."""

    labels: np.ndarray | None = None
    probs: np.ndarray | None = None


@dataclass(frozen=True)
class CoarseFolder:
    """Coarse inputs made elsewhere, matched to a dataset's samples (see `match_coarse`).

    kind: "masks" (label images, read as `refine --masks` reads them) or "probabilities" (`.npz` files as
    `refine --save-probs` writes them, resized to the image and renormalised like a `ProbsCache`).
    files: sample name -> file. missing: the names of samples without a file (left out)."""

    root: Path
    kind: Literal["masks", "probabilities"]
    num_classes: int
    files: Mapping[str, Path]
    missing: tuple[str, ...] = ()

    def read(self, sample: Sample) -> CoarseInput:
        path = self.files[sample.name]
        height, width = sample.label.shape
        if self.kind == "probabilities":
            return CoarseInput(probs=load_probs(path, size=(height, width), num_classes=self.num_classes).numpy())
        labels = io.read_mask(path, num_classes=self.num_classes)
        if labels.shape != (height, width):
            raise InputError(f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but the image of '{sample.name}' "
                             f"is {width}x{height}; a coarse mask must have its image's size")
        return CoarseInput(labels=labels)


def find_coarse(root: Path, relative: PurePosixPath, name: str) -> Path | None:
    """The coarse file of one sample under `root`: first where the dataset's image tree puts it
    (`root/<relative folder>/<stem>`, e.g. DAVIS's `root/<sequence>/<frame>`), then flat by sample name
    (`root/<name>`, e.g. `root/<sequence>_<frame>`); a mask (PNG first, any image suffix, as `find_mask`) or a
    `.npz` of probabilities. A mask and a `.npz` for the same sample at one place is a `UsageError`."""
    for rel in (relative, PurePosixPath(f"{name}.png")):
        mask = find_mask(root, rel)
        probs = root.joinpath(*rel.parent.parts, f"{rel.stem}{PROBS_SUFFIX}")
        if mask is not None and probs.is_file():
            raise UsageError(f"{root} holds both {mask.name} and {probs.name} for '{name}'; keep masks and "
                             "probabilities in separate folders")
        if mask is not None:
            return mask
        if probs.is_file():
            return probs
    return None


def match_coarse(
    dataset: SegmentationDataset, indices: Sequence[int], root: str | Path, *, skip_missing: bool = False
) -> CoarseFolder:
    """Match the samples `indices` of `dataset` to coarse files under `root` (`find_coarse`).

    A sample without a file is an `InputError` naming it and where it was looked for, unless `skip_missing`
    (then it is left out and listed in `missing`); no match at all is an error either way. All matched files
    must be of one kind (masks or probabilities)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"the coarse masks folder {root} does not exist")
    files: dict[str, Path] = {}
    missing: list[str] = []
    for i in indices:
        pair = dataset.pairs[i]
        relative = dataset.relative_path(pair)
        found = find_coarse(root, relative, pair.name)
        if found is None:
            if not skip_missing:
                where = root.joinpath(*relative.parent.parts, relative.stem)
                raise InputError(
                    f"no coarse mask for '{pair.name}': looked for {where}.png (or another image suffix, or "
                    f"{PROBS_SUFFIX}) and {root / pair.name}.png; add it, or pass --skip-missing to score the others"
                )
            missing.append(pair.name)
            continue
        files[pair.name] = found
    if not files:
        raise InputError(f"none of the {len(indices)} samples has a coarse mask or {PROBS_SUFFIX} file in {root}")
    kinds = {p.suffix.lower() == PROBS_SUFFIX for p in files.values()}
    if len(kinds) > 1:
        probs = next(p for p in files.values() if p.suffix.lower() == PROBS_SUFFIX)
        mask = next(p for p in files.values() if p.suffix.lower() != PROBS_SUFFIX)
        raise UsageError(f"{root} holds masks for some samples and probabilities for others (e.g. {mask} and "
                         f"{probs}); score one kind at a time")
    kind: Literal["masks", "probabilities"] = "probabilities" if kinds == {True} else "masks"
    return CoarseFolder(root, kind, dataset.num_classes, files, tuple(missing))


def spread(count: int, limit: int) -> list[int]:
    """`limit` indices spread evenly over 0..count-1, first and last included (all of them when `limit` >= count):
    samples from every part of a dataset whose neighbours are near duplicates (video frames)."""
    if limit >= count:
        return list(range(count))
    if limit <= 1:
        return [0][:limit]
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


# --------------------------------------------------------------------------------------------- scoring


@dataclass
class _Accumulator:
    """Confusion matrix, boundary F and times of one row. A prediction may hold 255 (a given mask's unknown
    pixels, when there are at most 255 classes): such pixels count in a spare column of the matrix, so they are
    wrong for their true class (a false negative) and a false positive of none."""

    num_classes: int
    tolerance_px: float
    cm: ConfusionMatrix = field(init=False)
    bf: BoundaryF = field(init=False)
    times: list[float] = field(default_factory=list)
    unknown: int = 0

    def __post_init__(self) -> None:
        self.spare = self.num_classes <= IGNORE_INDEX
        self.cm = ConfusionMatrix(self.num_classes + 1 if self.spare else self.num_classes)
        self.bf = BoundaryF(tolerance_px=self.tolerance_px)

    def add(self, pred: np.ndarray, gt: np.ndarray, seconds: float | None) -> None:
        """One image; `seconds` None when the method costs nothing (masks given as they are)."""
        scored = pred
        if self.spare:
            unknown = pred == IGNORE_INDEX
            if unknown.any():
                self.unknown += int((unknown & (gt != IGNORE_INDEX)).sum())
                scored = np.where(unknown, self.num_classes, pred)
            elif pred.size and int(pred.max()) >= self.num_classes:
                raise InputError(f"prediction holds label {int(pred.max())}, outside 0..{self.num_classes - 1}")
        self.cm.update(scored, gt)
        self.bf.update(pred, gt)
        if seconds is not None:
            self.times.append(seconds)

    def scores(self, method: str) -> MethodScores:
        iou = self.cm.iou[: self.num_classes]
        return MethodScores(
            method=method,
            pixel_accuracy=float(self.cm.pixel_accuracy),
            mean_accuracy=float(self.cm.mean_accuracy),
            miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            boundary_f=float(self.bf.score().f),
            iou=tuple(float(v) for v in iou),
            ms_per_image=float(np.median(self.times) * 1e3) if self.times else float("nan"),
            foreground_iou=float(iou[1]) if self.num_classes == 2 else None,
        )


@dataclass(frozen=True)
class _Step:
    """One image through `Engine.run`: its pixels, ground truth, coarse input and outputs, and stage times."""

    rgb: np.ndarray
    gt: np.ndarray
    given: CoarseInput | None
    out: BatchOutput
    base_s: float
    refiner_s: float


def _run(engine: Engine, sample: Sample, coarse: CoarseFolder | None, num_classes: int, *, crf: bool) -> _Step:
    """The coarse input of one sample (the base network's, or read from `coarse`) and its refinement, through
    `Engine.run` as `refine-cli refine` calls it (`stream`), one image per batch."""
    gt = sample.label.numpy()
    rgb = sample.image.permute(1, 2, 0).contiguous().numpy()
    given = coarse.read(sample) if coarse is not None else None
    before = replace(engine.times)
    out = engine.run(
        stack_images([rgb], pin=False),
        torch.from_numpy(given.labels[None]) if given is not None and given.labels is not None else None,
        coarse_probs=torch.from_numpy(given.probs[None]) if given is not None and given.probs is not None else None,
        num_classes=num_classes,
        want_coarse_probs=crf and given is None,
    )
    times: StageTimes = engine.times
    return _Step(rgb, gt, given, out, times.base - before.base, times.refiner - before.refiner)


def _crf_probs(step: _Step, num_classes: int, confidence: float) -> np.ndarray:
    """What the dense CRF starts from: the base network's or the given probabilities, or the given hard labels
    made probabilities with `confidence` (`label_probs`)."""
    if step.given is None:
        assert step.out.coarse_probs is not None
        return step.out.coarse_probs[0]
    if step.given.probs is not None:
        return step.given.probs
    assert step.given.labels is not None
    return label_probs(step.given.labels, num_classes, confidence)


def evaluate(
    samples: Iterable[Sample],
    refiner: Refiner,
    *,
    num_classes: int,
    classes: Sequence[str] | None = None,
    coarse: CoarseFolder | None = None,
    crf: CRFConfig | None = None,
    dataset: str = "",
    tolerance_px: float = 2.0,
    progress: Callable[[int], None] | None = None,
    crf_tuning: TunedCRF | None = None,
    warm_up: bool = True,
) -> EvalReport:
    """Score the coarse input, coarse + SPN (when `refiner` has one) and coarse + dense CRF (when `crf` is given)
    on `samples` (images with ground truth, 255 ignored). The coarse input is the base network's unless `coarse`
    gives files made elsewhere (every sample must have one). `classes` names the classes in the report (default:
    the base network's). `crf_tuning`, the search that chose `crf`, is recorded in the report. With `warm_up`
    the first image runs once untimed before it is scored. `progress(i)` is called after each image."""
    engine = refiner.engine
    if coarse is None and engine.base is None:
        raise UsageError("evaluation needs a base network or coarse masks")
    names = (COARSE, COARSE_SPN, COARSE_CRF) if coarse is not None else (BASE, SPN, CRF)
    rows = {names[0]: _Accumulator(num_classes, tolerance_px)}
    if engine.refiner is not None:
        rows[names[1]] = _Accumulator(num_classes, tolerance_px)
    if crf is not None:
        rows[names[2]] = _Accumulator(num_classes, tolerance_px)
    count = 0
    for sample in samples:
        if count == 0 and warm_up:  # first-call costs (allocator, kernel selection, kernel loading) stay untimed
            _run(engine, sample, coarse, num_classes, crf=False)
        step = _run(engine, sample, coarse, num_classes, crf=crf is not None)
        rows[names[0]].add(step.out.coarse[0], step.gt, step.base_s if coarse is None else None)
        if names[1] in rows:
            rows[names[1]].add(step.out.labels[0], step.gt, step.refiner_s)
        if crf is not None:
            start = time.perf_counter()
            probs = _crf_probs(step, num_classes, crf.label_confidence)
            pred = DenseCRF(step.rgb, num_classes, config=crf).marginals(probs).argmax(0)
            rows[names[2]].add(pred, step.gt, time.perf_counter() - start)
        count += 1
        if progress is not None:
            progress(count)
    return EvalReport(
        dataset=dataset,
        images=count,
        classes=tuple(classes if classes is not None else engine.base.meta.classes if engine.base is not None
                      else (str(k) for k in range(num_classes))),
        base=str(engine.base.path) if engine.base is not None else None,
        refiner=str(engine.refiner.path) if engine.refiner is not None else None,
        crf=asdict(crf) if crf is not None else None,
        device=refiner.describe_device(),
        boundary_tolerance_px=tolerance_px,
        methods=tuple(acc.scores(name) for name, acc in rows.items()),
        coarse="base network" if coarse is None else coarse.kind,
        masks=str(coarse.root) if coarse is not None else None,
        skipped=coarse.missing if coarse is not None else (),
        unknown_pixels=rows[names[0]].unknown,
        crf_tuning=crf_tuning.to_dict() if crf_tuning is not None else None,
    )


# --------------------------------------------------------------------------------------------- CRF tuning


@dataclass(frozen=True)
class TunedCRF:
    """The outcome of `tune_crf`: the chosen setting, the criterion's value there, and every grid point's scores
    (`results`: its bilateral sxy, srgb, compat, label confidence for hard labels, mIoU, boundary F and the
    criterion's value as "score"). `coarse`: the same scores of the coarse input itself on the tuning images, to
    tell whether any setting improves on no CRF at all."""

    config: CRFConfig
    split: str
    images: tuple[str, ...]
    criterion: str
    score: float
    grid: CRFTuneConfig
    results: tuple[dict[str, float], ...]
    skipped: tuple[str, ...] = ()
    hard_labels: bool = False
    coarse: dict[str, float] | None = None

    @property
    def chosen(self) -> dict[str, float]:
        """The tuned parameters (the label confidence only where hard labels were tuned)."""
        keys = ("bilateral_sxy", "bilateral_srgb", "bilateral_compat") + (("label_confidence",) if self.hard_labels
                                                                             else ())
        return {k: getattr(self.config, k) for k in keys} | {"iterations": self.config.iterations}

    @property
    def at_grid_edge(self) -> tuple[str, ...]:
        """The tuned parameters whose chosen value is the smallest or largest of several in the grid: the best
        setting may lie beyond the grid there."""
        edge = []
        for key, value in self.chosen.items():
            values = getattr(self.grid, key, ())
            if len(values) > 1 and value in (min(values), max(values)):
                edge.append(key)
        return tuple(edge)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split, "images": list(self.images), "skipped": list(self.skipped),
            "criterion": self.criterion, "score": self.score, "chosen": self.chosen,
            "at_grid_edge": list(self.at_grid_edge), "coarse": self.coarse, "grid": asdict(self.grid),
            "results": list(self.results),
        }


GRID_KEYS = {"sxy": "bilateral_sxy", "srgb": "bilateral_srgb", "compat": "bilateral_compat",
             "confidence": "label_confidence"}


def parse_grid(text: str, grid: CRFTuneConfig = CRFTuneConfig()) -> CRFTuneConfig:
    """`grid` with the values named in `text`, e.g. "sxy=5,10,20 compat=4,10 confidence=0.7,0.9" (keys: sxy, srgb,
    compat, confidence; separated by spaces or semicolons); parameters not named keep `grid`'s values."""
    changes: dict[str, tuple[float, ...]] = {}
    for item in text.replace(";", " ").split():
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            raise UsageError(f"cannot read '{item}' in the CRF grid; write e.g. sxy=5,10,20 (keys: "
                             f"{', '.join(GRID_KEYS)})")
        try:
            numbers = tuple(float(v) for v in values.split(",") if v)
        except ValueError:
            raise UsageError(f"cannot read '{item}' in the CRF grid: the values must be numbers") from None
        if not numbers or min(numbers) <= 0 or (key == "confidence" and max(numbers) >= 1):
            raise UsageError(f"'{item}': grid values must be positive (confidences below 1)")
        changes[GRID_KEYS[key]] = numbers
    return replace(grid, **changes)


def _scored(scores: MethodScores, criterion: str) -> dict[str, float]:
    return {"miou": scores.miou, "boundary_f": scores.boundary_f, "score": _criterion(scores, criterion)}


def _criterion(scores: MethodScores, criterion: str) -> float:
    if criterion == "miou":
        return scores.miou
    if criterion == "boundary_f":
        return scores.boundary_f
    return scores.miou + scores.boundary_f


def tune_crf(
    samples: Iterable[Sample],
    refiner: Refiner,
    *,
    num_classes: int,
    base: CRFConfig,
    grid: CRFTuneConfig = CRFTuneConfig(),
    coarse: CoarseFolder | None = None,
    split: str = "",
    tolerance_px: float = 2.0,
    progress: Callable[[int], None] | None = None,
) -> TunedCRF:
    """Grid-search the dense CRF's bilateral sxy, srgb and compat (and, for hard labels, the label confidence) on
    `samples`, the rest of `base` (Gaussian kernel, iterations) fixed, starting from the same coarse inputs
    `evaluate` would (the base network's, or `coarse`). Returns the setting with the best `grid.criterion`
    summed over the samples as `evaluate` sums scores (ties: the first in grid order). The samples must come from
    another split than the one scored: the caller's to check."""
    if grid.criterion not in CRITERIA:
        raise UsageError(f"unknown CRF tuning criterion '{grid.criterion}'; choose one of: {', '.join(CRITERIA)}")
    hard = coarse is not None and coarse.kind == "masks"
    confidences = grid.label_confidence if hard else (base.label_confidence,)
    pairwise = list(product(grid.bilateral_sxy, grid.bilateral_srgb, grid.bilateral_compat))
    if not pairwise or not confidences:
        raise UsageError("the CRF tuning grid is empty: give every parameter at least one value")
    engine = refiner.engine
    if coarse is None and engine.base is None:
        raise UsageError("tuning the dense CRF needs a base network or coarse masks")
    settings = [replace(base, bilateral_sxy=sxy, bilateral_srgb=srgb, bilateral_compat=compat, label_confidence=c)
                for sxy, srgb, compat in pairwise for c in confidences]
    rows = [_Accumulator(num_classes, tolerance_px) for _ in settings]
    given = _Accumulator(num_classes, tolerance_px)
    names: list[str] = []
    for sample in samples:
        step = _run(engine, sample, coarse, num_classes, crf=True)
        given.add(step.out.coarse[0], step.gt, None)
        for p, (sxy, srgb, compat) in enumerate(pairwise):
            model = DenseCRF(step.rgb, num_classes, config=settings[p * len(confidences)])
            for c, confidence in enumerate(confidences):
                pred = model.marginals(_crf_probs(step, num_classes, confidence)).argmax(0)
                rows[p * len(confidences) + c].add(pred, step.gt, 0.0)
        names.append(sample.name)
        if progress is not None:
            progress(len(names))
    if not names:
        raise UsageError("no images to tune the dense CRF on")
    scores = [row.scores("dense CRF") for row in rows]
    values = [_criterion(s, grid.criterion) for s in scores]
    best = max(range(len(settings)), key=lambda i: (values[i] if values[i] == values[i] else -np.inf, -i))
    results = tuple(
        {"bilateral_sxy": cfg.bilateral_sxy, "bilateral_srgb": cfg.bilateral_srgb,
         "bilateral_compat": cfg.bilateral_compat} | ({"label_confidence": cfg.label_confidence} if hard else {})
        | {"miou": s.miou, "boundary_f": s.boundary_f, "score": v}
        for cfg, s, v in zip(settings, scores, values)
    )
    return TunedCRF(
        config=settings[best], split=split, images=tuple(names), criterion=grid.criterion, score=values[best],
        grid=grid, results=results, skipped=coarse.missing if coarse is not None else (), hard_labels=hard,
        coarse=_scored(given.scores("coarse"), grid.criterion),
    )


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


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


