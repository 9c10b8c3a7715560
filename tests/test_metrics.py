"""Confusion-matrix scores and boundary F against hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refine_cli.errors import InputError, UsageError
from refine_cli.metrics import BoundaryF, ConfusionMatrix, boundary_f

GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
PRED = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 2, 1]])
# By hand: rows = truth, columns = prediction.
MATRIX = np.array([[5, 1, 0], [1, 5, 0], [0, 1, 3]])


def test_confusion_matrix_hand_computed() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    np.testing.assert_array_equal(cm.matrix, MATRIX)
    assert cm.pixel_accuracy == pytest.approx(13 / 16)
    assert cm.mean_accuracy == pytest.approx((5 / 6 + 5 / 6 + 3 / 4) / 3)
    np.testing.assert_allclose(cm.iou, [5 / 7, 5 / 8, 3 / 4])
    assert cm.miou == pytest.approx((5 / 7 + 5 / 8 + 3 / 4) / 3)
    assert cm.fwiou == pytest.approx(6 / 16 * 5 / 7 + 6 / 16 * 5 / 8 + 4 / 16 * 3 / 4)
    scores = cm.scores()
    assert scores.pixels == 16 and scores.iou == pytest.approx((5 / 7, 5 / 8, 3 / 4))


def test_confusion_matrix_torch_matches_numpy_and_accumulates() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.from_numpy(PRED), torch.from_numpy(GT))
    np.testing.assert_array_equal(cm.matrix, MATRIX)
    cm.update(PRED[None], GT[None])  # batches of any shape
    np.testing.assert_array_equal(cm.matrix, 2 * MATRIX)
    other = ConfusionMatrix(3)
    other.update(GT, GT)
    cm.merge(other)
    assert cm.pixels == 48
    cm.reset()
    assert cm.pixels == 0 and math.isnan(cm.miou) and math.isnan(cm.pixel_accuracy)


def test_ignore_and_absent_classes() -> None:
    gt = GT.copy()
    gt[3, 3] = 255  # the one wrong class-2 pixel becomes ignored
    cm = ConfusionMatrix(4)  # class 3 never appears anywhere
    cm.update(PRED, gt)
    iou = cm.iou
    np.testing.assert_allclose(iou[:3], [5 / 7, 5 / 7, 1.0])
    assert math.isnan(iou[3])
    assert cm.miou == pytest.approx((5 / 7 + 5 / 7 + 1.0) / 3)  # the absent class is left out
    assert cm.pixels == 15

    pred = PRED.copy()
    pred[0, 0] = 3  # predicted but absent from the truth: IoU 0, and it counts in the mean
    cm = ConfusionMatrix(4)
    cm.update(pred, GT)
    assert cm.iou[3] == 0.0
    assert cm.miou == pytest.approx(np.mean([4 / 7, 5 / 8, 3 / 4, 0.0]))


def test_perfect_and_bad_inputs() -> None:
    cm = ConfusionMatrix(3)
    cm.update(GT, GT)
    assert cm.pixel_accuracy == cm.mean_accuracy == cm.miou == cm.fwiou == 1.0
    with pytest.raises(InputError, match="label 7"):
        cm.update(GT, np.where(GT == 2, 7, GT))
    with pytest.raises(InputError, match="prediction holds label 3"):
        cm.update(np.where(PRED == 2, 3, PRED), GT)
    with pytest.raises(UsageError, match="shape"):
        cm.update(PRED[:2], GT)
    with pytest.raises(UsageError, match="integer"):
        cm.update(PRED.astype(np.float32), GT)


def _step(size: int, column: int) -> np.ndarray:
    labels = np.zeros((size, size), np.int64)
    labels[:, column:] = 1
    return labels


def test_boundary_f_perfect_and_shifted() -> None:
    gt = _step(32, 8)
    perfect = boundary_f(gt, gt)
    assert (perfect.precision, perfect.recall, perfect.f) == (1.0, 1.0, 1.0)
    assert perfect.gt_pixels == 32

    within = boundary_f(_step(32, 10), gt, tolerance_px=2)
    assert within.f == 1.0
    beyond = boundary_f(_step(32, 10), gt, tolerance_px=1)
    assert beyond.f == 0.0 and beyond.pred_pixels == 32 and beyond.matched_pred == 0
    assert boundary_f(_step(32, 11), gt, tolerance_px=2).f == 0.0
    # Class-agnostic: relabelling the regions does not matter.
    assert boundary_f(torch.from_numpy(_step(32, 8) * 5 + 2), torch.from_numpy(gt)).f == 1.0


def test_boundary_f_partial_by_hand() -> None:
    gt = _step(32, 8)  # true boundary: column 7, 32 pixels
    pred = _step(32, 8)
    pred[16:, 8:12] = 0  # lower half's edge moved 4 columns right
    score = boundary_f(pred, gt, tolerance_px=2)
    # Predicted boundary: column 7 rows 0-15 (16, distance 0), row 15 columns 8-11 (4; distances 1, 2, 3,
    # 4: two matched), column 11 rows 16-31 (16, distance 4: none matched) -> 18 / 36.
    assert (score.matched_pred, score.pred_pixels) == (18, 36)
    # True boundary: rows 0-15 (distance 0) and rows 16, 17 (distance 1, 2 to (15, 7)) matched -> 18 / 32.
    assert (score.matched_gt, score.gt_pixels) == (18, 32)
    p, r = 18 / 36, 18 / 32
    assert score.f == pytest.approx(2 * p * r / (p + r))


def test_boundary_f_ignore() -> None:
    gt = _step(32, 9)
    gt[:, 7:9] = 255  # an ignore band where the edge is
    pred = _step(32, 8)  # edge inside the band: not judged
    score = boundary_f(pred, gt)
    assert (score.pred_pixels, score.gt_pixels, score.f) == (0, 0, 1.0)
    pred[:, 20:] = 2  # a spurious edge outside the band: a false positive
    score = boundary_f(pred, gt)
    assert (score.pred_pixels, score.precision, score.f) == (32, 0.0, 0.0)


def test_boundary_f_accumulates_counts() -> None:
    acc = BoundaryF(tolerance_px=2)
    acc.update(_step(32, 8), _step(32, 8))  # 32 of 32 both ways
    acc.update(_step(16, 12), _step(16, 4))  # 0 of 16 both ways
    total = acc.score()
    assert (total.matched_pred, total.pred_pixels) == (32, 48)
    assert total.precision == pytest.approx(2 / 3) and total.f == pytest.approx(2 / 3)
    assert acc.mean_f == pytest.approx(0.5) and acc.images == 2
    acc.update(np.stack([_step(16, 4)] * 2), np.stack([_step(16, 4)] * 2))
    assert acc.images == 4 and acc.score().pred_pixels == 80
