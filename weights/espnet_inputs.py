"""Which input the released ESPNet-CamVid file wants: the imported network scored on CamVid val under its stored
preprocessing and under the alternatives one could read from the source, so the choice rests on measurement.

    .venv/bin/python weights/espnet_inputs.py --real ../shared/real [--every 1]

Variants: the stored one (BGR; (x - mean) / std on 0..255, then / 255; statistics estimated on CamVid train with the
source's own procedure); the statistics given in shared/real/README.md; RGB order; without the final / 255; and
the Cityscapes statistics of the source's test script (test/VisualizeResults.py).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from refine_cli import weights
from refine_cli.data import open_dataset
from refine_cli.evaluation import BASE, evaluate
from refine_cli.pipeline import Refiner
from refine_cli.transforms import Preprocess
from refine_cli.weights.importers import CAMVID_BGR_MEAN, CAMVID_BGR_STD, ESPNET_CAMVID

SHARED_README_MEAN, SHARED_README_STD = (111.0, 109.2, 106.0), (71.7, 72.3, 69.7)
CITYSCAPES_MEAN = (72.3923111, 82.90893555, 73.15840149)  # sacmehta/ESPNet test/VisualizeResults.py, BGR
CITYSCAPES_STD = (45.3192215, 46.15289307, 44.91483307)


def source_form(mean: tuple[float, ...], std: tuple[float, ...], *, order: str = "BGR", div255: bool = True
                ) -> Preprocess:
    """The source's (x - mean) / std on 0..255 [then / 255] as a `Preprocess` on [0, 1] input."""
    if div255:
        return replace(ESPNET_CAMVID, color_order=order, mean=tuple(m / 255 for m in mean), std=tuple(std))
    return replace(ESPNET_CAMVID, color_order=order, scale=255.0, mean=tuple(mean), std=tuple(std))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1, help="score val[::every]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "stored: BGR, CamVid train statistics, / 255": ESPNET_CAMVID,
        "BGR, shared/real README statistics, / 255": source_form(SHARED_README_MEAN, SHARED_README_STD),
        "RGB order": source_form(CAMVID_BGR_MEAN[::-1], CAMVID_BGR_STD[::-1], order="RGB"),
        "without the final / 255": source_form(CAMVID_BGR_MEAN, CAMVID_BGR_STD, div255=False),
        "Cityscapes statistics (source's test script)": source_form(CITYSCAPES_MEAN, CITYSCAPES_STD),
    }
    ckpt = weights.import_checkpoint(args.real / "weights" / "espnet_p_2_q_8_camvid.pth", source="espnet",
                                     save=False)
    data = open_dataset(args.real / "camvid", format="camvid", split="val")
    print(f"| CamVid val[::{args.every}], 11 classes | mIoU | pixel acc. |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        model = Refiner(base=weights.save_checkpoint(Path(tmp) / "espnet.pt", ckpt), refiner=None, device="cpu",
                        batch_size=1)
        base = model.engine.base
        for label, pre in variants.items():
            model.engine.base = replace(base, meta=replace(base.meta, preprocess=pre))
            row = evaluate((data[i] for i in range(0, len(data), args.every)), model, num_classes=11).row(BASE)
            print(f"| {label} | {100 * row.miou:.2f} | {100 * row.pixel_accuracy:.2f} |", flush=True)


if __name__ == "__main__":
    main()
