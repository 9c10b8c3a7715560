"""The Python API in a few lines: refine one image in memory, then a folder of files, with the bundled networks.

    .venv/bin/python examples/refine_api.py
"""

from pathlib import Path

import numpy as np

from refine_cli import Refiner, io
from refine_cli.pipeline import Failure

HERE = Path(__file__).resolve().parent

# The bundled base segmenter + universal refiner, on the GPU when there is one.
refiner = Refiner(device="auto")
image = io.read_image(HERE / "synth" / "synth_000000.jpg")
result = refiner.refine(image, return_probs=True)
print(f"{image.shape[1]}x{image.shape[0]}: coarse classes {np.unique(result.coarse).tolist()}, "
      f"refined classes {np.unique(result.labels).tolist()}, probabilities {result.probs.shape}")

# A coarse mask made elsewhere (here a binary 0/255 PNG): no base network needed.
masks_only = Refiner(base=None)
photo = HERE / "photos" / "rocket.jpg"
refined = masks_only.refine(photo, mask=HERE / "photos_masks" / "rocket.png")
changed = (refined.labels != refined.coarse).mean()
print(f"{photo.name}: the refiner changed {100 * changed:.1f}% of the pixels of the coarse mask")

# Many files: results stream back as batches finish; unreadable files come back as failures.
paths = sorted((HERE / "synth").glob("*.jpg"))
for outcome in refiner.refine_paths(paths):
    if isinstance(outcome, Failure):
        print(f"{outcome.path.name}: failed, {outcome.reason}")
    else:
        print(f"{outcome.path.name}: {len(np.unique(outcome.labels))} classes")
