"""The colour-gated propagation refiner: probabilities stay probabilities, a stray boundary moves to the image's
edge, regions away from boundaries keep their class, and the pipeline runs it at full resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refine_cli import models, weights
from refine_cli.models.colour_spn import ColourPropagation, mask_alignment, mask_detail, texture_normalised
from refine_cli.ops.colour_likelihood import colour_models
from refine_cli.pipeline import Refiner


def _step_image(height: int, width: int, edge: int) -> torch.Tensor:
    """Dark left of column `edge`, light from it on, with a little noise: (1, 3, H, W) in [0, 1]."""
    image = torch.full((1, 3, height, width), 0.2)
    image[..., edge:] = 0.8
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    return (image + 0.04 * (noise - 0.5)).clamp(0, 1)


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def test_probabilities_stay_probabilities():
    image = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(1))
    coarse = torch.rand(2, 4, 20, 30, generator=torch.Generator().manual_seed(2)).softmax(1)
    log_p = ColourPropagation(spatial_sigma=10, range_sigma=0.3, iterations=2)(image, coarse)
    assert log_p.shape == coarse.shape and torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(2, 20, 30), rtol=0, atol=1e-4)


def test_a_stray_boundary_moves_to_the_image_edge():
    height, width, edge = 24, 48, 20
    image = _step_image(height, width, edge)
    labels = torch.zeros(1, height, width, dtype=torch.long)
    labels[..., edge + 3 :] = 1  # the mask's boundary 3 px right of the edge: columns 20-22 wrongly class 0
    refined = ColourPropagation(spatial_sigma=40, range_sigma=0.2, iterations=2)(image, _one_hot(labels, 2)).argmax(1)
    truth = torch.zeros_like(labels)
    truth[..., edge:] = 1
    assert (labels != truth).float().mean() > 0.06
    assert torch.equal(refined, truth)


def test_regions_without_an_edge_to_follow_are_left_alone():
    # A flat image: nothing says where the boundary belongs, so it stays where the mask puts it.
    image = torch.full((1, 3, 16, 40), 0.5)
    labels = torch.zeros(1, 16, 40, dtype=torch.long)
    labels[..., 25:] = 1
    refined = ColourPropagation(spatial_sigma=8, range_sigma=0.2, iterations=2)(image, _one_hot(labels, 2)).argmax(1)
    changed = (refined != labels)[0].any(0).nonzero().flatten()
    assert changed.numel() == 0 or (changed - 25).abs().max() <= 2
    assert torch.equal(refined[..., :20], labels[..., :20]) and torch.equal(refined[..., 30:], labels[..., 30:])


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="positive"):
        ColourPropagation(spatial_sigma=0)
    with pytest.raises(ValueError, match="iterations"):
        ColourPropagation(iterations=0)
    s = ColourPropagation(spatial_sigma=10, iterations=3).schedule()
    assert s[0] > s[1] > s[2]  # the first pass reaches furthest
    assert sum(v * v for v in s) == pytest.approx(100)


def _checkpoint(folder: Path) -> Path:
    spec = models.spec("spn_colour")
    args = models.arch_args("spn_colour", spatial_sigma=40.0, range_sigma=0.2, iterations=2)
    meta = weights.CheckpointMeta(classes=(), preprocess=spec.preprocess, provenance={"source": "test"})
    ckpt = weights.checkpoint_from_model(spec.builder(**args), arch="spn_colour", arch_args=args, meta=meta)
    return weights.save_checkpoint(folder / "colour.pt", ckpt)


def test_the_pipeline_runs_it_at_full_resolution(tmp_path: Path):
    path = _checkpoint(tmp_path)
    height, width, edge = 60, 96, 40
    image = (_step_image(height, width, edge)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[:, edge + 3 :] = 255  # a binary mask, 3 px off
    model = Refiner(base=None, refiner=str(path), device="cpu", refiner_side=32)  # a side it must not use
    result = model.refine(image, mask=mask)
    expected = np.zeros((height, width), np.int64)
    expected[:, edge:] = 1
    assert np.array_equal(np.asarray(result.labels), expected)


def test_the_pipeline_gives_it_planar_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Channels-last is on by default for convolutions; this refiner has none and reads each channel as one plane.
    # The pipeline asks it for probabilities (it gives them: no log for a softmax to undo).
    seen = []
    refine_probabilities = ColourPropagation.refine_probabilities

    def spy(self, image, coarse):
        seen.append((image.is_contiguous(), coarse.is_contiguous()))
        return refine_probabilities(self, image, coarse)

    monkeypatch.setattr(ColourPropagation, "refine_probabilities", spy)
    model = Refiner(base=None, refiner=str(_checkpoint(tmp_path)), device="cpu", channels_last=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), np.uint8)
    mask[:, 30:] = 2
    model.refine(image, mask=mask)
    assert seen == [(True, True)]


def test_the_pipelines_probabilities_are_the_softmax_of_its_logits(tmp_path: Path):
    # The pipeline asks this refiner for probabilities directly; they must be what its logits give, class for class,
    # with the released rule: a class no pixel of an image votes for gets nothing there (class 3 in image 0, only
    # image 1 votes for it; class 4 in neither, so it is never propagated), and the rest still sum to 1.
    model = Refiner(base=None, refiner=str(_checkpoint(tmp_path)), device="cpu")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 24, 40, generator=generator)
    coarse = torch.rand(2, 5, 24, 40, generator=generator)
    coarse[:, 3:] = 0
    coarse[1, 3, :, 30:] = 9
    coarse = coarse / coarse.sum(1, keepdim=True)
    with torch.inference_mode():
        probs = model.engine.refine_probs(images, coarse)
        expected = model.engine.refine_logits(images, coarse).softmax(1)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=2e-6)
    assert bool((probs[0, 3] == 0).all()) and bool((probs[:, 4] == 0).all()) and bool((probs[1, 3] > 0).any())
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 24, 40))


@pytest.mark.slow
def test_real_object_masks_get_sharper_and_no_worse(real_data: Path):
    # Held-out DAVIS sequences, ground truth coarsened like a stride-8 network's output enlarged by pixel
    # replication (`refine-cli data coarsen --upsample nearest`): every 8th frame.
    from refine_cli.data import open_dataset
    from refine_cli.data.coarsen import coarsen_labels
    from refine_cli.metrics import BoundaryF, ConfusionMatrix

    dataset = open_dataset(real_data / "davis", format="davis", split="val")
    model = ColourPropagation(spatial_sigma=40, range_sigma=0.2, iterations=2)
    before, after = ConfusionMatrix(2), ConfusionMatrix(2)
    bf_before, bf_after = BoundaryF(), BoundaryF()
    for index in range(0, len(dataset), 8):
        sample = dataset[index]
        coarse = coarsen_labels(sample.label.numpy(), 2, 8, upsample="nearest")
        coarse[coarse == 255] = 0
        image = sample.image.float()[None] / 255
        with torch.inference_mode():
            refined = model(image, _one_hot(torch.from_numpy(coarse)[None], 2)).argmax(1)[0].numpy()
        before.update(coarse, sample.label.numpy())
        after.update(refined, sample.label.numpy())
        bf_before.update(coarse, sample.label.numpy())
        bf_after.update(refined, sample.label.numpy())
    # Measured on these 11 frames: foreground IoU 93.61 -> 95.45, boundary F 68.88 -> 81.94 (all 88 val frames with
    # `refine-cli evaluate --masks`: 93.84 -> 95.52, 69.18 -> 81.21).
    assert after.iou[1] >= before.iou[1] + 0.005
    assert bf_after.score().f >= bf_before.score().f + 0.06


def test_a_second_round_moves_a_boundary_further():
    height, width, edge = 24, 64, 20
    image = _step_image(height, width, edge)
    labels = torch.zeros(1, height, width, dtype=torch.long)
    labels[..., edge + 4 :] = 1  # 4 px off: one round moves it part of the way
    truth = torch.zeros_like(labels)
    truth[..., edge:] = 1
    errors = [(ColourPropagation(rounds=r)(image, _one_hot(labels, 2)).argmax(1) != truth).sum().item() for r in (1, 2)]
    assert (labels != truth).sum().item() > errors[0] > errors[1] == 0


def _striped_object() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A striped object (its inner edges stop the scans) on a green background: image (1, 3, 64, 96), its true labels
    and a coarse mask 8 px too large all round (straight sides: no fine detail), both (1, 64, 96)."""
    height, width = 64, 96
    image = torch.tensor([0.3, 0.6, 0.3])[None, :, None, None].repeat(1, 1, height, width)
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[:, 16:48, 24:72] = 1
    stripes = (torch.arange(24, 72) // 2 % 2).float()
    image[0, :, 16:48, 24:72] = torch.stack([0.8 - 0.4 * stripes, 0.2 + 0 * stripes, 0.2 + 0.4 * stripes])[:, None]
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = (image + 0.04 * (noise - 0.5)).clamp(0, 1)
    coarse = torch.zeros_like(truth)
    coarse[:, 8:56, 16:80] = 1
    return image, truth, coarse


def test_local_colour_models_move_a_blobby_boundary_further():
    # The colours of the band the coarse mask adds belong to the background nearby: the colour models give it back.
    image, truth, coarse = _striped_object()
    errors = [(ColourPropagation(colour_weight=w)(image, _one_hot(coarse, 2)).argmax(1) != truth).sum().item()
              for w in (0.0, 1.0)]
    # Measured: 1536 wrong pixels coarse, 1439 after the propagation alone, 1007 with the colour models.
    assert (coarse != truth).sum().item() > errors[0] > 1.25 * errors[1]


def test_fewer_classes_get_finer_colour_histograms():
    # colour_bins over the classes: 8 levels per channel for 11 classes or more, up to 16 for one class.
    budget = ColourPropagation(colour_weight=1.0, colour_bins=512 * 11)
    assert [budget.colour_levels(k) for k in (1, 2, 3, 11, 21)] == [16, 14, 12, 8, 8]
    assert [ColourPropagation(colour_weight=1.0).colour_levels(k) for k in (1, 2, 21)] == [8, 8, 8]
    # A striped object whose light stripes (0.58 grey) share an 8-level bin with the background (0.52) but not a
    # 14-level one; the coarse mask 8 px too large all round. Only the finer histograms give the band back.
    height, width = 64, 96
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[:, 16:48, 24:72] = 1
    image = torch.full((1, 3, height, width), 0.52)
    image[0, :, 16:48, 24:72] = (0.58 - 0.12 * (torch.arange(24, 72) // 2 % 2).float())[None, None]
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = (image + 0.02 * (noise - 0.5)).clamp(0, 1)
    coarse = torch.zeros_like(truth)
    coarse[:, 8:56, 16:80] = 1
    errors = [(m(image, _one_hot(coarse, 2)).argmax(1) != truth).sum().item()
              for m in (ColourPropagation(colour_weight=1.0), budget)]
    assert errors[1] < 0.6 * errors[0] < 0.6 * (coarse != truth).sum().item()  # measured: 419 and 935 of 1536
    # With 11 classes the budget gives 8 levels: the same result to the bit.
    labels = torch.randint(0, 11, (1, height, width), generator=torch.Generator().manual_seed(1))
    scores = _one_hot(labels, 11) * 0.9 + 0.01
    assert torch.equal(budget(image, scores), ColourPropagation(colour_weight=1.0)(image, scores))


def test_colour_model_arguments_are_checked():
    for bad in ({"colour_weight": -1.0}, {"colour_block": 0}, {"colour_bins": 0}):
        with pytest.raises(ValueError, match="colour"):
            ColourPropagation(**bad)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (40, 1), (33, 65)])
def test_colour_models_run_on_any_size_and_both_backends_agree(size: tuple[int, int]):
    from refine_cli.ops import cpp

    gen = torch.Generator().manual_seed(size[0] * 100 + size[1])
    image = torch.rand(2, 3, *size, generator=gen)
    coarse = torch.rand(2, 3, *size, generator=gen).softmax(1)
    for bins in (None, 512 * 11):  # 8 levels, and 12 (3 classes)
        torch_out = ColourPropagation(colour_weight=1.0, colour_bins=bins, backend="torch")(image, coarse)
        assert torch_out.shape == coarse.shape and torch.isfinite(torch_out).all()
        torch.testing.assert_close(torch_out.exp().sum(1), torch.ones(2, *size), rtol=0, atol=1e-4)
        if cpp.available():
            cpp_out = ColourPropagation(colour_weight=1.0, colour_bins=bins, backend="cpp")(image, coarse)
            torch.testing.assert_close(cpp_out, torch_out, rtol=1e-4, atol=1e-5)


def _blocks(labels: torch.Tensor, block: int) -> torch.Tensor:
    """Labels coarsened to blocks of `block` px (each block its top-left label), enlarged back by replication."""
    small = labels[..., ::block, ::block]
    return small.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., : labels.shape[-2], : labels.shape[-1]]


