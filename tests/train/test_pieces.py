"""The loop's pure parts: the poly schedule, the deterministic sample stream and its sharding, the base
augmentation, the curve picture, resume compatibility, device resolution."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from refine_cli.config import BaseAugmentConfig, RefinerTrainConfig
from refine_cli.device import describe, resolve_device
from refine_cli.errors import DeviceError
from refine_cli.train.base import mean_colour, scale_crop_flip
from refine_cli.train.curve import draw_curve
from refine_cli.train.order import StreamSampler, epoch_permutation
from refine_cli.train.schedule import poly_lr
from refine_cli.train.state import config_changes
from refine_cli.train.working import band_pixels, refiner_loss
from refine_cli.transforms import CAFFE_FCN, IMAGENET, normalize


def test_poly_schedule():
    assert poly_lr(0, base_lr=1e-4, total_steps=100, power=0.5) == 1e-4
    assert poly_lr(75, base_lr=1e-4, total_steps=100, power=0.5) == pytest.approx(1e-4 * 0.5)
    assert poly_lr(99, base_lr=1.0, total_steps=100, power=0.9) == pytest.approx(0.01 ** 0.9)
    assert poly_lr(100, base_lr=1.0, total_steps=100, power=0.9) == 0.0
    assert poly_lr(150, base_lr=1.0, total_steps=100, power=0.9) == 0.0
    with pytest.raises(ValueError):
        poly_lr(0, base_lr=1.0, total_steps=0, power=1.0)


def _draws(sampler: StreamSampler) -> list[tuple[int, int]]:
    return [(d.index, d.seed) for d in sampler]


def test_stream_is_a_function_of_seed_and_step():
    whole = _draws(StreamSampler(5, seed=1, global_batch=4, start_step=0, total_steps=6))
    assert len(whole) == 24
    # every epoch is a permutation of the dataset, and epochs differ
    indices = [i for i, _ in whole]
    assert all(sorted(indices[e * 5:(e + 1) * 5]) == list(range(5)) for e in range(4))
    assert epoch_permutation(5, seed=1, epoch=0).tolist() != epoch_permutation(5, seed=1, epoch=1).tolist()
    # a resumed stream is the tail of the uninterrupted one
    assert _draws(StreamSampler(5, seed=1, global_batch=4, start_step=4, total_steps=6)) == whole[16:]
    # the seed matters, and every position has its own augmentation seed
    assert _draws(StreamSampler(5, seed=2, global_batch=4, start_step=0, total_steps=6)) != whole
    assert len({s for _, s in whole}) == len(whole)


def test_ranks_split_every_step_between_them():
    whole = _draws(StreamSampler(7, seed=0, global_batch=4, start_step=2, total_steps=5))
    shards = [_draws(StreamSampler(7, seed=0, global_batch=4, start_step=2, total_steps=5, rank=r, world_size=2))
              for r in range(2)]
    for step in range(3):
        assert shards[0][2 * step:2 * step + 2] + shards[1][2 * step:2 * step + 2] == whole[4 * step:4 * step + 4]
    with pytest.raises(ValueError, match="multiple"):
        StreamSampler(7, seed=0, global_batch=3, start_step=0, total_steps=1, world_size=2)


def test_scale_crop_flip_keeps_pixels_and_labels_together():
    image = torch.arange(3 * 20 * 30, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 20, 30)
    label = torch.arange(20 * 30).view(20, 30) + 300  # unique values (none 255): a crop tells where it came from
    aug = BaseAugmentConfig(crop_size=16, scale_min=1.0, scale_max=1.0, flip=True)
    for seed in range(6):
        img, lab = scale_crop_flip(image, label, rng=torch.Generator().manual_seed(seed), augment=aug)
        assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and lab.shape == (16, 16)
        # at scale 1 a crop (maybe mirrored) is a window of the input
        match = [(t, l, f) for t in range(5) for l in range(15) for f in (False, True)
                 if torch.equal((label[t:t + 16, l:l + 16].flip(-1) if f else label[t:t + 16, l:l + 16]), lab)]
        assert len(match) == 1
        t, l, f = match[0]
        window = image[:, t:t + 16, l:l + 16]
        assert torch.equal(window.flip(-1) if f else window, img)
    # a small image is padded: label 255, image the colour the network sees as zero
    fill = mean_colour(CAFFE_FCN)
    big = BaseAugmentConfig(crop_size=40, scale_min=1.0, scale_max=1.0, flip=False)
    img, lab = scale_crop_flip(image, label, rng=torch.Generator().manual_seed(0), augment=big, fill=fill)
    assert (lab == 255).sum() == 40 * 40 - 20 * 30 and torch.equal(lab[:20, :30], label)
    padded = img[:, 30:, 35:].float()[None] / 255
    assert normalize(padded, CAFFE_FCN).abs().max() < 1.0  # within one 0..255 step of the mean
    assert mean_colour(IMAGENET) == (124, 116, 104)


def test_rescale_changes_the_field_of_view():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[:, 32:] = 1
    aug = BaseAugmentConfig(crop_size=64, scale_min=0.5, scale_max=0.5, flip=False)
    _, lab = scale_crop_flip(image, label, rng=torch.Generator().manual_seed(0), augment=aug)
    assert (lab != 255).sum() == 32 * 32 and set(lab[lab != 255].unique().tolist()) == {0, 1}


def test_curve_is_a_png_with_a_panel_per_series(tmp_path: Path):
    records = [{"kind": "train", "step": s, "loss": 2.0 / s, "lr": 1e-3 * (1 - s / 50) ** 0.9} for s in range(1, 50)]
    path = draw_curve(records, tmp_path / "a.png")
    with Image.open(path) as img:
        assert img.format == "PNG"
        two = img.size
    records.append({"kind": "val", "step": 25, "miou": 0.4, "base_miou": math.nan})
    with Image.open(draw_curve(records, tmp_path / "b.png")) as img:
        assert img.size[0] == two[0] and img.size[1] > two[1]  # a third panel for mIoU
    assert draw_curve([], tmp_path / "c.png") is None and not (tmp_path / "c.png").exists()


def test_resume_compatibility_ignores_runtime_settings_only():
    from dataclasses import asdict, replace

    a = RefinerTrainConfig()
    b = replace(a, loop=replace(a.loop, device="cuda", workers=8, log_every=1), probs="live")
    assert config_changes(asdict(a), asdict(b)) == []
    c = replace(a, crop=replace(a.crop, size=64), arch_args={"hidden": 8})
    assert config_changes(asdict(a), asdict(c)) == ["arch_args: {} -> {'hidden': 8}", "crop.size: 128 -> 64"]


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert describe(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:0", "cuda:3"):
            with pytest.raises(DeviceError, match="no CUDA GPU"):
                resolve_device(spec)


def test_band_pixels_lie_within_the_band_of_the_coarse_boundary():
    coarse = torch.zeros(1, 2, 6, 20)
    coarse[:, 0, :, :10] = 1  # class 0 on the left, class 1 from column 10
    coarse[:, 1, :, 10:] = 1
    near = band_pixels(coarse, 3)[0]
    assert near[:, 7:14].all() and not near[:, :7].any() and not near[:, 14:].any()  # change marked on column 10
    assert not band_pixels(coarse[:, :, :, :10], 3).any()  # one class: no boundary


def test_refiner_loss_counts_the_band_and_clips():
    labels = torch.zeros(1, 6, 20, dtype=torch.long)
    labels[..., 10:] = 1
    coarse = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    labels[0, 0, 0] = 255  # ignored
    logits = torch.zeros(1, 2, 6, 20)
    logits[:, 1, :, :2] = 20.0  # confidently wrong far from the boundary: loss about 20 a pixel
    total, count = refiner_loss(logits, labels, coarse)
    assert count == 6 * 20 - 1 and total > 11 * 20  # every labelled pixel, unclipped
    total, count = refiner_loss(logits, labels, coarse, clip=3.0)
    assert count == 6 * 20 - 1 and 11 * 3 - 1e-4 <= total - (count - 11) * math.log(2) <= 11 * 3 + 1e-4
    total, count = refiner_loss(logits, labels, coarse, band=3)
    assert count == 6 * 7 and total == pytest.approx(count * math.log(2))  # the wrong pixels lie outside the band
