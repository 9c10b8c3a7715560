"""`RUN_DIR/curve.png`: the training curve drawn with Pillow from `metrics.jsonl` records: loss and learning
rate against the step, and validation mIoU (refined and, for a refiner, the base network's) when there is any."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from refine_cli.io import atomic_path

_WIDTH, _PANEL_H = 960, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 24, 28, 30
_TICKS = 5
_BG, _AXIS, _GRID, _TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (20, 20, 20)
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))

Series = tuple[str, list[tuple[float, float]]]


def _series(records: Sequence[Mapping[str, Any]], kind: str, key: str) -> list[tuple[float, float]]:
    points = []
    for r in records:
        value = r.get(key)
        if r.get("kind", "train") == kind and isinstance(value, (int, float)) and math.isfinite(value):
            points.append((float(r["step"]), float(value)))
    return points


def _label(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str, series: Sequence[Series],
           x_range: tuple[float, float], font: ImageFont.ImageFont) -> None:
    x0, x1 = _LEFT, _WIDTH - _RIGHT
    y0, y1 = top + _TOP, top + _PANEL_H - _BOTTOM
    values = [v for _, pts in series for _, v in pts]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xa, xb = x_range
    if xb <= xa:
        xa, xb = xa - 1, xb + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - xa) / (xb - xa) * (x1 - x0), y1 - (y - lo) / (hi - lo) * (y1 - y0)

    for i in range(_TICKS):
        frac = i / (_TICKS - 1)
        y = y1 - frac * (y1 - y0)
        draw.line([(x0, y), (x1, y)], fill=_GRID)
        draw.text((x0 - 6, y), _label(lo + frac * (hi - lo)), fill=_TEXT, font=font, anchor="rm")
        x = x0 + frac * (x1 - x0)
        draw.line([(x, y0), (x, y1)], fill=_GRID)
        draw.text((x, y1 + 6), str(round(xa + frac * (xb - xa))), fill=_TEXT, font=font, anchor="ma")
    draw.rectangle([x0, y0, x1, y1], outline=_AXIS)
    draw.text((x0, top + 8), title, fill=_TEXT, font=font)
    legend_x = x1
    for (name, pts), colour in zip(reversed(series), reversed(_COLOURS[: len(series)])):
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy if len(xy) <= 50 else ():
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        if len(series) > 1:
            draw.text((legend_x, top + 8), name, fill=colour, font=font, anchor="ra")
            legend_x -= draw.textlength(name, font=font) + 16


def draw_curve(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Write the curve of `records` (see `metrics_log`) to `path` atomically; None when there is nothing to draw."""
    loss = _series(records, "train", "loss")
    lr = _series(records, "train", "lr")
    panels: list[tuple[str, list[Series]]] = []
    if loss:
        panels.append(("training loss", [("loss", loss)]))
    if lr:
        panels.append(("learning rate", [("lr", lr)]))
    val = [(name, pts) for name, key in (("refined", "miou"), ("base", "base_miou"))
           if (pts := _series(records, "val", key))]
    if val:
        if len(val) == 1:
            val = [("mIoU", val[0][1])]
        panels.append(("validation mIoU", val))
    if not panels:
        return None
    steps = [x for _, series in panels for _, pts in series for x, _ in pts]
    x_range = (min(0.0, min(steps)), max(steps))
    image = Image.new("RGB", (_WIDTH, _PANEL_H * len(panels)), _BG)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i, (title, series) in enumerate(panels):
        _panel(draw, i * _PANEL_H, title, series, x_range, font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
