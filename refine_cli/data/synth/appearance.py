"""The surfaces of the synthetic world: the bundled photographs, crops of them scaled, rotated, recoloured and shaded,
and the colour cast of a class or the dullness of a backdrop."""

from __future__ import annotations

import io
import math
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from refine_cli.config import SynthConfig
from refine_cli.data.synth.shapes import SYNTH_CLASSES
from refine_cli.errors import DataError


class Texture(NamedTuple):
    name: str
    pixels: np.ndarray  # (H, W, 3) float32, 0..255
    grey: bool


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


def texture_patch(rng: np.random.Generator, box: tuple[int, int, int, int], cfg: SynthConfig) -> np.ndarray:
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


def class_tint(patch: np.ndarray, cls: int, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Pull a surface's colour toward its class hue by a random share in `cfg.class_tint`, keeping the texture's
    brightness detail: like real object classes, a colour tendency, never a rule (clutter gets one too).
    Class 0 (background surfaces) is desaturated instead."""
    if cls == 0:  # background surfaces: duller, as a backdrop usually is next to the things in front of it
        return desaturate(patch, rng, cfg)
    strength = rng.uniform(*cfg.class_tint)
    hue = (cls - 1) / (len(SYNTH_CLASSES) - 1) + rng.normal(0.0, 0.03)
    rgb = np.array(_hue_rgb(hue), np.float32)
    luma = patch @ np.array([0.299, 0.587, 0.114], np.float32)
    return (1.0 - strength) * patch + strength * luma[..., None] * (rgb / rgb.mean())


def desaturate(patch: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
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
