"""Dense CRF baseline: contract, invariants, and that it snaps a misplaced coarse edge to the colour edge."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from refine_cli import crf
from refine_cli.config import CRFConfig
from refine_cli.errors import UsageError
from refine_cli.metrics import ConfusionMatrix

needs_crf = pytest.mark.skipif(
    not crf.crf_available(), reason='pydensecrf2 not installed (pip install "refine-cli[crf]")'
)


def _edge_scene(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-colour image with a sharp vertical edge at the middle column, its labels, and coarse
    probabilities whose soft edge sits 6 px too far right, with noise."""
    rng = np.random.default_rng(seed)
    half = size // 2
    image = np.zeros((size, size, 3), np.int64)
    image[:, :half] = (40, 60, 50)
    image[:, half:] = (220, 190, 170)
    image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    labels = np.zeros((size, size), np.int64)
    labels[:, half:] = 1
    x = np.arange(size)[None, :].repeat(size, 0)
    fg = 1.0 / (1.0 + np.exp(-(x - (half + 6)) / 4.0))
    fg = np.clip(fg + rng.normal(0.0, 0.15, fg.shape), 0.02, 0.98)
    return image, labels, np.stack([1.0 - fg, fg]).astype(np.float32)


def _miou(pred: np.ndarray, gt: np.ndarray) -> float:
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    return cm.miou


@needs_crf
def test_output_contract() -> None:
    image, _, probs = _edge_scene(32)
    out = crf.dense_crf(image, probs, config=CRFConfig(iterations=3))
    assert out.shape == probs.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


@needs_crf
def test_confident_uniform_map_stays() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    probs = np.empty((3, 32, 40), np.float32)
    probs[:] = np.array([0.05, 0.9, 0.05], np.float32)[:, None, None]
    out = crf.dense_crf(image, probs)
    assert (out.argmax(axis=0) == 1).all()
    assert out[1].min() >= 0.9 - 1e-6  # agreement everywhere only strengthens the belief


@needs_crf
def test_snaps_coarse_edge_to_colour_edge() -> None:
    image, labels, probs = _edge_scene(64)
    coarse = _miou(probs.argmax(axis=0), labels)
    refined = _miou(crf.dense_crf(image, probs).argmax(axis=0), labels)
    assert coarse < 0.9  # the coarse edge is visibly off
    assert refined > coarse + 0.1 and refined > 0.95


@needs_crf
def test_rejects_mismatched_inputs() -> None:
    image, _, probs = _edge_scene(32)
    with pytest.raises(UsageError, match="matching the image"):
        crf.dense_crf(image[:16], probs)
    with pytest.raises(UsageError, match="uint8"):
        crf.dense_crf(image.astype(np.float32), probs)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert crf.crf_available() is False
    image, _, probs = _edge_scene(16)
    with pytest.raises(UsageError, match=r'pip install "refine-cli\[crf\]"'):
        crf.dense_crf(image, probs)


@needs_crf
def test_label_probs_are_pydensecrfs_unary_from_labels():
    from pydensecrf.utils import unary_from_labels

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (12, 15))
    labels[3:5] = 255  # unknown
    probs = crf.label_probs(labels, 4, 0.7)
    assert probs.shape == (4, 12, 15) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)
    # pydensecrf marks "unsure" with label 0 and shifts the classes up by one.
    theirs = unary_from_labels(np.where(labels == 255, 0, labels + 1), 4, gt_prob=0.7, zero_unsure=True)
    np.testing.assert_allclose(-np.log(probs.reshape(4, -1)), theirs, rtol=1e-6)
    with pytest.raises(UsageError, match="strictly between"):
        crf.label_probs(labels, 4, 1.0)
    with pytest.raises(UsageError, match="0..3"):
        crf.label_probs(np.full((2, 2), 4), 4, 0.7)


@needs_crf
def test_a_built_crf_runs_any_unary_as_a_fresh_one_would():
    image, _, probs = _edge_scene(40)
    other = np.ascontiguousarray(probs[::-1])
    config = CRFConfig(iterations=4, bilateral_sxy=15.0)
    model = crf.DenseCRF(image, 2, config=config)
    model.marginals(probs)
    np.testing.assert_array_equal(model.marginals(other), crf.DenseCRF(image, 2, config=config).marginals(other))
    np.testing.assert_array_equal(model.marginals(probs), crf.dense_crf(image, probs, config=config))
