"""Local colour models: the counts, box sums and lookups of both backends against the definition written out pixel by
pixel (every pixel counting 1, or its confidence), images of a batch kept apart, the re-weighing, and argument
errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_cli.errors import UsageError
from refine_cli.ops import cpp
from refine_cli.ops.colour_likelihood import box_mean, box_sum, colour_likelihood, colour_models, reweigh

BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not cpp.available(), reason="the C++ kernels could not be built")),
]


def _scores(labels: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(labels, k).permute(0, 3, 1, 2).float()


def _by_definition(image: torch.Tensor, labels: torch.Tensor, k: int, levels: int, block: int, reach: int,
                   prior: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """One image (3, H, W), labels (H, W): every pixel's model of every class from explicit loops, each pixel counting
    1 or its `weight` (H, W)."""
    weight = torch.ones(labels.shape, dtype=torch.float64) if weight is None else weight.double()
    _, height, width = image.shape
    q = (image.clamp(0, 1) * (levels - 1e-3)).floor().long()
    colour = (q[0] * levels + q[1]) * levels + q[2]
    bins = levels**3
    out = torch.empty(k, height, width, dtype=torch.float64)
    whole = torch.zeros(k, bins, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            whole[labels[y, x], colour[y, x]] += weight[y, x]
    density = (whole + 1.0 / bins) / (whole.sum(1, keepdim=True) + 1.0)
    for y in range(height):
        for x in range(width):
            near = torch.zeros(k, bins, dtype=torch.float64)
            for yy in range(height):
                for xx in range(width):
                    if abs(yy // block - y // block) <= reach and abs(xx // block - x // block) <= reach:
                        near[labels[yy, xx], colour[yy, xx]] += weight[yy, xx]
            model = (near + prior * density) / (near.sum(1, keepdim=True) + prior)
            out[:, y, x] = model[:, colour[y, x]]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block,reach", [(4, 1), (3, 0), (5, 2)])
def test_matches_the_definition_pixel_by_pixel(block: int, reach: int, backend: str):
    gen = torch.Generator().manual_seed(block * 10 + reach)
    image = torch.rand(2, 3, 11, 14, generator=gen)
    labels = torch.randint(0, 3, (2, 11, 14), generator=gen)
    got = colour_likelihood(image, _scores(labels, 3), levels=3, block=block, reach=reach, prior=5.0, backend=backend)
    assert got.shape == (2, 3, 11, 14) and got.dtype == torch.float32
    for i in range(2):  # each image of the batch only from its own pixels
        want = _by_definition(image[i], labels[i], 3, 3, block, reach, 5.0).float()
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("confidence", [1.0, 1.5])
def test_with_confidence_each_pixel_counts_its_margin(confidence: float, backend: str):
    gen = torch.Generator().manual_seed(int(confidence * 10))
    image = torch.rand(2, 3, 10, 12, generator=gen)
    x = (3 * torch.randn(2, 4, 10, 12, generator=gen)).softmax(1)
    x[0, :, 0, 0] = 0.25  # a four-way tie: the first class, counting nothing
    got = colour_likelihood(image, x, levels=3, block=4, reach=1, prior=5.0, confidence=confidence, backend=backend)
    top = x.topk(2, dim=1).values
    weight = (top[:, 0] - top[:, 1]) ** confidence
    assert weight[0, 0, 0] == 0
    for i in range(2):
        want = _by_definition(image[i], x[i].argmax(0), 4, 3, 4, 1, 5.0, weight[i]).float()
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_doubted_pixels_teach_their_class_little_of_their_colour(backend: str):
    image = torch.zeros(1, 3, 8, 16)
    image[..., 8:] = 1.0  # black left half, white right half
    x = torch.zeros(1, 2, 8, 16)
    x[:, 0, :, :12] = 1.0  # the first class strays 4 pixels into the white half, where the map doubts it ...
    x[:, 0, :, 8:12] = 0.55
    x[:, 1] = 1 - x[:, 0]
    plain = colour_likelihood(image, x, block=4, backend=backend)
    sure = colour_likelihood(image, x, block=4, confidence=2.0, backend=backend)
    # ... so counted in full, white in that band is nearly half as likely under the first class as under the second;
    # counted by the map's confidence (0.1^2 there), under a hundredth as likely.
    band = (slice(None), slice(8, 12))
    assert (plain[0, 0][band] > 0.4 * plain[0, 1][band]).all()
    assert (sure[0, 0][band] < 0.01 * sure[0, 1][band]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_colour_seen_only_in_one_class_is_likely_only_there(backend: str):
    image = torch.zeros(1, 3, 8, 16)
    image[..., 8:] = 1.0  # black left half, white right half
    scores = torch.zeros(1, 2, 8, 16)  # tied everywhere: the first class, as argmax ...
    scores[:, 1, :, 8:] = 1.0  # ... but on the right half
    got = colour_likelihood(image, scores, block=4, backend=backend)
    assert (got[0, 0, :, :8] > 20 * got[0, 1, :, :8]).all()
    assert (got[0, 1, :, 8:] > 20 * got[0, 0, :, 8:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reweigh_multiplies_renormalises_and_floors(backend: str):
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 9, 13, generator=gen)
    x = torch.rand(2, 4, 9, 13, generator=gen).softmax(1)
    x[0, 2] = 1e-12  # floored after renormalising
    models = colour_models(image, x, levels=4, block=3, power=0.5, backend=backend)
    want = x * models.likelihood()
    want = (want / want.sum(1, keepdim=True)).clamp_min(1e-6)
    got = reweigh(x, models, floor=1e-6, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert got[0, 2].eq(1e-6).all()


def test_the_cpp_kernels_refuse_gradients():
    if not cpp.available():
        pytest.skip("the C++ kernels could not be built")
    x = torch.rand(1, 2, 4, 4).softmax(1).requires_grad_()
    models = colour_models(torch.rand(1, 3, 4, 4), x, backend="cpp")
    with pytest.raises(UsageError, match="no backward"):
        reweigh(x, models, floor=1e-6, backend="cpp")
    reweigh(x, models, floor=1e-6, backend="torch").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_arguments_are_checked():
    image, scores = torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="scores"):
        colour_likelihood(image, scores[0])
    with pytest.raises(ValueError, match="prior"):
        colour_likelihood(image, scores, prior=0.0)
    with pytest.raises(ValueError, match="reach"):
        colour_likelihood(image, scores, reach=-1)
    with pytest.raises(ValueError, match="confidence"):
        colour_likelihood(image, scores, confidence=-1.0)
    with pytest.raises(ValueError, match="backend"):
        colour_likelihood(image, scores, backend="gpu")


@pytest.mark.parametrize(("shape", "reach"), [((2, 37, 53), 10), ((1, 5, 3), 4), ((1, 1, 1), 2), ((1, 30, 40), 1)])
def test_box_mean_is_the_mean_over_the_square_within_the_image(shape: tuple[int, int, int], reach: int):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    square = box_sum(box_sum(x, 1, reach), 2, reach) / box_sum(box_sum(torch.ones_like(x), 1, reach), 2, reach)
    torch.testing.assert_close(box_mean(x, reach), square)
