"""Label maps: class names and colour palettes (the PASCAL VOC defaults every checkpoint and mask writer falls back
on, and CamVid's), and the one definition of a boundary between labels."""

from __future__ import annotations

import functools

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IGNORE_INDEX = 255

# CamVid in SegNet's 11-class split (Brostow et al. 2008), and the colours its label images use for these classes
# (SegNet tutorial: Brostow et al.'s 32-class colours merged to 11).
CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0), (192, 128, 128),
    (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC colour map: class i's colour spreads the bits of i over the high bits of R, G, B.
    Entry 255 (the "ignore" label) is (224, 224, 192) as in the VOC development kit."""
    return list(_voc_colours(n))


@functools.cache
def _voc_colours(n: int) -> tuple[tuple[int, int, int], ...]:
    """`voc_palette`'s entries, computed once per size: every mask and overlay written asks for them."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)


def boundary_map(labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Bool (H, W): True where a pixel's label differs from its right or lower neighbour, a 1-pixel line on
    the upper/left side of every label change. With `valid` (bool (H, W)), a change counts only between
    two valid pixels. The one boundary definition of the package: overlays and the boundary F use it."""
    labels = np.asarray(labels)
    edges = np.zeros(labels.shape, dtype=bool)
    right = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    if valid is not None:
        right &= valid[:, :-1] & valid[:, 1:]
        down &= valid[:-1, :] & valid[1:, :]
    edges[:, :-1] |= right
    edges[:-1, :] |= down
    return edges