def test_mask_detail_is_low_for_smooth_and_blocky_masks_and_high_for_fine_ones():
    height, width = 96, 128
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = (((rows - 48) ** 2 + (cols - 64) ** 2) < 35**2).long()[None]
    half = (cols >= 50).long()[None]
    lines = (cols % 6 == 3).long()[None]  # one-pixel lines: the smoothing removes every one of them
    detail = {name: mask_detail(_one_hot(m, 2)).item() for name, m in
              (("half", half), ("disc", disc), ("blocks16", _blocks(disc, 16)), ("blocks8", _blocks(disc, 8)),
               ("lines", lines))}
    assert detail["half"] == 0  # a straight boundary: nothing to round
    assert detail["lines"] == 0.5  # each line's pixel changes, per two boundary pixels (the line and its left)
    assert detail["disc"] < detail["blocks16"] < detail["blocks8"] < detail["lines"]
    # Per image of a batch, any number of classes, integer counts: the same whatever the batch.
    three = torch.stack([half[0], disc[0] + lines[0] * (1 - disc[0]) * 2])
    batch = mask_detail(_one_hot(three, 3))
    assert batch.shape == (2,) and batch[0] == 0
    assert batch[1] == mask_detail(_one_hot(three[1:], 3))[0]


def test_hard_masks_without_fine_detail_get_the_stronger_colour_weight():
    refiner = ColourPropagation(colour_weight=1.0, smooth_mask_weight=3.0, smooth_mask_detail=(0.18, 0.33))
    height, width = 64, 96
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    smooth = ((rows - 32) ** 2 + (cols - 48) ** 2 < 20**2).long()
    fine = smooth | (cols % 5 == 0).long()
    masks = torch.stack([smooth, fine])
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(4))
    assert mask_detail(_one_hot(masks, 2)).tolist()[0] < 0.18 < 0.33 < mask_detail(_one_hot(masks, 2)).tolist()[1]
    torch.testing.assert_close(refiner.trust(_one_hot(masks, 2), image)[0], torch.tensor([3.0, 1.0]))
    # Probabilities carry their own uncertainty: they keep colour_weight, whatever their argmax looks like.
    soft = _one_hot(masks, 2) * 0.8 + 0.1
    torch.testing.assert_close(refiner.trust(soft, image)[0], torch.tensor([1.0, 1.0]))
    # Halfway through the detail range, halfway between the weights.
    half = ColourPropagation(colour_weight=1.0, smooth_mask_weight=3.0,
                             smooth_mask_detail=(0.0, 2 * mask_detail(_one_hot(smooth[None], 2)).item()))
    torch.testing.assert_close(half.trust(_one_hot(smooth[None], 2), image[:1])[0], torch.tensor([2.0]))
    assert torch.equal(ColourPropagation(colour_weight=1.0).trust(_one_hot(masks, 2), image)[0],
                       torch.tensor([1.0, 1.0]))


