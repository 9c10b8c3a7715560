"""Joint affine and label-aware crops: labels never interpolated, ignore fill, probabilities stay
distributions, image and label stay aligned, determinism, the redraw rule."""

from __future__ import annotations

import math

import torch

from refine_cli.config import CropConfig
from refine_cli.data.augment import joint_affine, random_crop_with_labels, refiner_crops


def _blocks(h: int = 48, w: int = 64, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A label of 8x8 blocks of random classes, an image whose every channel is label * 40, one-hot probs."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, classes, (h // 8, w // 8), generator=g)
    label = coarse.repeat_interleave(8, 0).repeat_interleave(8, 1)
    image = (label * 40).to(torch.uint8).expand(3, h, w).clone()
    probs = torch.nn.functional.one_hot(label, classes).permute(2, 0, 1).float()
    return image, label, probs


def test_affine_keeps_label_values_and_fills_ignore():
    image, label, probs = _blocks()
    out = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(3), rotation_deg=15, scale=0.1,
                       shift_fraction=0.5)
    assert out.label.dtype == label.dtype and out.label.shape == label.shape
    assert set(out.label.unique().tolist()) <= set(label.unique().tolist()) | {255}
    assert out.image.dtype == torch.uint8 and out.probs.dtype == torch.float32


def test_outside_the_source_is_ignore_fill_and_uniform_probs():
    image, label, probs = _blocks()
    outside_pixels = 0
    for seed in range(4):
        out = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(seed), shift_fraction=0.5,
                           image_fill=7)
        # pixels whose whole 3x3 neighbourhood maps outside the source: no bilinear blend with the inside
        padded = torch.nn.functional.pad((out.label == 255)[None, None].float(), (1, 1, 1, 1), value=1.0)
        outside = torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0] == -1
        outside_pixels += int(outside.sum())
        assert torch.all(out.image[:, outside] == 7)
        assert torch.allclose(out.probs[:, outside], torch.full_like(out.probs[:, outside], 1 / probs.shape[0]))
        background = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(seed), shift_fraction=0.5,
                                  probs_fill="background")
        assert torch.all(background.probs[0, outside] == 1) and torch.all(background.probs[1:, outside] == 0)
    assert outside_pixels > 100  # half-side shifts do move the image partly out of view


def test_zero_ranges_are_the_identity():
    image, label, probs = _blocks()
    out = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(1), rotation_deg=0, scale=0,
                       shift_fraction=0)
    assert torch.equal(out.image, image) and torch.equal(out.label, label)
    assert torch.allclose(out.probs, probs, atol=1e-6)


def test_image_label_and_probs_stay_aligned():
    image, label, probs = _blocks()
    for seed in range(5):
        out = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(seed), rotation_deg=15,
                           scale=0.1, shift_fraction=0.2)
        # away from block edges (3x3 neighbourhood of one label) bilinear image and probs agree with the label
        padded = torch.nn.functional.pad(out.label[None, None].float(), (1, 1, 1, 1), value=255.0)
        patches = torch.nn.functional.unfold(padded, 3)[0]
        flat = (patches == patches[4]).all(0).reshape(label.shape) & (out.label != 255)
        assert flat.sum() > 200
        assert torch.all((out.image[0][flat].float() - out.label[flat].float() * 40).abs() <= 1)
        picked = out.probs.argmax(0)[flat]
        assert torch.equal(picked, out.label[flat])
        sums = out.probs.sum(0)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_points_move_as_the_drawn_parameters_say():
    label = torch.zeros(64, 80, dtype=torch.int64)
    label[10:14, 50:54] = 1  # a 4x4 mark centred at (x, y) = (52, 12)
    image = torch.zeros(3, 64, 80)
    for seed in range(4):
        out = joint_affine(image, label, rng=torch.Generator().manual_seed(seed), rotation_deg=40, scale=0.2,
                           shift_fraction=0.1)
        angle, scale, sx, sy = out.params
        assert abs(angle) <= 40 and abs(scale - 1) <= 0.2 and max(abs(sx), abs(sy)) <= 8
        a = math.radians(angle)
        dx, dy = 52 - 40, 12 - 32
        expected_x = scale * (math.cos(a) * dx - math.sin(a) * dy) + 40 + sx
        expected_y = scale * (math.sin(a) * dx + math.cos(a) * dy) + 32 + sy
        ys, xs = torch.nonzero(out.label == 1, as_tuple=True)
        assert abs(xs.float().mean() + 0.5 - expected_x) < 0.6 and abs(ys.float().mean() + 0.5 - expected_y) < 0.6
        assert abs(len(xs) - 16 * scale * scale) <= 6  # a rotation and scale: the mark keeps its area


