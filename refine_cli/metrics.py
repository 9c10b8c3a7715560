"""Segmentation scores: a confusion matrix accumulated over a dataset (pixel accuracy, mean accuracy, IoU,
mIoU, frequency-weighted IoU) and the boundary F-score (precision/recall of boundary pixels matched within
a pixel tolerance). Inputs are label maps as numpy arrays or torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from refine_cli.errors import InputError, UsageError
from refine_cli.labels import IGNORE_INDEX, boundary_map

LabelMap = np.ndarray | torch.Tensor


def _as_numpy(labels: LabelMap) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def _check_pair(pred: LabelMap, gt: LabelMap) -> None:
    if tuple(pred.shape) != tuple(gt.shape):
        raise UsageError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    for name, x in (("prediction", pred), ("ground truth", gt)):
        dtype = x.dtype
        integer = (not dtype.is_floating_point and not dtype.is_complex) if isinstance(x, torch.Tensor) else (
            np.issubdtype(dtype, np.integer) or dtype == bool
        )
        if not integer:
            raise UsageError(f"{name} must be an integer label map (argmax the probabilities first); got {dtype}")


@dataclass(frozen=True)
class SegmentationScores:
    """What a `ConfusionMatrix` reports; NaN where a score has no pixels to stand on."""

    pixel_accuracy: float
    mean_accuracy: float
    miou: float
    fwiou: float
    iou: tuple[float, ...]  # per class; NaN for a class absent from both ground truth and prediction
    pixels: int


class ConfusionMatrix:
    """Counts (ground-truth class, predicted class) pairs over every scored pixel of a dataset.

    `matrix[i, j]` is the number of pixels of true class i predicted as class j. Pixels whose ground truth
    is `ignore_index` are not counted (whatever was predicted there). Scores are computed from the summed
    matrix, i.e. over the dataset's pixels as a whole (the PASCAL VOC protocol), not averaged per image:
    - pixel accuracy: trace / total;
    - mean accuracy: mean over classes present in the ground truth of (correct / true pixels of the class);
    - IoU of class c: TP / (TP + FP + FN); NaN when the class is absent from both ground truth and
      prediction, and such classes are left out of the mean: mIoU = mean of the non-NaN IoUs;
    - frequency-weighted IoU (FCN paper's f.w. IU): IoUs weighted by each class's share of true pixels.
    A ground-truth or predicted label outside 0..num_classes-1 (other than the ignore label in the ground
    truth) raises `InputError`: it means the masks and the class count do not fit.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise UsageError(f"num_classes must be positive; got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the (num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction."""
        return self._matrix.copy()

    def reset(self) -> None:
        self._matrix[:] = 0

    def update(self, pred: LabelMap, gt: LabelMap) -> None:
        """Add one prediction / ground-truth pair (any equal shapes, e.g. (H, W) or (N, H, W)). Torch tensors
        are counted on their own device (`torch.bincount`), numpy arrays with `np.bincount`."""
        if not isinstance(pred, torch.Tensor):
            pred = np.asarray(pred)
        if not isinstance(gt, torch.Tensor):
            gt = np.asarray(gt)
        _check_pair(pred, gt)
        k = self.num_classes
        if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
            device = pred.device if isinstance(pred, torch.Tensor) else gt.device
            p = torch.as_tensor(pred, device=device).reshape(-1).long()
            g = torch.as_tensor(gt, device=device).reshape(-1).long()
            keep = g != self.ignore_index
            p, g = p[keep], g[keep]
            self._check_range(g, p)
            counts = torch.bincount(g * k + p, minlength=k * k).cpu().numpy()
        else:
            p = np.asarray(pred).reshape(-1).astype(np.int64)
            g = np.asarray(gt).reshape(-1).astype(np.int64)
            keep = g != self.ignore_index
            p, g = p[keep], g[keep]
            self._check_range(g, p)
            counts = np.bincount(g * k + p, minlength=k * k)
        self._matrix += counts.reshape(k, k)

    def _check_range(self, g: np.ndarray | torch.Tensor, p: np.ndarray | torch.Tensor) -> None:
        k = self.num_classes
        for name, x in (("ground truth", g), ("prediction", p)):
            if x.numel() if isinstance(x, torch.Tensor) else x.size:
                low, high = int(x.min()), int(x.max())
                if low < 0 or high >= k:
                    bad = low if low < 0 else high
                    extra = f" (the ignore label is {self.ignore_index})" if name == "ground truth" else ""
                    raise InputError(f"{name} holds label {bad}, outside 0..{k - 1}{extra}; check the class count")

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from another worker)."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise UsageError("cannot merge confusion matrices with different classes or ignore labels")
        self._matrix += other._matrix

    @property
    def pixels(self) -> int:
        return int(self._matrix.sum())

    @property
    def pixel_accuracy(self) -> float:
        total = self._matrix.sum()
        return float(np.trace(self._matrix) / total) if total else float("nan")

    @property
    def mean_accuracy(self) -> float:
        true = self._matrix.sum(axis=1)
        present = true > 0
        if not present.any():
            return float("nan")
        return float(np.mean(np.diag(self._matrix)[present] / true[present]))

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU, float64 (num_classes,); NaN for classes absent from ground truth and prediction."""
        tp = np.diag(self._matrix).astype(np.float64)
        union = self._matrix.sum(axis=0) + self._matrix.sum(axis=1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    @property
    def miou(self) -> float:
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def fwiou(self) -> float:
        true = self._matrix.sum(axis=1).astype(np.float64)
        total = true.sum()
        if not total:
            return float("nan")
        iou = np.nan_to_num(self.iou, nan=0.0)  # a class with true pixels always has a defined IoU
        return float((true / total * iou).sum())

    def scores(self) -> SegmentationScores:
        return SegmentationScores(
            pixel_accuracy=self.pixel_accuracy,
            mean_accuracy=self.mean_accuracy,
            miou=self.miou,
            fwiou=self.fwiou,
            iou=tuple(float(v) for v in self.iou),
            pixels=self.pixels,
        )


# --------------------------------------------------------------------------------------------- boundary F


def _distance_to(edges: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of `edges` (inf when there is none)."""
    if not edges.any():
        return np.full(edges.shape, np.inf, dtype=np.float32)
    free = np.where(edges, 0, 255).astype(np.uint8)  # distanceTransform measures to the nearest zero
    return cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


@dataclass(frozen=True)
class BoundaryScore:
    """Boundary precision/recall/F of one image or a dataset, with the counts they come from."""

    precision: float
    recall: float
    f: float
    matched_pred: int
    pred_pixels: int
    matched_gt: int
    gt_pixels: int


def _score(matched_pred: int, pred_pixels: int, matched_gt: int, gt_pixels: int) -> BoundaryScore:
    # Conventions for empty boundary sets: nothing predicted and nothing to find is perfect; otherwise an
    # empty side scores 0 (a prediction with no boundary has recall 0, and precision 1 by vacuity).
    if pred_pixels == 0 and gt_pixels == 0:
        return BoundaryScore(1.0, 1.0, 1.0, 0, 0, 0, 0)
    precision = matched_pred / pred_pixels if pred_pixels else 1.0
    recall = matched_gt / gt_pixels if gt_pixels else 1.0
    if pred_pixels == 0 or gt_pixels == 0:
        f = 0.0
    else:
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return BoundaryScore(precision, recall, f, matched_pred, pred_pixels, matched_gt, gt_pixels)


def boundary_f(
    pred: LabelMap, gt: LabelMap, *, tolerance_px: float = 2.0, ignore_index: int = IGNORE_INDEX
) -> BoundaryScore:
    """Class-agnostic boundary F-score of one (H, W) label map against its ground truth.

    Boundaries are `refine_cli.labels.boundary_map` of each map (any change of label, whatever the classes). A predicted
    boundary pixel is matched when a ground-truth boundary pixel lies within `tolerance_px` (Euclidean,
    from OpenCV's exact distance transform), and a ground-truth boundary pixel when a predicted one does;
    precision = matched predicted / predicted, recall = matched true / true, F = their harmonic mean. As in
    the BSDS and DAVIS boundary measures, but matching by distance rather than a one-to-one assignment, so
    one predicted pixel may match several true ones.
    Ignore: a ground-truth change into or out of `ignore_index` is not a boundary, and predicted boundary
    pixels on ignored pixels are not counted. VOC's masks mark object outlines with a band of 255, so on
    VOC this measures only edges between two labelled regions; use masks without ignore bands to score
    outlines.
    """
    p, g = _as_numpy(pred), _as_numpy(gt)
    _check_pair(p, g)
    if p.ndim != 2:
        raise UsageError(f"boundary_f takes one (H, W) label map; got shape {p.shape}")
    valid = g != ignore_index
    gt_edges = boundary_map(g, valid)
    pred_edges = boundary_map(p) & valid
    matched_pred = int((pred_edges & (_distance_to(gt_edges) <= tolerance_px)).sum())
    matched_gt = int((gt_edges & (_distance_to(pred_edges) <= tolerance_px)).sum())
    return _score(matched_pred, int(pred_edges.sum()), matched_gt, int(gt_edges.sum()))


class BoundaryF:
    """Boundary F over a dataset.

    Aggregation: the four counts of `boundary_f` (matched and total predicted boundary pixels, matched and
    total true boundary pixels) are summed over all images, and precision, recall and F are computed once
    from the sums (`.score()`), so an image weighs in proportion to its boundary length. `.mean_f` is the
    plain mean of the per-image F-scores, for comparison with per-image protocols.
    """

    def __init__(self, *, tolerance_px: float = 2.0, ignore_index: int = IGNORE_INDEX):
        self.tolerance_px = tolerance_px
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._counts = np.zeros(4, dtype=np.int64)
        self._f_sum = 0.0
        self.images = 0

    def update(self, pred: LabelMap, gt: LabelMap) -> BoundaryScore:
        """Add one (H, W) pair, or a batch (N, H, W) image by image; returns the score of the last image."""
        p, g = _as_numpy(pred), _as_numpy(gt)
        if p.ndim == 3:
            _check_pair(p, g)
            last = None
            for pi, gi in zip(p, g):
                last = self.update(pi, gi)
            if last is None:
                raise UsageError("an empty batch has no boundary score")
            return last
        one = boundary_f(p, g, tolerance_px=self.tolerance_px, ignore_index=self.ignore_index)
        self._counts += (one.matched_pred, one.pred_pixels, one.matched_gt, one.gt_pixels)
        self._f_sum += one.f
        self.images += 1
        return one

    def merge(self, other: BoundaryF) -> None:
        """Add another accumulator's counts (e.g. another process's share of the images)."""
        if other.tolerance_px != self.tolerance_px:
            raise UsageError("cannot merge boundary scores measured at different tolerances")
        self._counts += other._counts
        self._f_sum += other._f_sum
        self.images += other.images

    def score(self) -> BoundaryScore:
        if self.images == 0:
            nan = float("nan")
            return BoundaryScore(nan, nan, nan, 0, 0, 0, 0)
        return _score(*(int(c) for c in self._counts))

    @property
    def mean_f(self) -> float:
        return self._f_sum / self.images if self.images else float("nan")
