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

_MISSING = 'the dense CRF needs the optional package pydensecrf2: pip install "refine-cli[crf]"'


def crf_available() -> bool:
    """Whether `pydensecrf2` (imported as `pydensecrf`) is installed."""
    return importlib.util.find_spec("pydensecrf") is not None


def _densecrf() -> ModuleType:
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError:
        raise UsageError(_MISSING) from None
    return densecrf


def dense_crf(image: np.ndarray, probs: np.ndarray, *, config: CRFConfig = CRFConfig()) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF.

    image: uint8 RGB (H, W, 3), the image the probabilities belong to (same H, W).
    probs: float (K, H, W), per-pixel class probabilities (each pixel's K values summing to 1, e.g. a
        softmax); clipped to `config.prob_floor` before the unary energy -log(p).
    Returns float32 (K, H, W): the mean-field marginals after `config.iterations` steps, each pixel's K
    values summing to 1. Pairwise terms are Potts: a Gaussian kernel on position (`gaussian_sxy`,
    weight `gaussian_compat`) and a bilateral kernel on position and colour (`bilateral_sxy`,
    `bilateral_srgb`, weight `bilateral_compat`); see `CRFConfig` for where the defaults come from.
    Raises `UsageError` when pydensecrf2 is missing or the arrays do not fit.
    """
    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"dense_crf needs a uint8 RGB image (H, W, 3); got {image.dtype} {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise UsageError(
            f"dense_crf needs probabilities (K, H, W) matching the image {image.shape[:2]}; got {probs.shape}"
        )
    if not np.issubdtype(probs.dtype, np.floating) or not np.isfinite(probs).all():
        raise UsageError("dense_crf needs finite floating-point probabilities")
    if config.iterations < 0:
        raise UsageError(f"CRF iterations must be >= 0; got {config.iterations}")
    densecrf = _densecrf()

    num_classes, height, width = probs.shape
    unary = -np.log(np.clip(probs.astype(np.float32), config.prob_floor, 1.0))
    model = densecrf.DenseCRF2D(width, height, num_classes)
    model.setUnaryEnergy(np.ascontiguousarray(unary.reshape(num_classes, -1)))
    model.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    model.addPairwiseBilateral(
        sxy=config.bilateral_sxy,
        srgb=config.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=config.bilateral_compat,
    )
    marginals = np.asarray(model.inference(config.iterations), dtype=np.float32)
    return marginals.reshape(num_classes, height, width)