def test_affine_is_deterministic_for_a_seed():
    image, label, probs = _blocks()
    a = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(11))
    b = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(11))
    c = joint_affine(image, label, probs, rng=torch.Generator().manual_seed(12))
    assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label) and torch.equal(a.probs, b.probs)
    assert not torch.equal(a.label, c.label)


def test_crop_redraws_until_two_labels():
    label = torch.zeros(100, 100, dtype=torch.int64)
    label[90:, 90:] = 3  # only crops reaching the bottom-right corner hold two labels
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    tries_seen = set()
    for seed in range(20):
        crop = random_crop_with_labels(image, label, rng=torch.Generator().manual_seed(seed), size=32,
                                       min_labels=2, max_tries=10)
        tries_seen.add(crop.tries)
        count = len(set(crop.label.unique().tolist()) - {255})
        assert torch.equal(crop.label, label[crop.top : crop.top + 32, crop.left : crop.left + 32])
        # either it found two labels, or it used every try and none had them
        assert count >= 2 or crop.tries == 10
        if count >= 2:
            assert crop.top + 32 > 90 and crop.left + 32 > 90
    assert max(tries_seen) > 1  # the redraw happened


def test_crop_without_a_qualifying_window_uses_all_tries():
    label = torch.zeros(64, 64, dtype=torch.int64)
    crop = random_crop_with_labels(torch.zeros(3, 64, 64), label, rng=torch.Generator().manual_seed(0), size=16,
                                   min_labels=2, max_tries=7)
    assert crop.tries == 7 and crop.label.shape == (16, 16)


def test_small_input_is_padded_with_ignore():
    image, label, probs = _blocks(h=24, w=40)
    crop = random_crop_with_labels(image, label, probs, rng=torch.Generator().manual_seed(0), size=32)
    assert crop.image.shape == (3, 32, 32) and crop.label.shape == (32, 32) and crop.probs.shape == (5, 32, 32)
    assert torch.all(crop.label[24:] == 255) and torch.all(crop.image[:, 24:] == 0)
    assert torch.allclose(crop.probs[:, 24:], torch.full((5, 8, 32), 0.2))
    assert torch.equal(crop.label[:24], label[:24, crop.left : crop.left + 32])


def test_refiner_crops_make_a_batch():
    image, label, probs = _blocks(h=64, w=80)
    batch = refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(0),
                          crop=CropConfig(size=32, crops_per_image=4))
    assert batch.images.shape == (4, 3, 32, 32) and batch.labels.shape == (4, 32, 32)
    assert batch.probs.shape == (4, 5, 32, 32)
    again = refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(0),
                          crop=CropConfig(size=32, crops_per_image=4))
    assert torch.equal(batch.images, again.images) and torch.equal(batch.labels, again.labels)


def test_hard_probs_turn_that_share_of_crops_one_hot():
    from refine_cli.config import AugmentConfig

    gen = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, 3, (64, 64), generator=gen)
    probs = torch.softmax(torch.randn(3, 64, 64, generator=gen), 0)
    crop = CropConfig(size=32, crops_per_image=40, min_labels=1)

    def crops(p: float):
        aug = AugmentConfig(rotation_deg=0, scale=0, shift_fraction=0, hard_probs_p=p)
        return refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(0), augment=aug, crop=crop)

    soft, half, hard = crops(0.0), crops(0.5), crops(1.0)
    is_onehot = lambda p: ((p == 0) | (p == 1)).flatten(1).all(1)  # noqa: E731
    assert not is_onehot(soft.probs).any()
    assert is_onehot(hard.probs).all()
    torch.testing.assert_close(hard.probs.argmax(1), soft.probs.argmax(1))  # the argmax is kept
    assert 5 < int(is_onehot(half.probs).sum()) < 35


def test_probs_temperature_retempers_each_crop_and_keeps_its_argmax():
    from refine_cli.config import AugmentConfig

    gen = torch.Generator().manual_seed(4)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, 3, (64, 64), generator=gen)
    probs = torch.softmax(torch.randn(3, 64, 64, generator=gen) * 2, 0)
    crop = CropConfig(size=32, crops_per_image=40, min_labels=1)

    def crops(t: float):
        aug = AugmentConfig(rotation_deg=0, scale=0, shift_fraction=0, probs_temperature=t)
        return refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(0), augment=aug, crop=crop)

    plain, tempered = crops(1.0), crops(4.0)
    torch.testing.assert_close(tempered.probs.sum(1), torch.ones(40, 32, 32))
    torch.testing.assert_close(tempered.probs.argmax(1), plain.probs.argmax(1))
    # Each crop gets one temperature t in [1/4, 4]: log p / t is log p scaled, up to a per-pixel constant.
    logs = tempered.probs.log() - tempered.probs.log().mean(1, keepdim=True)
    ref = plain.probs.log() - plain.probs.log().mean(1, keepdim=True)
    ratio = (logs.flatten(1) * ref.flatten(1)).sum(1) / (ref.flatten(1) ** 2).sum(1)  # 1 / t, least squares
    assert ((ratio > 0.25 - 1e-3) & (ratio < 4 + 1e-3)).all()
    assert (ratio < 0.8).any() and (ratio > 1.25).any()  # both sharper and flatter crops
    torch.testing.assert_close(logs, ref * ratio[:, None, None, None], atol=1e-4, rtol=1e-4)


