"""Rebuild examples/: public-domain / CC0 photographs from scikit-image with coarse masks made by an external method
(OpenCV GrabCut from a hand-placed box, then coarsened to 1/8 resolution as a stride-8 segmenter would give), and a
few images of the synthetic world. Needs the dev extra (scikit-image):

    .venv/bin/python examples/make_examples.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

from refine_cli import io
from refine_cli.labels import voc_palette

HERE = Path(__file__).resolve().parent
# name -> (scikit-image loader, one box per object class (x0, y0, x1, y1) in pixels, mask format)
PHOTOS = {
    # Eileen Collins, NASA (public domain): the astronaut (class 1) and the shuttle model (class 2).
    "astronaut": (data.astronaut, [(20, 10, 360, 512), (345, 0, 460, 290)], "palette"),
    # The cameraman (CC0): the man (class 1) and the camera on its tripod (class 2). A greyscale JPEG.
    "camera": (data.camera, [(0, 60, 335, 512), (235, 130, 400, 512)], "palette"),
    # SpaceX launch pad (public domain): a thin rocket, as a binary 0/255 mask.
    "rocket": (data.rocket, [(290, 120, 355, 415)], "binary"),
    # Coffee cup by Rachel Michetti (CC0): cup and saucer, as a binary 0/255 mask.
    "coffee": (data.coffee, [(70, 10, 490, 395)], "binary"),
}
COARSE_STRIDE = 8
SYNTH_SEED, SYNTH_COUNT = 2027, 6


def grabcut(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Foreground of one box: OpenCV GrabCut, 5 iterations, initialised from the rectangle."""
    mask = np.zeros(rgb.shape[:2], np.uint8)
    x0, y0, x1, y1 = box
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, 5,
                cv2.GC_INIT_WITH_RECT)
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


def coarsen(labels: np.ndarray, num_classes: int, stride: int = COARSE_STRIDE) -> np.ndarray:
    """What a stride-8 segmenter would give: class fractions averaged over stride x stride cells, bilinearly
    upsampled back, argmax. Blobby edges, thin parts lost."""
    h, w = labels.shape
    onehot = np.stack([(labels == k).astype(np.float32) for k in range(num_classes)], axis=-1)
    small = cv2.resize(onehot, (max(1, w // stride), max(1, h // stride)), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return big.reshape(h, w, num_classes).argmax(-1).astype(np.uint8)


def make_photos() -> None:
    photos, masks = HERE / "photos", HERE / "photos_masks"
    for folder in (photos, masks):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    for name, (load, boxes, kind) in PHOTOS.items():
        image = load()
        rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        Image.fromarray(image).save(photos / f"{name}.jpg", quality=92)
        labels = np.zeros(rgb.shape[:2], np.uint8)
        for k, box in enumerate(boxes, start=1):
            labels[grabcut(rgb, box)] = k  # a later box wins where two overlap
        coarse = coarsen(labels, len(boxes) + 1)
        if kind == "binary":
            Image.fromarray((coarse > 0).astype(np.uint8) * 255, mode="L").save(masks / f"{name}.png")
        else:
            io.write_mask(masks / f"{name}.png", coarse, voc_palette(256))
        print(f"{name}: {rgb.shape[1]}x{rgb.shape[0]}, {len(boxes)} object class(es), {kind} mask")


def make_synth() -> None:
    out = HERE / "synth"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "refine_cli", "data", "synth", tmp, "--n", str(SYNTH_COUNT),
                        "--seed", str(SYNTH_SEED), "--val-fraction", "0"], check=True)
        for jpg in sorted(Path(tmp, "JPEGImages").glob("*.jpg")):
            shutil.copy(jpg, out / jpg.name)
    print(f"synth: {SYNTH_COUNT} images, seed {SYNTH_SEED}")


if __name__ == "__main__":
    make_photos()
    make_synth()
