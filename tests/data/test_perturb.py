"""Coarse masks made from ground truth: each error kind does what it says, and the whole is seeded."""

from __future__ import annotations

import torch

from refine_cli.config import PerturbConfig
from refine_cli.data.perturb import (
    fill_ignored, morph_labels, one_hot, perturb, stride_probs, warp_labels,
)

OFF = PerturbConfig(warp_p=0, morph_p=0, blobs=(0, 0), confuse_p=0, stride_p=0, hard_p=0, confidence=(1.0, 1.0))


def _square(size: int = 64, lo: int = 16, hi: int = 48) -> torch.Tensor:
    label = torch.zeros(size, size, dtype=torch.long)
    label[lo:hi, lo:hi] = 1
    return label


def test_fill_ignored_takes_the_nearest_label():
    label = _square()
    label[:, 30:34] = 255
    filled = fill_ignored(label)
    assert (filled[:, :30] == label[:, :30]).all() and (filled != 255).all()
    assert filled[5, 31] == 0 and filled[30, 31] == 1  # nearest is background on top, the square in the middle


def test_nothing_on_changes_nothing():
    label = _square()
    probs = perturb(label, 2, rng=torch.Generator().manual_seed(0), config=OFF)
    assert torch.equal(probs, one_hot(label, 2))


def test_morph_grows_and_shrinks_by_the_radius():
    label = _square()
    assert int((morph_labels(label, [0, 2]) == 1).sum()) == 36 * 36
    assert int((morph_labels(label, [0, -3]) == 1).sum()) == 26 * 26


def test_warp_moves_borders_by_at_most_the_amplitude():
    label = _square()
    warped = warp_labels(label, rng=torch.Generator().manual_seed(1), amplitude=3.0, scale=16.0)
    assert not torch.equal(warped, label)
    assert (warped[:13] == 0).all() and (warped[19:45, 19:45] == 1).all()


def test_stride_blurs_borders_and_blocky_keeps_cells():
    label = _square(64, 17, 47)
    smooth = stride_probs(label, 2, 8)
    blocky = stride_probs(label, 2, 8, blocky=True)
    assert torch.allclose(smooth.sum(0), torch.ones(64, 64))
    assert ((smooth[1] > 0.01) & (smooth[1] < 0.99)).sum() > ((blocky[1] > 0.01) & (blocky[1] < 0.99)).sum()
    assert torch.equal(blocky[:, :8, :8], blocky[:, :1, :1].expand(2, 8, 8))


def test_perturb_is_seeded_and_always_a_distribution():
    label = _square()
    label[0:4] = 255
    a = perturb(label, 3, rng=torch.Generator().manual_seed(7))
    b = perturb(label, 3, rng=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (3, 64, 64)
    assert torch.allclose(a.sum(0), torch.ones(64, 64), atol=1e-5) and (a >= 0).all()
    hard = perturb(label, 3, rng=torch.Generator().manual_seed(7), config=PerturbConfig(hard_p=1.0))
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_blobs_are_holes_as_often_as_spurious_regions():
    """Blob classes are drawn uniformly, not by area: on a small object, holes (object pixels lost) happen about as
    often as spurious object regions (background pixels gained)."""
    from refine_cli.data.perturb import drop_blob

    label = _square(64, 24, 40)  # 16 x 16 object on a 64 x 64 background
    holes = spurious = 0
    rng = torch.Generator().manual_seed(3)
    for _ in range(200):
        cls = int(torch.randint(2, (), generator=rng))
        out = drop_blob(label, cls, rng=rng, radius=4.0)
        holes += int(((label == 1) & (out == 0)).any())
        spurious += int(((label == 0) & (out == 1)).any())
    assert 70 < holes < 130 and 70 < spurious < 130