def test_coarsen_probs_smooths_and_keeps_distributions():
    from refine_cli.data.augment import coarsen_probs

    _, _, probs = _blocks(48, 64)
    torch.testing.assert_close(coarsen_probs(probs, 1.2), probs)  # below 1.5: unchanged
    out = coarsen_probs(probs, 4.0)
    assert out.shape == probs.shape
    torch.testing.assert_close(out.sum(0), torch.ones(48, 64))
    assert out.min() >= 0
    soft = ((out > 1e-6) & (out < 1 - 1e-6)).any(0).float().mean()  # pixels no longer one-hot: the blocks' edges
    assert soft > 0.3
    interior = probs[:, 3::8, 3::8]  # block centres sit 3-4 px from any edge: a 4x smoothing keeps most of them
    assert (out[:, 3::8, 3::8].argmax(0) == interior.argmax(0)).float().mean() > 0.6


def test_probs_coarsen_smooths_each_crop_by_its_own_factor():
    from refine_cli.config import AugmentConfig

    image, label, probs = _blocks(64, 64)
    crop = CropConfig(size=32, crops_per_image=40, min_labels=1)

    def crops(s: float):
        aug = AugmentConfig(rotation_deg=0, scale=0, shift_fraction=0, probs_coarsen=s)
        return refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(0), augment=aug, crop=crop)

    plain, coarse = crops(1.0), crops(6.0)
    torch.testing.assert_close(plain.labels, coarse.labels)  # labels and images untouched
    torch.testing.assert_close(coarse.probs.sum(1), torch.ones(40, 32, 32))
    blur = (coarse.probs - plain.probs).abs().flatten(1).mean(1)  # how far each crop moved from the one-hot maps
    assert (blur < 1e-6).any() and (blur > 0.05).any()  # factors below 1.5 leave a crop alone; large ones smooth


def _disc_and_square(size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - 16) ** 2 + (xx - 16) ** 2) < 64).float()
    square = ((yy < 6) & (xx < 6)).float()
    return torch.stack([1 - disc - square, disc, square]) * 0.97 + 0.01


def test_displace_probs_grows_and_shrinks_one_class_and_leaves_the_others():
    from refine_cli.data.augment import displace_probs

    probs = _disc_and_square()
    disc, square = probs.argmax(0) == 1, probs.argmax(0) == 2
    torch.testing.assert_close(displace_probs(probs, torch.tensor([0, 0, 0])), probs)
    for r in (-3, -1, 1, 3):
        out = displace_probs(probs, torch.tensor([0, r, 0]))
        torch.testing.assert_close(out.sum(0), torch.ones(32, 32))
        assert out.min() > 0
        moved = out.argmax(0) == 1
        if r > 0:  # grown: a superset, by about the ring of width r around the disc (radius 8 -> 8 + r)
            assert bool((moved & disc).eq(disc).all()) and moved.sum() > disc.sum()
            assert abs(moved.sum().item() - math.pi * (8 + r) ** 2) < 0.25 * math.pi * (8 + r) ** 2
        else:  # shrunk: a subset, the background takes the ring it gave up
            assert bool((moved & disc).eq(moved).all()) and moved.sum() < disc.sum()
            assert bool((out.argmax(0) == 0)[disc & ~moved].all())
        assert bool((out.argmax(0) == 2).eq(square).all())  # the square is far from the disc: untouched


def test_probs_displace_moves_each_crops_classes_by_their_own_radius():
    from refine_cli.config import AugmentConfig

    image, label, probs = _blocks(64, 64)
    crop = CropConfig(size=32, crops_per_image=40, min_labels=1)

    def crops(radius: int):
        aug = AugmentConfig(rotation_deg=0, scale=0, shift_fraction=0, probs_displace=radius)
        return refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(0), augment=aug, crop=crop)

    plain, moved = crops(0), crops(3)
    torch.testing.assert_close(plain.labels, moved.labels)  # labels and images untouched
    torch.testing.assert_close(plain.images, moved.images)
    torch.testing.assert_close(moved.probs.sum(1), torch.ones(40, 32, 32))
    changed = (moved.probs.argmax(1) != plain.probs.argmax(1)).flatten(1).float().mean(1)
    assert (changed > 0.02).float().mean() > 0.5  # most crops have some boundary moved
