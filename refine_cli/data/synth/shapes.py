"""The geometry of the synthetic world: the classes, each an object shape drawn from a random stream, the background
clutter and split shapes, and their rasterising to antialiased coverage.

Shapes are in output pixel coordinates (x right, y down; pixel (i, j) covers [j, j+1) x [i, i+1)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from refine_cli.config import SynthConfig

SYNTH_CLASSES: tuple[str, ...] = ("background", "disc", "ring", "triangle", "star", "cross", "crescent", "bars")


class Shape(NamedTuple):
    """Polygons filled in order with their value (255 adds, 0 cuts a hole) and open polylines of a width."""

    fills: list[tuple[np.ndarray, int]]
    lines: list[tuple[np.ndarray, float]]


class _Pose(NamedTuple):
    """Where an object lies: its centre, radius and rotation, and the stretch sqrt(aspect) of its two axes."""

    cx: float
    cy: float
    r: float
    theta: float
    stretch: float

    @property
    def rx(self) -> float:
        return self.r * self.stretch

    @property
    def ry(self) -> float:
        return self.r / self.stretch


def ellipse(cx: float, cy: float, rx: float, ry: float, theta: float, n: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return place(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), cx, cy, theta)


def place(points: np.ndarray, cx: float, cy: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([cx, cy])


def _disc(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    return Shape([(ellipse(at.cx, at.cy, at.rx, at.ry, at.theta), 255)], [])


def _ring(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    inner = rng.uniform(0.45, 0.8)  # rims from thick to a few pixels
    hole = ellipse(at.cx, at.cy, at.rx * inner, at.ry * inner, at.theta)
    return Shape([(ellipse(at.cx, at.cy, at.rx, at.ry, at.theta), 255), (hole, 0)], [])


def _triangle(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    angles = np.array([0.0, 2.0 * np.pi / 3, 4.0 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    radii = at.r * rng.uniform(0.85, 1.15, 3)
    pts = np.stack([radii * np.cos(angles) * at.stretch, radii * np.sin(angles) / at.stretch], 1)
    return Shape([(place(pts, at.cx, at.cy, at.theta), 255)], [])


def _star(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    k = int(rng.integers(5, 8))
    ratio = rng.uniform(0.38, 0.55)
    t = np.arange(2 * k) * np.pi / k
    rad = np.where(np.arange(2 * k) % 2 == 0, 1.0, ratio)
    pts = np.stack([at.rx * rad * np.cos(t), at.ry * rad * np.sin(t)], 1)
    return Shape([(place(pts, at.cx, at.cy, at.theta), 255)], [])


def _cross(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    hw = at.r * rng.uniform(0.2, 0.38)  # arm half-width
    right, left = at.rx * rng.uniform(0.8, 1.2, 2)  # arm lengths, each its own
    down, up = at.ry * rng.uniform(0.8, 1.2, 2)
    pts = np.array([[hw, hw], [right, hw], [right, -hw], [hw, -hw], [hw, -up], [-hw, -up], [-hw, -hw],
                    [-left, -hw], [-left, hw], [-hw, hw], [-hw, down], [hw, down]])
    return Shape([(place(pts, at.cx, at.cy, at.theta), 255)], [])


def _crescent(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    cut = rng.uniform(0.75, 1.0)
    off = rng.uniform(0.35, 0.65) * at.r
    hole = ellipse(at.cx + off * math.cos(at.theta), at.cy + off * math.sin(at.theta), at.rx * cut, at.ry * cut,
                   at.theta)
    return Shape([(ellipse(at.cx, at.cy, at.rx, at.ry, at.theta), 255), (hole, 0)], [])


def _bars(rng: np.random.Generator, at: _Pose, cfg: SynthConfig, short: int) -> Shape:
    lines = []
    for _ in range(int(rng.integers(1, 4))):
        length = short * rng.uniform(0.3, 0.9)
        direction = rng.uniform(0.0, np.pi)
        bend = rng.uniform(-0.25, 0.25) * length  # from straight to gently curved
        t = np.linspace(-0.5, 0.5, 16)
        pts = np.stack([t * length, bend * (1.0 - 4.0 * t * t)], 1)
        start = np.array([at.cx, at.cy]) + rng.normal(0.0, 0.25 * at.r, 2)
        width = rng.uniform(*cfg.line_width_px)
        lines.append((place(pts, *start, direction), width))
    return Shape([], lines)


# Each draws its own parameters from `rng` after the pose; `short` is the image's shorter side.
_OBJECT_SHAPES: dict[str, Callable[[np.random.Generator, _Pose, SynthConfig, int], Shape]] = {
    "disc": _disc,
    "ring": _ring,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "crescent": _crescent,
    "bars": _bars,
}


def object_shape(cls: int, rng: np.random.Generator, cx: float, cy: float, r: float, cfg: SynthConfig,
                 short: int) -> Shape:
    """An object of class `cls` about (cx, cy) of radius about r: rotation and aspect first, then the class's draws."""
    theta = rng.uniform(0.0, 2.0 * np.pi)
    aspect = math.exp(rng.uniform(math.log(cfg.aspect[0]), math.log(cfg.aspect[1])))
    name = SYNTH_CLASSES[cls]
    make = _OBJECT_SHAPES.get(name)
    if make is None:
        raise ValueError(f"no shape for class {name!r}")
    return make(rng, _Pose(cx, cy, r, theta, math.sqrt(aspect)), cfg, short)


