"""The synthetic segmentation world: classes defined by shape only, every surface a crop of a real photograph,
written in the VOC layout so every loader reads it unchanged. Deterministic: image i depends on (seed, i) only.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from refine_cli.config import SynthConfig
from refine_cli.data.base import Sample
from refine_cli.errors import DataError, UsageError
from refine_cli.io import atomic_write
from refine_cli.labels import voc_palette

SYNTH_CLASSES: tuple[str, ...] = ("background", "disc", "ring", "triangle", "star", "cross", "crescent", "bars")
FORMAT_VERSION = 2  # bump when the same (seed, index) would render differently
_NAME = "synth_{:06d}"
_NAME_RE = re.compile(r"^synth_\d{6}\.(jpg|png)$")
# Entropy tags keep the split draw and the per-image draws apart for one seed.
_SPLIT_STREAM, _IMAGE_STREAM = 0, 1
_MIN_OBJECT_FRACTION, _ATTEMPTS = 0.003, 8


class Texture(NamedTuple):
    name: str
    pixels: np.ndarray  # (H, W, 3) float32, 0..255
    grey: bool


class Rendered(NamedTuple):
    """One image of the world before encoding: (H, W, 3) uint8 RGB, (H, W) uint8 labels, its JPEG quality."""

    image: np.ndarray
    label: np.ndarray
    jpeg_quality: int


@dataclass(frozen=True)
class SynthSummary:
    out: Path
    train: int
    val: int
    seconds: float


@lru_cache(maxsize=1)
def texture_pool() -> tuple[Texture, ...]:
    """The bundled public-domain photographs (refine_cli/data/textures/, see LICENSE.txt there)."""
    folder = resources.files("refine_cli.data").joinpath("textures")
    textures = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".jpg"):
            continue
        with Image.open(io.BytesIO(entry.read_bytes())) as img:
            grey = img.mode == "L"
            pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
        textures.append(Texture(entry.name[:-4], pixels, grey))
    if not textures:
        raise DataError("the bundled textures are missing from refine_cli/data/textures/; reinstall refine-cli")
    return tuple(textures)


# ---- shapes, in output pixel coordinates (x right, y down; pixel (i, j) covers [j, j+1) x [i, i+1)) ----

class _Shape(NamedTuple):
    """Polygons filled in order with their value (255 adds, 0 cuts a hole) and open polylines of a width."""

    fills: list[tuple[np.ndarray, int]]
    lines: list[tuple[np.ndarray, float]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, theta: float, n: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return _place(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), cx, cy, theta)


def _place(points: np.ndarray, cx: float, cy: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([cx, cy])


def _object_shape(cls: int, rng: np.random.Generator, cx: float, cy: float, r: float, cfg: SynthConfig,
                  short: int) -> _Shape:
    theta = rng.uniform(0.0, 2.0 * np.pi)
    aspect = math.exp(rng.uniform(math.log(cfg.aspect[0]), math.log(cfg.aspect[1])))
    rx, ry = r * math.sqrt(aspect), r / math.sqrt(aspect)
    name = SYNTH_CLASSES[cls]
    if name == "disc":
        return _Shape([(_ellipse(cx, cy, rx, ry, theta), 255)], [])
    if name == "ring":
        inner = rng.uniform(0.45, 0.8)  # rims from thick to a few pixels
        hole = _ellipse(cx, cy, rx * inner, ry * inner, theta)
        return _Shape([(_ellipse(cx, cy, rx, ry, theta), 255), (hole, 0)], [])
    if name == "triangle":
        angles = np.array([0.0, 2.0 * np.pi / 3, 4.0 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        radii = r * rng.uniform(0.85, 1.15, 3)
        pts = np.stack([radii * np.cos(angles) * math.sqrt(aspect), radii * np.sin(angles) / math.sqrt(aspect)], 1)
        return _Shape([(_place(pts, cx, cy, theta), 255)], [])
    if name == "star":
        k = int(rng.integers(5, 8))
        ratio = rng.uniform(0.38, 0.55)
        t = np.arange(2 * k) * np.pi / k
        rad = np.where(np.arange(2 * k) % 2 == 0, 1.0, ratio)
        pts = np.stack([rx * rad * np.cos(t), ry * rad * np.sin(t)], 1)
        return _Shape([(_place(pts, cx, cy, theta), 255)], [])
    if name == "cross":
        hw = r * rng.uniform(0.2, 0.38)  # arm half-width
        right, left = rx * rng.uniform(0.8, 1.2, 2)  # arm lengths, each its own
        down, up = ry * rng.uniform(0.8, 1.2, 2)
        pts = np.array([[hw, hw], [right, hw], [right, -hw], [hw, -hw], [hw, -up], [-hw, -up], [-hw, -hw],
                        [-left, -hw], [-left, hw], [-hw, hw], [-hw, down], [hw, down]])
        return _Shape([(_place(pts, cx, cy, theta), 255)], [])
    if name == "crescent":
        cut = rng.uniform(0.75, 1.0)
        off = rng.uniform(0.35, 0.65) * r
        hole = _ellipse(cx + off * math.cos(theta), cy + off * math.sin(theta), rx * cut, ry * cut, theta)
        return _Shape([(_ellipse(cx, cy, rx, ry, theta), 255), (hole, 0)], [])
    if name == "bars":
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            length = short * rng.uniform(0.3, 0.9)
            direction = rng.uniform(0.0, np.pi)
            bend = rng.uniform(-0.25, 0.25) * length  # from straight to gently curved
            t = np.linspace(-0.5, 0.5, 16)
            pts = np.stack([t * length, bend * (1.0 - 4.0 * t * t)], 1)
            start = np.array([cx, cy]) + rng.normal(0.0, 0.25 * r, 2)
            width = rng.uniform(*cfg.line_width_px)
            lines.append((_place(pts, *start, direction), width))
        return _Shape([], lines)
    raise ValueError(f"no shape for class {name!r}")


def _distractor_shape(rng: np.random.Generator, cx: float, cy: float, r: float) -> _Shape:
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
    return _Shape([(_place(pts, cx, cy, theta), 255)], [])


def _split_shape(rng: np.random.Generator, h: int, w: int) -> _Shape:
    """A half-plane behind a wavy edge: a strong image edge that is no label edge."""
    diag = math.hypot(h, w)
    t = np.linspace(-diag, diag, 64)
    wave = rng.uniform(0.0, 0.08) * diag * np.sin(t * rng.uniform(0.5, 3.0) * np.pi / diag + rng.uniform(0.0, 2.0 * np.pi))
    edge = np.stack([t, wave], 1)
    pts = np.concatenate([edge, [[diag, 2.0 * diag], [-diag, 2.0 * diag]]])
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    return _Shape([(_place(pts, cx, cy, rng.uniform(0.0, 2.0 * np.pi)), 255)], [])


def _rasterise(shape: _Shape, h: int, w: int, s: int) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
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


# ---- appearance ----

def _texture_patch(rng: np.random.Generator, box: tuple[int, int, int, int], cfg: SynthConfig) -> np.ndarray:
    """A randomly scaled, rotated, recoloured crop of a random photograph, filling `box`."""
    pool = texture_pool()
    tex = pool[int(rng.integers(len(pool)))]
    y0, x0, y1, x1 = box
    th, tw = tex.pixels.shape[:2]
    scale = math.exp(rng.uniform(math.log(cfg.texture_scale[0]), math.log(cfg.texture_scale[1])))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    # inverse map: output pixel (x, y) -> texture (u, v); the box centre lands on a random texture point
    bx, by = (x1 - x0) / 2.0, (y1 - y0) / 2.0
    u0, v0 = rng.uniform(0.2, 0.8) * tw, rng.uniform(0.2, 0.8) * th
    m = np.array([[c, -s, u0 - c * bx + s * by], [s, c, v0 - s * bx - c * by]], np.float32)
    patch = cv2.warpAffine(tex.pixels, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
    gains = rng.uniform(0.45, 1.25, 3) if tex.grey else np.exp(rng.normal(0.0, 0.12, 3))
    contrast = rng.uniform(0.6, 1.4)
    gains = gains * math.exp(rng.normal(0.0, 0.25))  # brightness
    mean = np.array(cv2.mean(patch)[:3])
    # contrast about the mean, channel gains and an offset: one per-pixel affine colour map
    colour = np.zeros((3, 4), np.float32)
    colour[:, :3] = np.diag(contrast * gains)
    colour[:, 3] = mean * (1.0 - contrast) * gains + rng.uniform(-20, 20)
    patch = cv2.transform(patch, colour)
    # a soft linear shading across the surface, as from a light to one side
    gy, gx = rng.uniform(-0.25, 0.25, 2) / max(1, max(x1 - x0, y1 - y0))
    shading = (1.0 + gy * (np.arange(y1 - y0, dtype=np.float32) - by))[:, None] \
        + (gx * (np.arange(x1 - x0, dtype=np.float32) - bx))[None, :]
    patch *= shading[..., None]
    return patch


class _Canvas:
    """The image being composited and, per class, the visible coverage of every pixel (over-operator)."""

    def __init__(self, h: int, w: int, num_classes: int):
        self.image = np.zeros((h, w, 3), np.float32)
        self.cover = np.zeros((num_classes, h, w), np.float32)
        self.cover[0] = 1.0
        self.present = [0]  # classes with some coverage: the others need no update

    def paint(self, alpha: np.ndarray, box: tuple[int, int, int, int], patch: np.ndarray, cls: int) -> None:
        y0, x0, y1, x1 = box
        region = self.image[y0:y1, x0:x1]
        region += alpha[..., None] * (patch - region)
        keep = 1.0 - alpha
        for c in self.present:
            self.cover[c, y0:y1, x0:x1] *= keep
        self.cover[cls, y0:y1, x0:x1] += alpha
        if cls not in self.present:
            self.present.append(cls)

    def shadow(self, rng: np.random.Generator, alpha: np.ndarray, box: tuple[int, int, int, int]) -> None:
        """Darken what lies under an object, offset and blurred: an image edge that is no label edge."""
        sigma = rng.uniform(1.0, 3.0)
        pad = int(3 * sigma) + 1
        soft = cv2.GaussianBlur(np.pad(alpha, pad), (0, 0), sigma)
        dy, dx = (int(v) for v in rng.integers(-5, 6, 2))
        h, w = self.image.shape[:2]
        y0, x0 = box[0] - pad + dy, box[1] - pad + dx
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(h, y0 + soft.shape[0]), min(w, x0 + soft.shape[1])
        if ye <= ys or xe <= xs:
            return
        part = soft[ys - y0 : ye - y0, xs - x0 : xe - x0]
        self.image[ys:ye, xs:xe] *= (1.0 - rng.uniform(0.25, 0.55) * part)[..., None]


def render(index: int, config: SynthConfig = SynthConfig()) -> Rendered:
    """Image `index` of the world of `config.seed`: the same pixels on every call.

    A scene whose objects ended up hidden (occluded or outside) is redrawn from the next random stream,
    so that every image shows some object: at least `_MIN_OBJECT_FRACTION` of its pixels, unless
    `_ATTEMPTS` draws all fail.
    """
    for attempt in range(_ATTEMPTS):
        rendered = _render_once(np.random.default_rng([config.seed, _IMAGE_STREAM, index, attempt]), config)
        if np.count_nonzero(rendered.label) >= _MIN_OBJECT_FRACTION * rendered.label.size:
            break
    return rendered


def _render_once(rng: np.random.Generator, config: SynthConfig) -> Rendered:
    h, w = config.height, config.width
    short = min(h, w)
    lo, hi = -config.border_margin, 1.0 + config.border_margin
    canvas = _Canvas(h, w, len(SYNTH_CLASSES))
    full = (0, 0, h, w)
    canvas.paint(np.ones((h, w), np.float32), full, _desaturate(_texture_patch(rng, full, config), rng, config), 0)
    if rng.random() < config.split_background_p:
        _draw(canvas, _split_shape(rng, h, w), 0, rng, config, shadow=False, tint=0)

    layers = [("object", int(rng.integers(1, len(SYNTH_CLASSES)))) for _ in range(int(rng.integers(
        config.objects[0], config.objects[1] + 1)))]
    layers += [("distractor", 0)] * int(rng.integers(config.distractors[0], config.distractors[1] + 1))
    for i in rng.permutation(len(layers)):  # depth order: later layers occlude earlier ones
        kind, cls = layers[i]
        cx, cy = rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h
        r = short * math.exp(rng.uniform(math.log(config.radius[0]), math.log(config.radius[1])))
        shape = (_object_shape(cls, rng, cx, cy, r, config, short) if kind == "object"
                 else _distractor_shape(rng, cx, cy, r))
        # Clutter takes the colour cast of a random class: colour hints at a class, only shape decides.
        tint = cls if kind == "object" else int(rng.integers(1, len(SYNTH_CLASSES)))
        _draw(canvas, shape, cls, rng, config, shadow=rng.random() < config.shadow_p, tint=tint)

    image = canvas.image
    gy, gx = rng.uniform(-0.2, 0.2, 2)  # global illumination gradient
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image *= (1.0 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5))[..., None]
    if rng.random() < config.blur_p:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*config.blur_sigma))
    image += rng.normal(0.0, rng.uniform(*config.noise_sigma), image.shape).astype(np.float32)
    label = np.argmax(canvas.cover, axis=0).astype(np.uint8)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return Rendered(np.clip(np.rint(image), 0, 255).astype(np.uint8), label, quality)


def _class_tint(patch: np.ndarray, cls: int, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Pull a surface's colour toward its class hue by a random share in `cfg.class_tint`, keeping the texture's
    brightness detail: like real object classes, a colour tendency, never a rule (clutter gets one too).
    Class 0 (background surfaces) is desaturated instead."""
    if cls == 0:  # background surfaces: duller, as a backdrop usually is next to the things in front of it
        return _desaturate(patch, rng, cfg)
    strength = rng.uniform(*cfg.class_tint)
    hue = (cls - 1) / (len(SYNTH_CLASSES) - 1) + rng.normal(0.0, 0.03)
    rgb = np.array(_hue_rgb(hue), np.float32)
    luma = patch @ np.array([0.299, 0.587, 0.114], np.float32)
    return (1.0 - strength) * patch + strength * luma[..., None] * (rgb / rgb.mean())


