"""Checking a dataset before training: every pair readable, image and mask the same size, every label a class
or 255. Problems are collected per file name; `ensure_valid` turns them into one `DataError` or drops them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from refine_cli.data.base import Pair, Problem, SegmentationDataset, header_size
from refine_cli.errors import DataError, InputError
from refine_cli.io import read_image

ProgressFn = Callable[[int, int], None]
# Read masks leniently (any 8-bit value, 255 included) and name the out-of-range values here.
_ANY_8BIT = 256


@dataclass(frozen=True)
class ValidationReport:
    """What `validate` found. `problems` are in dataset order (listing problems first)."""

    checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in self.problems))

    def summary(self, limit: int = 5) -> str:
        """One paragraph: the count and the first `limit` problems."""
        if self.ok:
            return f"{self.checked} samples checked, no problems"
        shown = "; ".join(f"{p.name}: {p.detail}" for p in self.problems[:limit])
        more = f" (and {len(self.problems) - limit} more)" if len(self.problems) > limit else ""
        return (f"{len(self.bad_names)} of {self.checked} samples have problems: {shown}{more}")

    def raise_for_problems(self, limit: int = 5) -> None:
        """Raise a `DataError` naming the first few bad pairs and the count, unless all is well."""
        if not self.ok:
            raise DataError(f"{self.summary(limit)}. Fix them (`refine-cli data check` lists all) or skip "
                            "them (skip_bad=True / --skip-bad)")


def validate(
    dataset: SegmentationDataset,
    *,
    check_labels: bool = True,
    decode_images: bool = False,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> ValidationReport:
    """Check every pair of `dataset`.

    Sizes come from file headers. `check_labels` decodes each mask to find values outside
    0..num_classes-1 other than 255 (the slow part: a VOC-sized mask takes milliseconds); `decode_images`
    also decodes every image to catch truncated files. Files are read on `workers` threads (default: the
    CPU count, at most 8); `progress(done, total)` is called after each pair.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    total = len(dataset.pairs)

    def check(pair: Pair) -> list[Problem]:
        return _check_pair(dataset, pair, check_labels=check_labels, decode_images=decode_images)

    problems = list(dataset.listing_problems)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, found in enumerate(pool.map(check, dataset.pairs), start=1):
            problems.extend(found)
            if progress is not None:
                progress(done, total)
    return ValidationReport(checked=total, problems=tuple(problems))


def ensure_valid(
    dataset: SegmentationDataset,
    *,
    skip_bad: bool = False,
    check_labels: bool = True,
    decode_images: bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> SegmentationDataset:
    """`validate`, then raise a `DataError` listing the first bad pairs, or with `skip_bad` return the
    dataset without them (a `DataError` still if nothing is left). Images are decoded by default: a truncated
    file has a sound header, and a check of headers alone would let it through to stop training later."""
    report = validate(dataset, check_labels=check_labels, decode_images=decode_images, workers=workers,
                      progress=progress)
    if report.ok:
        return dataset
    if not skip_bad:
        report.raise_for_problems()
    kept = dataset.without(report.bad_names)
    if len(kept) == 0:
        raise DataError(f"every sample has a problem: {report.summary()}")
    return kept


def _check_pair(dataset: SegmentationDataset, pair: Pair, *, check_labels: bool, decode_images: bool) -> list[Problem]:
    name = pair.name
    problems = []
    if not pair.image.is_file():
        problems.append(Problem(name, "missing_image", f"image {pair.image} does not exist"))
    missing = [p for p in pair.masks if not p.is_file()]
    if not pair.masks or missing:
        where = missing[0] if missing else "the masks folder"
        problems.append(Problem(name, "missing_mask", f"no mask ({where})"))
    if dataset.probs_cache is not None and name not in dataset.probs_cache:
        problems.append(Problem(name, "missing_probs", f"no cached probabilities {dataset.probs_cache.path(name)}"))
    if any(p.kind in ("missing_image", "missing_mask") for p in problems):
        return problems
    try:
        image_size = header_size(pair.image)
        if decode_images:
            read_image(pair.image)
    except InputError as exc:
        return [*problems, Problem(name, "unreadable", str(exc))]
    try:
        mask_sizes = dataset.mask_sizes(pair)
    except InputError as exc:
        return [*problems, Problem(name, "unreadable", str(exc))]
    wrong = [s for s in mask_sizes if s != image_size]
    if wrong:
        (h, w), (mh, mw) = image_size, wrong[0]
        return [*problems, Problem(name, "size_mismatch", f"image is {w}x{h}, mask is {mw}x{mh}")]
    if check_labels:
        try:
            label = dataset.read_label(pair, num_classes=_ANY_8BIT)
        except InputError as exc:
            return [*problems, Problem(name, "unreadable", str(exc))]
        bad = _bad_values(label, dataset.num_classes, dataset.ignore_index)
        if bad:
            shown = ", ".join(str(v) for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
            valid = f"0..{dataset.num_classes - 1} (and {dataset.ignore_index} = ignore)"
            problems.append(Problem(name, "bad_labels", f"label values {shown} are outside {valid}"))
    return problems


def _bad_values(label: np.ndarray, num_classes: int, ignore_index: int) -> list[int]:
    if label.size and 0 <= label.min() and label.max() < 1 << 16:  # bincount: several times faster than unique
        present = np.flatnonzero(np.bincount(label.ravel()))
    else:
        present = np.unique(label)
    return [int(v) for v in present if (v < 0 or v >= num_classes) and v != ignore_index]
