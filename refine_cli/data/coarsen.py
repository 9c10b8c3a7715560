"""Ground truth made coarse the way a stride-s network sees it: class shares area-averaged over s x s cells,
upsampled bilinearly back and argmaxed; and a dataset's masks written coarsened. The coarse inputs of refinement
targets that start from "a network's masks" without depending on any one network."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refine_cli import io
from refine_cli.data.base import SegmentationDataset
from refine_cli.errors import DataError, UsageError
from refine_cli.labels import IGNORE_INDEX


UPSAMPLING = ("bilinear", "nearest")


def coarsen_labels(labels: np.ndarray, num_classes: int, stride: int, *, upsample: str = "bilinear") -> np.ndarray:
    """Coarsen a label map like a stride-`stride` network's output.

    labels: integer (H, W), values 0..num_classes-1, 255 = ignore (when there are at most 255 classes).
    Each class's one-hot map is area-averaged onto a grid of ceil(H / stride) x ceil(W / stride) cells (torch's
    adaptive average pooling: cells of about stride x stride pixels), the cell scores are upsampled back to
    (H, W) bilinearly (half-pixel centres, as networks upsample their logits; or, with `upsample="nearest"`, each
    cell's shares repeated over its pixels, as a mask enlarged by pixel replication), and every pixel takes the class
    with the highest score, the lowest index on ties. Ignored pixels add to no class, so a cell's shares come
    from its labelled pixels; pixels whose neighbouring cells hold no labelled pixel at all come back as 255.
    Computed in float64 on the CPU: the same input gives the same output. Returns int64 (H, W).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"coarsen_labels needs an integer (H, W) label map; got {labels.dtype} {labels.shape}")
    if stride < 1:
        raise UsageError(f"the stride must be at least 1; got {stride}")
    if num_classes < 1:
        raise UsageError(f"num_classes must be positive; got {num_classes}")
    if upsample not in UPSAMPLING:
        raise UsageError(f"unknown upsampling '{upsample}'; choose one of {', '.join(UPSAMPLING)}")
    height, width = labels.shape
    ignored = labels == IGNORE_INDEX if num_classes <= IGNORE_INDEX else np.zeros(labels.shape, bool)
    known = np.where(ignored, 0, labels).astype(np.int64)
    if known.size and (known.min() < 0 or known.max() >= num_classes):
        raise UsageError(f"labels must lie in 0..{num_classes - 1} (or {IGNORE_INDEX} = ignore)")
    onehot = F.one_hot(torch.from_numpy(known), num_classes).permute(2, 0, 1).to(torch.float64)
    onehot *= torch.from_numpy(~ignored)[None]
    cells = (math.ceil(height / stride), math.ceil(width / stride))
    shares = F.adaptive_avg_pool2d(onehot[None], cells)
    if upsample == "nearest":
        scores = F.interpolate(shares, size=(height, width), mode="nearest")[0]
    else:
        scores = F.interpolate(shares, size=(height, width), mode="bilinear", align_corners=False)[0]
    coarse = scores.argmax(0).numpy()
    coarse[(scores.sum(0) <= 0).numpy()] = IGNORE_INDEX
    return coarse.astype(np.int64)


@dataclass(frozen=True)
class CoarsenSummary:
    out: Path
    written: int
    stride: int
    seconds: float
    upsample: str = "bilinear"


def _refuse_dataset_folders(dataset: SegmentationDataset, out: Path, targets: list[Path]) -> None:
    """A DataError, before anything is written, where a coarse mask would land in (or below) a folder that holds the
    dataset's own images or masks (`coarsen DATA DATA/masks --overwrite` would replace the ground truth it reads)."""
    own = {path.parent.resolve() for pair in dataset.pairs for path in (pair.image, *pair.masks)}
    for target in targets:
        folder = target.parent.resolve()
        held = next((held for held in (folder, *folder.parents) if held in own), None)
        if held is not None:
            raise DataError(f"{out}: {target} would be written into {held}, which holds the dataset's own files "
                            "(its ground truth or images); choose a folder outside them")


def coarsen_dataset(
    dataset: SegmentationDataset,
    out: str | Path,
    *,
    stride: int,
    upsample: str = "bilinear",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CoarsenSummary:
    """Write every sample's ground truth coarsened by `stride` (`coarsen_labels`) under `out`, mirroring the
    dataset's image tree (`dataset.relative_path`, e.g. `out/<sequence>/<frame>.png` for DAVIS) so that
    `refine-cli evaluate --masks out` and `refine-cli refine IMAGES --masks out` find them. Two-class masks without
    ignored pixels are grey PNGs of 0 and 255; others are palette PNGs of the class indices (255 = unknown) in the
    dataset's colours. Each file is written atomically. A non-empty `out` is refused unless `overwrite`.
    `progress(done, total)` is called after each file."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty; choose a new folder or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder to write the coarse masks into")
    targets = [io.safe_output_path(out, dataset.relative_path(pair), ".png") for pair in dataset.pairs]
    _refuse_dataset_folders(dataset, out, targets)
    start = time.perf_counter()
    total = len(dataset)
    for done, (pair, target) in enumerate(zip(dataset.pairs, targets), start=1):
        if not pair.masks:
            raise DataError(f"'{pair.name}' has no mask to coarsen; run `refine-cli data check` and fix it")
        coarse = coarsen_labels(dataset.read_label(pair), dataset.num_classes, stride, upsample=upsample)
        if dataset.num_classes == 2 and not (coarse == IGNORE_INDEX).any():
            io.write_binary_mask(target, coarse)
        else:
            io.write_mask(target, coarse, dataset.palette)
        if progress is not None:
            progress(done, total)
    return CoarsenSummary(out=out, written=total, stride=stride, seconds=time.perf_counter() - start,
                          upsample=upsample)