def _desaturate(patch: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Keep a random share (`cfg.background_saturation`) of a surface's colour around its brightness."""
    keep = rng.uniform(*cfg.background_saturation)
    luma = patch @ np.array([0.299, 0.587, 0.114], np.float32)
    return luma[..., None] + keep * (patch - luma[..., None])


def _hue_rgb(hue: float) -> tuple[float, float, float]:
    """A saturated colour of the given hue (0..1, wrapping), each channel in [0.15, 1]."""
    h6 = (hue % 1.0) * 6.0
    x = 1.0 - abs(h6 % 2.0 - 1.0)
    r, g, b = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h6) % 6]
    return tuple(0.15 + 0.85 * v for v in (r, g, b))


def _draw(canvas: _Canvas, shape: _Shape, cls: int, rng: np.random.Generator, cfg: SynthConfig, *,
          shadow: bool, tint: int | None = None) -> None:
    h, w = canvas.image.shape[:2]
    raster = _rasterise(shape, h, w, cfg.supersample)
    if raster is None:
        return
    alpha, box = raster
    if shadow:
        canvas.shadow(rng, alpha, box)
    patch = _texture_patch(rng, box, cfg)
    if tint is not None:
        patch = _class_tint(patch, tint, rng, cfg)
    canvas.paint(alpha, box, patch, cls)


