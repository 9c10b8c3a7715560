"""The dense CRF baseline (Kraehenbuehl & Koltun, NIPS 2011, as used by DeepLab) that the SPN refiner is
compared against: mean-field inference over class probabilities with a smoothness and an appearance
kernel, through the optional `pydensecrf2` package (`pip install "refine-cli[crf]"`).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np

from refine_cli.config import CRFConfig
from refine_cli.errors import UsageError
from refine_cli.labels import IGNORE_INDEX

_MISSING = 'the dense CRF needs the optional package pydensecrf2: pip install "refine-cli[crf]"'


def crf_available() -> bool:
    """Whether `pydensecrf2` (imported as `pydensecrf`) is installed."""
    return importlib.util.find_spec("pydensecrf") is not None


def require_crf() -> None:
    """A UsageError saying how to install the dense CRF, unless it is installed: before any work that needs it."""
    if not crf_available():
        raise UsageError(_MISSING)


def _densecrf() -> ModuleType:
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError:
        raise UsageError(_MISSING) from None
    return densecrf


def label_probs(labels: np.ndarray, num_classes: int, confidence: float) -> np.ndarray:
    """Hard labels as the probabilities a dense CRF's unary is built from, as pydensecrf's `unary_from_labels` does
    with `gt_prob`: a pixel's label gets `confidence`, every other class an equal share of the rest, and an unknown
    pixel (255, when there are at most 255 classes) the uniform 1/K.

    labels: integer (H, W), values 0..num_classes-1 or 255. Returns float32 (K, H, W) summing to 1 per pixel.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"label_probs needs an integer (H, W) label map; got {labels.dtype} {labels.shape}")
    if num_classes < 2:
        raise UsageError(f"label_probs needs at least 2 classes; got {num_classes}")
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"the label confidence must lie strictly between 0 and 1; got {confidence}")
    unknown = labels == IGNORE_INDEX if num_classes <= IGNORE_INDEX else np.zeros(labels.shape, bool)
    known = np.where(unknown, 0, labels)
    if known.size and (known.min() < 0 or known.max() >= num_classes):
        raise UsageError(f"labels must lie in 0..{num_classes - 1} (or {IGNORE_INDEX} = unknown)")
    rest = np.float32((1.0 - confidence) / (num_classes - 1))
    probs = np.full((num_classes, *labels.shape), rest, dtype=np.float32)
    np.put_along_axis(probs, known[None].astype(np.int64), np.float32(confidence), axis=0)
    probs[:, unknown] = np.float32(1.0 / num_classes)
    return probs


class DenseCRF:
    """One image's fully connected CRF with its pairwise terms built, ready to run on any unary.

    Building the bilateral kernel's permutohedral lattice costs about as much as five mean-field iterations, so
    unaries that share an image and a pairwise setting (e.g. several label confidences while tuning) reuse it.
    image: uint8 RGB (H, W, 3); num_classes: K. Pairwise terms are Potts: a Gaussian kernel on position
    (`gaussian_sxy`, weight `gaussian_compat`) and a bilateral kernel on position and colour (`bilateral_sxy`,
    `bilateral_srgb`, weight `bilateral_compat`); see `CRFConfig` for where the defaults come from.
    Raises `UsageError` when pydensecrf2 is missing or the image is not uint8 RGB.
    """

    def __init__(self, image: np.ndarray, num_classes: int, *, config: CRFConfig = CRFConfig()) -> None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"dense_crf needs a uint8 RGB image (H, W, 3); got {image.dtype} {image.shape}")
        if config.iterations < 0:
            raise UsageError(f"CRF iterations must be >= 0; got {config.iterations}")
        densecrf = _densecrf()
        self.config, self.num_classes = config, num_classes
        self.height, self.width = image.shape[:2]
        self._model = densecrf.DenseCRF2D(self.width, self.height, num_classes)
        self._model.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
        self._model.addPairwiseBilateral(
            sxy=config.bilateral_sxy,
            srgb=config.bilateral_srgb,
            rgbim=np.ascontiguousarray(image),
            compat=config.bilateral_compat,
        )

    def marginals(self, probs: np.ndarray) -> np.ndarray:
        """probs: float (K, H, W) per-pixel class probabilities (each pixel's K values summing to 1, e.g. a
        softmax), clipped to `config.prob_floor` before the unary energy -log(p). Returns float32 (K, H, W): the
        mean-field marginals after `config.iterations` steps, each pixel's K values summing to 1."""
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape != (self.num_classes, self.height, self.width):
            raise UsageError(
                f"dense_crf needs probabilities (K, H, W) matching the image {(self.height, self.width)} and "
                f"{self.num_classes} classes; got {probs.shape}"
            )
        if not np.issubdtype(probs.dtype, np.floating) or not np.isfinite(probs).all():
            raise UsageError("dense_crf needs finite floating-point probabilities")
        unary = -np.log(np.clip(probs.astype(np.float32), self.config.prob_floor, 1.0))
        self._model.setUnaryEnergy(np.ascontiguousarray(unary.reshape(self.num_classes, -1)))
        marginals = np.asarray(self._model.inference(self.config.iterations), dtype=np.float32)
        return marginals.reshape(self.num_classes, self.height, self.width)


def dense_crf(image: np.ndarray, probs: np.ndarray, *, config: CRFConfig = CRFConfig()) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF: `DenseCRF(image, K, config).marginals(probs)`.

    image: uint8 RGB (H, W, 3), the image the probabilities belong to (same H, W).
    probs: float (K, H, W), per-pixel class probabilities; see `DenseCRF.marginals`.
    Returns float32 (K, H, W) marginals. Raises `UsageError` when pydensecrf2 is missing or the arrays do not fit.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != np.shape(image)[:2]:
        raise UsageError(
            f"dense_crf needs probabilities (K, H, W) matching the image {np.shape(image)[:2]}; got {probs.shape}"
        )
    return DenseCRF(image, probs.shape[0], config=config).marginals(probs)