def test_a_smooth_mask_on_the_image_edges_keeps_the_plain_colour_weight():
    # The same smooth disc as a mask of an image whose disc is where the mask says (accurate: its boundary on the
    # image's edge) and of an image whose disc is 8 px larger all round (the mask strays): only the second gets the
    # stronger weight.
    height, width = 64, 96
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = ((rows - 32) ** 2 + (cols - 48) ** 2 < 20**2).long()
    moved = ((rows - 32) ** 2 + (cols - 48) ** 2 < 28**2).float()
    noise = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(5))
    image = 0.3 + 0.4 * torch.stack([disc.float(), moved])[:, None] + 0.04 * (noise - 0.5)
    masks = torch.stack([disc, disc])
    alignment = mask_alignment(image, masks)
    assert alignment[0] > 1.4 > 1.2 > alignment[1], alignment
    refiner = ColourPropagation(colour_weight=1.0, smooth_mask_weight=3.0, smooth_mask_detail=(0.18, 0.33),
                                smooth_mask_alignment=(1.2, 1.4))
    torch.testing.assert_close(refiner.trust(_one_hot(masks, 2), image)[0], torch.tensor([1.0, 3.0]))
    # With smooth_mask_kept the accurate one comes back as given; the other is refined as before.
    keeping = ColourPropagation(colour_weight=1.0, smooth_mask_weight=3.0, smooth_mask_detail=(0.18, 0.33),
                                smooth_mask_alignment=(1.2, 1.4), smooth_mask_kept=(1.4, 1.6))
    torch.testing.assert_close(keeping.trust(_one_hot(masks, 2), image)[1], torch.tensor([1.0, 0.0]))
    kept, refined = keeping(image, _one_hot(masks, 2)), refiner(image, _one_hot(masks, 2))
    given = _one_hot(masks, 2)[0].clamp_min(1e-6)
    torch.testing.assert_close(kept[0].exp(), given / given.sum(0), rtol=0, atol=1e-6)
    assert torch.equal(kept[1], refined[1])