# ---- files ----

def encode(rendered: Rendered) -> tuple[bytes, bytes]:
    """(JPEG bytes of the image at its quality, palette-PNG bytes of the label with the VOC palette)."""
    jpg = io.BytesIO()
    Image.fromarray(rendered.image).save(jpg, format="JPEG", quality=rendered.jpeg_quality)
    png = io.BytesIO()
    mask = Image.fromarray(rendered.label, mode="P")
    mask.putpalette([v for rgb in voc_palette() for v in rgb])
    mask.save(png, format="PNG")
    return jpg.getvalue(), png.getvalue()


def split_names(config: SynthConfig) -> tuple[list[str], list[str]]:
    """(train, val) sample names; the val draw depends on the seed and n."""
    n = config.n
    n_val = min(n - 1, max(1 if config.val_fraction > 0 and n > 1 else 0, round(n * config.val_fraction)))
    order = np.random.default_rng([config.seed, _SPLIT_STREAM]).permutation(n)
    val = set(int(i) for i in order[:n_val])
    names = [_NAME.format(i) for i in range(n)]
    return [m for i, m in enumerate(names) if i not in val], [m for i, m in enumerate(names) if i in val]


def check_config(config: SynthConfig) -> None:
    """UsageError for settings that cannot make a world."""
    if config.n < 1:
        raise UsageError("--n must be at least 1")
    if min(config.height, config.width) < 32:
        raise UsageError("images must be at least 32x32 pixels")
    if not 0.0 <= config.val_fraction < 1.0:
        raise UsageError("--val-fraction must be in [0, 1)")
    if config.n > 999_999:
        raise UsageError("--n is limited to 999999 images (six-digit names)")
    if config.supersample < 1:
        raise UsageError("supersample must be at least 1")