def distractor_shape(rng: np.random.Generator, cx: float, cy: float, r: float) -> Shape:
    """Background clutter no object class looks like: irregular blobs and boxes."""
    theta = rng.uniform(0.0, 2.0 * np.pi)
    if rng.random() < 0.6:
        t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
        radius = np.ones_like(t)
        for k in range(2, 6):  # harmonics 2..5, strong enough that no blob passes for a disc
            radius += rng.uniform(0.08, 0.22) * np.cos(k * t + rng.uniform(0.0, 2.0 * np.pi))
        pts = np.stack([r * radius * np.cos(t), r * radius * np.sin(t)], 1)
    else:
        a = r * rng.uniform(0.7, 1.2)
        b = a / rng.uniform(1.0, 3.0)  # thick boxes only: thin ones would pass for bars
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    return Shape([(place(pts, cx, cy, theta), 255)], [])


def split_shape(rng: np.random.Generator, h: int, w: int) -> Shape:
    """A half-plane behind a wavy edge: a strong image edge that is no label edge."""
    diag = math.hypot(h, w)
    t = np.linspace(-diag, diag, 64)
    wave = rng.uniform(0.0, 0.08) * diag * np.sin(
        t * rng.uniform(0.5, 3.0) * np.pi / diag + rng.uniform(0.0, 2.0 * np.pi))
    edge = np.stack([t, wave], 1)
    pts = np.concatenate([edge, [[diag, 2.0 * diag], [-diag, 2.0 * diag]]])
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    return Shape([(place(pts, cx, cy, rng.uniform(0.0, 2.0 * np.pi)), 255)], [])


def rasterise(shape: Shape, h: int, w: int, s: int) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Coverage in [0, 1] of `shape` over its pixel box (y0, x0, y1, x1), clipped to the image: drawn at
    s times the resolution and area-averaged, so edges are antialiased and coverage > 0.5 is the majority."""
    pts_all = [p for p, _ in shape.fills] + [p for p, _ in shape.lines]
    margin = max((wd for _, wd in shape.lines), default=0.0) / 2 + 1
    lo = np.min([p.min(0) for p in pts_all], 0) - margin
    hi = np.max([p.max(0) for p in pts_all], 0) + margin
    x0, y0 = max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1])))
    x1, y1 = min(w, int(math.ceil(hi[0]))), min(h, int(math.ceil(hi[1])))
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = np.zeros(((y1 - y0) * s, (x1 - x0) * s), np.uint8)
    shift = 4  # cv2 draws at 1/16 pixel precision with fixed-point coordinates

    def to_canvas(p: np.ndarray) -> np.ndarray:
        # continuous x maps to supersampled pixel-centre coordinate x*s - 0.5 (pixel k's centre is (k+0.5)/s)
        q = (p - np.array([x0, y0])) * s - 0.5
        return np.round(q * (1 << shift)).astype(np.int32)

    for pts, value in shape.fills:
        cv2.fillPoly(canvas, [to_canvas(pts)], value, lineType=cv2.LINE_8, shift=shift)
    for pts, width in shape.lines:
        cv2.polylines(canvas, [to_canvas(pts)], False, 255, thickness=max(1, round(width * s)),
                      lineType=cv2.LINE_8, shift=shift)
    alpha = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return alpha, (y0, x0, y1, x1)