def test_a_blobby_hard_mask_moves_further_with_the_smooth_mask_weight():
    # The coarse mask has no fine detail: given as a hard mask it gets weight 3 and more of the band back; given as
    # probabilities, weight 1.
    image, truth, coarse = _striped_object()
    plain = ColourPropagation(colour_weight=1.0)
    adaptive = ColourPropagation(colour_weight=1.0, smooth_mask_weight=3.0, smooth_mask_detail=(0.18, 0.33))
    hard, soft = _one_hot(coarse, 2), _one_hot(coarse, 2) * 0.98 + 0.01
    errors = {name: (m(image, x).argmax(1) != truth).sum().item() for name, m, x in
              (("plain", plain, hard), ("adaptive", adaptive, hard), ("soft plain", plain, soft),
               ("soft adaptive", adaptive, soft))}
    assert errors["adaptive"] < errors["plain"] / 2  # measured: 21 wrong pixels against 1007
    assert errors["soft adaptive"] == errors["soft plain"]


def test_a_blobby_hard_mask_crosses_faint_texture_with_the_smooth_mask_range():
    # A red object on a background of a faint checkerboard (3 px squares, 0.05 apart in each channel: edges that stop
    # the scans at range_sigma 0.2), the coarse mask 8 px too large all round. The same colour weight throughout, so
    # only the reach differs.
    height, width = 64, 96
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[:, 16:48, 24:72] = 1
    image = (0.35 + 0.05 * ((rows // 3 + cols // 3) % 2).float())[None, None].repeat(1, 3, 1, 1)
    image[0, :, 16:48, 24:72] = torch.tensor([0.8, 0.3, 0.3])[:, None, None]
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = (image + 0.02 * (noise - 0.5)).clamp(0, 1)
    coarse = torch.zeros_like(truth)
    coarse[:, 8:56, 16:80] = 1
    hard, soft = _one_hot(coarse, 2), _one_hot(coarse, 2) * 0.98 + 0.01
    options = {"colour_weight": 1.0, "smooth_mask_weight": 1.0, "smooth_mask_detail": (0.18, 0.33)}
    plain, reaching = ColourPropagation(**options), ColourPropagation(**options, smooth_mask_range=0.4)
    assert reaching.trust(hard, image).smooth.tolist() == [1.0] and reaching.trust(soft, image).smooth.tolist() == [0.0]
    errors = [(m(image, hard).argmax(1) != truth).sum().item() for m in (plain, reaching)]
    assert errors[1] < 0.9 * errors[0] < 0.9 * (coarse != truth).sum().item()  # measured: 981 and 1167 of 1536
    # Probabilities are not smooth masks: the same result to the bit.
    assert torch.equal(plain(image, soft), reaching(image, soft))


def test_confident_probabilities_come_back_and_doubted_ones_are_refined():
    # A faint pole (3 px, 0.02 lighter than the wall around it) the network is sure of, and a band of 6 px where it
    # doubts between the wall and the bright region beside it (truly wall). The propagation averages the pole into
    # the wall; with confident_kept it comes back, and the doubted band is refined as before.
    height, width = 40, 64
    image = torch.full((1, 3, height, width), 0.5)
    image[..., 30:33] = 0.52
    image[..., 50:] = 0.85
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = (image + 0.02 * (noise - 0.5)).clamp(0, 1)
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[..., 30:33] = 1
    truth[..., 50:] = 2
    labels = truth.clone()
    labels[..., 44:50] = 2
    coarse = _one_hot(labels, 3) * 0.99 + 0.0033
    coarse[..., 44:50] = torch.tensor([0.45, 0.02, 0.53]).view(1, 3, 1, 1)
    coarse = coarse / coarse.sum(1, keepdim=True)
    plain, keeping = ColourPropagation(colour_weight=1.0), ColourPropagation(colour_weight=1.0, confident_kept=16.0)
    refined = {name: m(image, coarse).argmax(1) for name, m in (("plain", plain), ("keeping", keeping))}
    assert (refined["plain"][truth == 1] == 1).sum() == 0  # measured: the pole gone
    assert torch.equal(refined["keeping"], truth)
    assert (refined["plain"][..., 44:50] == 0).all()
    # Hard masks are not probabilities: the same result to the bit.
    hard = _one_hot(labels, 3)
    assert torch.equal(plain(image, hard), keeping(image, hard))
    assert plain.trust(hard, image).hard.tolist() == [True] and plain.trust(coarse, image).hard.tolist() == [False]
    with pytest.raises(ValueError, match="confident_kept"):
        ColourPropagation(confident_kept=0.0)


def test_colour_models_learnt_where_the_map_is_sure_move_a_doubted_band():
    # Two noisy regions, dark and bright; the coarse map strays 16 px into the bright one, there doubting (0.6 against
    # 0.4). Counted in full, the band teaches the dark class bright colours and most of it stays dark; counted by the
    # map's confidence, the dark class's models hold almost no bright and the band goes back to the bright class.
    height, width = 40, 64
    image = torch.full((1, 3, height, width), 0.3)
    image[..., 32:] = 0.7
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = (image + 0.3 * (noise - 0.5)).clamp(0, 1)
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[..., 32:] = 1
    coarse = torch.zeros(1, 2, height, width)
    coarse[:, 0, :, :32], coarse[:, 0, :, 32:48], coarse[:, 0, :, 48:] = 0.98, 0.6, 0.02
    coarse[:, 1] = 1 - coarse[:, 0]
    wrong = {c: int((ColourPropagation(colour_weight=1.0, colour_block=8, colour_confidence=c)(image, coarse)
                     .argmax(1) != truth).sum()) for c in (None, 2.0)}
    assert wrong[None] > 320  # measured: 462 of the band's 640 pixels
    assert wrong[2.0] <= 16  # measured: none
    with pytest.raises(ValueError, match="colour_confidence"):
        ColourPropagation(colour_confidence=0.0)


def test_texture_counts_an_edge_within_texture_for_less_than_one_between_plain_regions():
    # The same colour step (0.3 in one channel) twice: between two plain halves, and inside a band of texture.
    height, width = 40, 120
    image = torch.full((1, 3, height, width), 0.4)
    image[0, 0, :, 30:] = 0.7
    noise = torch.rand(1, 3, height, 40, generator=torch.Generator().manual_seed(0))
    image[..., 70:110] = 0.4 + 0.3 * (noise > 0.5).float()
    across_columns = (image[..., 1:] - image[..., :-1]).abs().sum(1)
    across_rows = (image[..., 1:, :] - image[..., :-1, :]).abs().sum(1)
    columns, _ = texture_normalised(across_columns, across_rows, 5, 0.5)
    plain_edge = (columns[0, :, 29] / across_columns[0, :, 29]).mean()
    inner = across_columns[0, :, 75:105] > 0.25  # the texture's own steps of 0.3 and more
    textured = (columns[0, :, 75:105][inner] / across_columns[0, :, 75:105][inner]).mean()
    assert plain_edge > 1 > textured and plain_edge > 1.5 * textured


def test_texture_reach_lets_the_scans_cross_a_texture_to_its_edge():
    # A plain half and a finely textured one (0.1 of noise per channel on a darker colour), the coarse boundary 6 px
    # inside the texture: measured against the texture around them, its inner edges stop the scans less, and the
    # texture's class takes back more of the band.
    height, width, edge = 48, 96, 48
    generator = torch.Generator().manual_seed(0)
    truth = torch.zeros(1, height, width, dtype=torch.long)
    truth[..., edge:] = 1
    image = torch.full((1, 3, height, width), 0.6)
    image[..., edge:] = 0.35 + 0.1 * (torch.rand(1, 3, height, width - edge, generator=generator) - 0.5)
    image = (image + 0.02 * (torch.rand(image.shape, generator=generator) - 0.5)).clamp(0, 1)
    coarse = torch.zeros_like(truth)
    coarse[..., edge + 6:] = 1
    for given in (_one_hot(coarse, 2), _one_hot(coarse, 2) * 0.9 + 0.05):  # a hard mask and probabilities
        errors = [(ColourPropagation(colour_weight=1.0, **options)(image, given).argmax(1) != truth).sum().item()
                  for options in ({}, {"texture_reach": 10})]
        assert errors[1] < 0.85 * errors[0]  # measured: 143 against 183 (hard), 85 against 115 of 288


def test_texture_arguments_are_checked():
    with pytest.raises(ValueError, match="texture_reach"):
        ColourPropagation(texture_reach=0)
    with pytest.raises(ValueError, match="texture_power"):
        ColourPropagation(texture_reach=5, texture_power=0)


def test_smooth_mask_arguments_are_checked():
    for bad in ({"smooth_mask_weight": -1.0}, {"smooth_mask_weight": 2.0, "smooth_mask_detail": (0.3, 0.2)},
                {"smooth_mask_weight": 2.0, "smooth_mask_detail": (-0.1, 0.2)},
                {"smooth_mask_weight": 2.0, "smooth_mask_alignment": (1.4, 1.2)},
                {"smooth_mask_weight": 2.0, "smooth_mask_kept": (1.6, 1.6)},
                {"smooth_mask_weight": 2.0, "smooth_mask_range": 0.0}):
        with pytest.raises(ValueError, match="smooth_mask"):
            ColourPropagation(**bad)


def test_colour_models_take_one_power_per_image():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 20, 24, generator=gen)
    scores = torch.rand(2, 3, 20, 24, generator=gen)
    both = colour_models(image, scores, power=torch.tensor([1.0, 2.5]))
    for i, power in enumerate((1.0, 2.5)):
        one = colour_models(image[i : i + 1], scores[i : i + 1], power=power)
        torch.testing.assert_close(both.table[i], one.table[0])


@pytest.mark.parametrize("size", [1, 3, 7, 13, 15])
def test_mask_detail_is_the_same_from_the_cpp_kernel_and_pytorch(size: int, monkeypatch: pytest.MonkeyPatch):
    from refine_cli.ops import cpp

    if not cpp.available():
        pytest.skip("the C++ kernels are not built here")
    gen = torch.Generator().manual_seed(size)
    for k, (height, width), block in ((1, (5, 7), 1), (2, (33, 20), 4), (3, (1, 40), 2), (12, (40, 1), 3),
                                      (5, (48, 64), 8), (11, (37, 29), 1)):
        small = torch.randint(0, k, (2, -(-height // block), -(-width // block)), generator=gen)
        labels = small.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width]
        one_hot = _one_hot(labels, k)
        fast = mask_detail(one_hot, size)
        monkeypatch.setattr(cpp, "available", lambda: False)
        assert torch.equal(mask_detail(one_hot, size), fast), (k, height, width, block)
        monkeypatch.undo()
    with pytest.raises(ValueError, match="1 to 15"):
        mask_detail(one_hot, 17)