def generate(
    out: str | Path,
    config: SynthConfig = SynthConfig(),
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write the world in the VOC layout:

    OUT/JPEGImages/synth_000000.jpg ...           images (JPEG at a random quality: real artefacts)
    OUT/SegmentationClass/synth_000000.png ...    palette PNG labels (VOC palette, index = class)
    OUT/ImageSets/Segmentation/{train,val}.txt
    OUT/classes.txt, OUT/synth.json, OUT/README.txt

    Every file is written atomically; the lists and metadata come last, so an interrupted run has none.
    A non-empty OUT is refused unless `overwrite`; then the old lists go first, stale synth_* images of a
    larger earlier run are removed, and other files are left alone.
    """
    check_config(config)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; choose a folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; choose a new folder or pass --overwrite")
    start = time.perf_counter()
    lists = out / "ImageSets" / "Segmentation"
    if overwrite:  # an interrupted overwrite must not leave the old lists naming a mix of old and new files
        for stale in (lists / "train.txt", lists / "val.txt", out / "synth.json"):
            stale.unlink(missing_ok=True)
    images, masks = out / "JPEGImages", out / "SegmentationClass"
    for i, (jpg, png) in enumerate(_encoded(config)):
        name = _NAME.format(i)
        _write(images / f"{name}.jpg", jpg)
        _write(masks / f"{name}.png", png)
        if progress is not None:
            progress(i + 1, config.n)
    if overwrite:
        _remove_stale(out, config.n)
    train, val = split_names(config)
    _write(lists / "train.txt", "".join(f"{n}\n" for n in train).encode())
    _write(lists / "val.txt", "".join(f"{n}\n" for n in val).encode())
    palette = voc_palette()
    classes = "".join(f"{c} {palette[i][0]} {palette[i][1]} {palette[i][2]}\n" for i, c in enumerate(SYNTH_CLASSES))
    _write(out / "classes.txt", classes.encode())
    meta = {
        "generator": "refine_cli.data.synth",
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "classes": list(SYNTH_CLASSES),
        "textures": [t.name for t in texture_pool()],
        "train": len(train),
        "val": len(val),
    }
    _write(out / "synth.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    _write(out / "README.txt", _readme(config, len(train), len(val)).encode())
    return SynthSummary(out, len(train), len(val), time.perf_counter() - start)


def _encoded(config: SynthConfig) -> Iterator[tuple[bytes, bytes]]:
    for i in range(config.n):
        yield encode(render(i, config))


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def _remove_stale(out: Path, n: int) -> None:
    for folder in (out / "JPEGImages", out / "SegmentationClass"):
        for path in folder.iterdir():
            if _NAME_RE.match(path.name) and int(path.stem[6:]) >= n:
                path.unlink()


def _readme(config: SynthConfig, n_train: int, n_val: int) -> str:
    return f"""Synthetic segmentation world written by refine-cli (`refine-cli data synth`), format {FORMAT_VERSION}.

{n_train} training and {n_val} validation images of {config.width}x{config.height} pixels, seed {config.seed}.
Layout as PASCAL VOC 2012: JPEGImages/*.jpg, SegmentationClass/*.png (palette PNGs, index = class),
ImageSets/Segmentation/train.txt and val.txt; classes.txt gives the names (index order) and colours.

Classes are shapes, not colours: {", ".join(SYNTH_CLASSES[1:])} on a background. Every surface, objects
and background alike, is a random crop of the same pool of public-domain photographs (see the licence file
in refine_cli/data/textures/), so only shape and context tell the classes apart. Background-class clutter
(irregular blobs, boxes), a second background region behind a wavy edge, occlusion in depth order, cast
shadows, objects cut by the border, thin bars a few pixels wide, blur, noise and JPEG compression at
quality {config.jpeg_quality[0]}-{config.jpeg_quality[1]} make the task hard in the ways real images are.
Edges are antialiased (shapes drawn at {config.supersample}x and area-averaged); labels stay hard (the class
covering most of each pixel). synth.json holds every generator setting: the same settings and seed give
byte-identical files.
"""


class SynthDataset(Dataset[Sample]):
    """The same world rendered on the fly, no files: sample i equals the files `generate` writes for the
    same config (the JPEG round trip included)."""

    def __init__(self, config: SynthConfig = SynthConfig(), split: str = "train"):
        check_config(config)
        train, val = split_names(config)
        chosen = {"train": train, "val": val, "all": train + val}.get(split)
        if chosen is None:
            raise UsageError(f"unknown split '{split}'; choose one of: all, train, val")
        self.config = config
        self.indices = sorted(int(n[6:]) for n in chosen)
        self.classes = SYNTH_CLASSES
        self.palette = tuple(voc_palette()[: len(SYNTH_CLASSES)])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        index = self.indices[i]
        rendered = render(index, self.config)
        jpg, _ = encode(rendered)
        with Image.open(io.BytesIO(jpg)) as img:
            image = np.asarray(img.convert("RGB"))
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            label=torch.from_numpy(rendered.label.astype(np.int64)),
            name=_NAME.format(index),
        )
