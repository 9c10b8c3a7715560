"""The README's picture, made by refine-cli itself: image | coarse | refined for examples/ with the bundled refiner:
photographs through the default base segmenter (ESPNetv2, VOC classes), CamVid street scenes through ESPNet-CamVid,
and photographs through their GrabCut-made coarse masks.

    .venv/bin/python examples/make_figure.py [--out docs/examples.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from refine_cli import Refiner, io
from refine_cli.labels import boundary_map

HERE = Path(__file__).resolve().parent
PHOTOS = ("astronaut.jpg", "coffee.jpg")
STREETS = ("0016E5_07959.jpg", "0016E5_08159.jpg")
MASKED = ("rocket.jpg", "camera.jpg")
TILE = 200
ALPHA = 0.55


def panel(image: np.ndarray, labels: np.ndarray | None, palette: list[tuple[int, int, int]]) -> Image.Image:
    """The image, or the image under its colour mask with class boundaries in white, scaled to TILE high."""
    if labels is None:
        out = image
    else:
        colour = io.colorize(labels, palette).astype(np.float32)
        out = ((1 - ALPHA) * image + ALPHA * colour).astype(np.uint8)
        out[boundary_map(labels)] = 255
    tile = Image.fromarray(out)
    return tile.resize((round(tile.width * TILE / tile.height), TILE), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "examples.png")
    args = parser.parse_args()
    voc, streets = Refiner(device="cpu"), Refiner(base="espnet_camvid", device="cpu")
    masks_only = Refiner(base=None, device="cpu")
    rows = [(voc.refine(HERE / "photos" / name), voc.palette) for name in PHOTOS]
    rows += [(streets.refine(HERE / "camvid" / name), streets.palette) for name in STREETS]
    for name in MASKED:
        result = masks_only.refine(HERE / "photos" / name, mask=HERE / "photos_masks" / f"{Path(name).stem}.png")
        rows.append((result, masks_only.palette))
    tiles = [[panel(r.image, None, p), panel(r.image, r.coarse, p), panel(r.image, r.labels, p)] for r, p in rows]
    widths = [max(row[c].width for row in tiles) for c in range(3)]
    header = 24
    sheet = Image.new("RGB", (sum(widths) + 4 * 2, header + len(tiles) * (TILE + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    x = 2
    for title, w in zip(("image", "coarse", "refined"), widths):
        draw.text((x + w // 2 - 3 * len(title), 6), title, fill="black")
        x += w + 2
    for i, row in enumerate(tiles):
        x = 2
        for c, tile in enumerate(row):
            sheet.paste(tile, (x, header + i * (TILE + 2)))
            x += widths[c] + 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write(args.out, lambda f: sheet.save(f, format="PNG"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
