"""Refiner training crops at the working resolution: scale, class selection, seeding."""

from __future__ import annotations

import torch

from refine_cli.config import WorkingCropConfig
from refine_cli.data.working_crops import keep_classes, working_crop


def test_keep_classes_keeps_the_largest_and_ignores_the_rest():
    label = torch.tensor([[0, 1, 2, 3]]).repeat(4, 1)
    probs = torch.zeros(4, 4, 4)
    for k in range(4):
        probs[k, :, k] = 1.0
    probs[1, :2, 2], probs[2, :2, 2] = 1.0, 0.0  # class 1 wins more pixels than class 2
    kept, relabelled = keep_classes(probs, label, 2)
    assert kept.shape == (2, 4, 4)
    # classes 1 (6 pixels) and 0 or 3 (4 each; the first on ties): 1 first
    assert relabelled[0, 1] == 0 and (relabelled[:, 2:] == 255).all()
    padded, _ = keep_classes(probs[:1], label.clamp(max=0), 3)
    assert padded.shape == (3, 4, 4) and padded[1:].abs().sum() == 0


def test_working_crop_scales_to_the_working_side():
    image = torch.randint(0, 256, (3, 240, 480), dtype=torch.uint8)
    label = torch.zeros(240, 480, dtype=torch.long)
    label[60:180, 100:300] = 1
    config = WorkingCropConfig(size=32, side=96, zoom=(1.0, 1.0), max_classes=3, flip=False)
    crop = working_crop(image, label, 2, rng=torch.Generator().manual_seed(0), config=config)
    assert crop.image.shape == (3, 32, 32) and crop.label.shape == (32, 32) and crop.probs.shape == (3, 32, 32)
    assert crop.image.dtype == torch.uint8
    again = working_crop(image, label, 2, rng=torch.Generator().manual_seed(0), config=config)
    assert torch.equal(crop.probs, again.probs) and torch.equal(crop.image, again.image)
    # 96 / 480 = 0.2: the 32 px crop covers 160 full-size pixels, so a 240 px tall image gives windows with
    # both labels (min_labels 2)
    assert set(crop.label.unique().tolist()) >= {0, 1}
