"""One image of the synthetic world from its random stream: a backdrop, objects and clutter composited in depth order
with shadows, then illumination, blur and noise; the label is the class covering most of each pixel."""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from refine_cli.config import SynthConfig
from refine_cli.data.synth.appearance import class_tint, desaturate, texture_patch
from refine_cli.data.synth.shapes import SYNTH_CLASSES, Shape, distractor_shape, object_shape, rasterise, split_shape

# Entropy tags keep the split draw and the per-image draws apart for one seed.
SPLIT_STREAM, IMAGE_STREAM = 0, 1
_MIN_OBJECT_FRACTION, _ATTEMPTS = 0.003, 8


class Rendered(NamedTuple):
    """One image of the world before encoding: (H, W, 3) uint8 RGB, (H, W) uint8 labels, its JPEG quality."""

    image: np.ndarray
    label: np.ndarray
    jpeg_quality: int


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
        rendered = _render_once(np.random.default_rng([config.seed, IMAGE_STREAM, index, attempt]), config)
        if np.count_nonzero(rendered.label) >= _MIN_OBJECT_FRACTION * rendered.label.size:
            break
    return rendered


def _render_once(rng: np.random.Generator, config: SynthConfig) -> Rendered:
    h, w = config.height, config.width
    short = min(h, w)
    lo, hi = -config.border_margin, 1.0 + config.border_margin
    canvas = _Canvas(h, w, len(SYNTH_CLASSES))
    full = (0, 0, h, w)
    canvas.paint(np.ones((h, w), np.float32), full, desaturate(texture_patch(rng, full, config), rng, config), 0)
    if rng.random() < config.split_background_p:
        _draw(canvas, split_shape(rng, h, w), 0, rng, config, shadow=False, tint=0)

    layers = [("object", int(rng.integers(1, len(SYNTH_CLASSES)))) for _ in range(int(rng.integers(
        config.objects[0], config.objects[1] + 1)))]
    layers += [("distractor", 0)] * int(rng.integers(config.distractors[0], config.distractors[1] + 1))
    for i in rng.permutation(len(layers)):  # depth order: later layers occlude earlier ones
        kind, cls = layers[i]
        cx, cy = rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h
        r = short * math.exp(rng.uniform(math.log(config.radius[0]), math.log(config.radius[1])))
        shape = (object_shape(cls, rng, cx, cy, r, config, short) if kind == "object"
                 else distractor_shape(rng, cx, cy, r))
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


def _draw(canvas: _Canvas, shape: Shape, cls: int, rng: np.random.Generator, cfg: SynthConfig, *,
          shadow: bool, tint: int | None = None) -> None:
    h, w = canvas.image.shape[:2]
    raster = rasterise(shape, h, w, cfg.supersample)
    if raster is None:
        return
    alpha, box = raster
    if shadow:
        canvas.shadow(rng, alpha, box)
    patch = texture_patch(rng, box, cfg)
    if tint is not None:
        patch = class_tint(patch, tint, rng, cfg)
    canvas.paint(alpha, box, patch, cls)
