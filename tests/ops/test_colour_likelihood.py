"""Local colour models: the counts, box sums and lookups of `colour_likelihood` against the definition written out
pixel by pixel, images of a batch kept apart, and argument errors."""

from __future__ import annotations

import pytest
import torch

from refine_cli.ops.colour_likelihood import colour_likelihood


def _by_definition(image: torch.Tensor, labels: torch.Tensor, k: int, levels: int, block: int, reach: int,
                   prior: float) -> torch.Tensor:
    """One image (3, H, W), labels (H, W): every pixel's model of every class from explicit loops."""
    _, height, width = image.shape
    q = (image.clamp(0, 1) * (levels - 1e-3)).floor().long()
    colour = (q[0] * levels + q[1]) * levels + q[2]
    bins = levels**3
    out = torch.empty(k, height, width, dtype=torch.float64)
    whole = torch.zeros(k, bins, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            whole[labels[y, x], colour[y, x]] += 1
    density = (whole + 1.0 / bins) / (whole.sum(1, keepdim=True) + 1.0)
    for y in range(height):
        for x in range(width):
            near = torch.zeros(k, bins, dtype=torch.float64)
            for yy in range(height):
                for xx in range(width):
                    if abs(yy // block - y // block) <= reach and abs(xx // block - x // block) <= reach:
                        near[labels[yy, xx], colour[yy, xx]] += 1
            model = (near + prior * density) / (near.sum(1, keepdim=True) + prior)
            out[:, y, x] = model[:, colour[y, x]]
    return out


@pytest.mark.parametrize("block,reach", [(4, 1), (3, 0), (5, 2)])
def test_matches_the_definition_pixel_by_pixel(block: int, reach: int):
    gen = torch.Generator().manual_seed(block * 10 + reach)
    image = torch.rand(2, 3, 11, 14, generator=gen)
    labels = torch.randint(0, 3, (2, 11, 14), generator=gen)
    got = colour_likelihood(image, labels, 3, levels=3, block=block, reach=reach, prior=5.0)
    assert got.shape == (2, 3, 11, 14) and got.dtype == torch.float32
    for i in range(2):  # each image of the batch only from its own pixels
        want = _by_definition(image[i], labels[i], 3, 3, block, reach, 5.0).float()
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)


def test_a_colour_seen_only_in_one_class_is_likely_only_there():
    image = torch.zeros(1, 3, 8, 16)
    image[..., 8:] = 1.0  # black left half, white right half
    labels = torch.zeros(1, 8, 16, dtype=torch.long)
    labels[..., 8:] = 1
    got = colour_likelihood(image, labels, 2, block=4)
    assert (got[0, 0, :, :8] > 20 * got[0, 1, :, :8]).all()
    assert (got[0, 1, :, 8:] > 20 * got[0, 0, :, 8:]).all()


def test_arguments_are_checked():
    image, labels = torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        colour_likelihood(image, labels[0], 2)
    with pytest.raises(ValueError, match="prior"):
        colour_likelihood(image, labels, 2, prior=0.0)
    with pytest.raises(ValueError, match="reach"):
        colour_likelihood(image, labels, 2, reach=-1)
