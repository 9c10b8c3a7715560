"""Local colour models of a label map's classes: how likely each pixel's colour is under each class, judged from
the pixels of that class around it.

The image's colours are quantised into `levels`^3 bins and counted per class in square blocks of `block` pixels; a
pixel's model of class c is the histogram of c over the (2 * reach + 1)^2 blocks centred on its own, blended with
c's histogram over the whole image (weight `prior` pixels, so a class with few pixels nearby leans on its global
colours), as in the local classifiers of Video SnapCut (Bai et al., SIGGRAPH 2009) with histograms for classifiers.
Every step is a count, a box sum or a lookup: linear in the pixels, whatever the number of classes.

Backends, as `refine_cli.ops.edge_mean`'s: "cpp" (csrc/colour_model_cpu.cpp: the count and the re-weighing as one
loop over the pixels each, forward only), "torch" (differentiable in the probabilities) and "auto".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from refine_cli.ops.class_map import class_map
from refine_cli.ops.edge_mean import EdgeMeanBackend, resolve_cpu_kernel


@dataclass(frozen=True)
class ColourModels:
    """The models of one batch: `table` (N, K, cells) the density of each (block, colour bin) cell under each class,
    and `cells` (N, H, W) int each pixel's cell."""

    table: torch.Tensor
    cells: torch.Tensor

    def likelihood(self) -> torch.Tensor:
        """(N, K, H, W): each pixel's value in the table, for every class."""
        n, k, _ = self.table.shape
        index = self.cells.long().view(n, 1, -1).expand(n, k, -1)
        return self.table.gather(2, index).view(n, k, *self.cells.shape[1:])


def colour_models(image: torch.Tensor, scores: torch.Tensor, *, levels: int = 8, block: int = 32, reach: int = 1,
                  prior: float = 50.0, power: float | torch.Tensor = 1.0, confidence: float = 0.0,
                  backend: EdgeMeanBackend = "auto") -> ColourModels:
    """image: (N, 3, H, W) RGB in [0, 1]; scores: (N, K, H, W), each pixel's class being its best score (the first on
    ties). The table holds each model's densities (every model sums to 1 over the colour bins) raised to `power`
    (one number, or (N,) one per image). With `confidence` c > 0 the scores are probabilities and a pixel counts
    (best - second best)^c rather than 1: a class's colours are learnt where the map is sure of it, not from the
    band of doubt along its boundaries, which holds its neighbours' colours as much as its own."""
    if image.ndim != 4 or image.shape[1] != 3 or scores.ndim != 4 or scores.shape[0] != image.shape[0] or \
            scores.shape[2:] != image.shape[2:]:
        raise ValueError(f"colour models take (N, 3, H, W) images and (N, K, H, W) scores; got "
                         f"{tuple(image.shape)} and {tuple(scores.shape)}")
    if levels < 1 or block < 1 or reach < 0 or prior <= 0 or confidence < 0:
        raise ValueError("levels and block must be at least 1, reach and confidence at least 0, prior positive")
    if resolve_cpu_kernel(backend, image.device, needs_grad=False, kernel="colour-model kernels") == "cpp":
        counts, cells = torch.ops.refine_cli_colour.colour_counts(image, scores.detach(), levels, block,
                                                                  float(confidence))
    else:
        weight = margin(scores.detach()).pow_(confidence) if confidence > 0 else None
        counts, cells = _counts_torch(image, class_map(scores.detach()), scores.shape[1], levels, block, weight)
    n, k, rows, cols, bins = counts.shape
    whole = counts.sum((2, 3))  # (N, K, bins)
    density = (whole + 1.0 / bins) / (whole.sum(-1, keepdim=True) + 1.0)  # never zero
    local = box_sum(box_sum(counts, 2, reach), 3, reach)  # counts are not read again: may be `local` itself
    totals = local.sum(-1, keepdim=True).add_(prior)
    table = local.add_(prior * density[:, :, None, None]).div_(totals)
    if isinstance(power, torch.Tensor):
        table = table.pow_(power.to(table).view(n, 1, 1, 1, 1))
    elif power != 1.0:
        table = table.pow_(power)
    return ColourModels(table.view(n, k, rows * cols * bins), cells)


def colour_likelihood(image: torch.Tensor, scores: torch.Tensor, **options) -> torch.Tensor:
    """(N, K, H, W) float32: the density of each pixel's colour under each class's local model (`colour_models`,
    whose keyword options it takes)."""
    return colour_models(image, scores, **options).likelihood()


def reweigh(x: torch.Tensor, models: ColourModels, *, floor: float, backend: EdgeMeanBackend = "auto") -> torch.Tensor:
    """x: (N, K, H, W) probabilities. Returns x times each pixel's model values, renormalised over the classes and
    floored at `floor`."""
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if resolve_cpu_kernel(backend, x.device, needs_grad=needs_grad, kernel="colour-model kernels") == "cpp":
        return torch.ops.refine_cli_colour.colour_reweigh(x, models.table, models.cells, floor)
    weighed = x.float() * models.likelihood()
    return (weighed / weighed.sum(1, keepdim=True)).clamp_min(floor)


def margin(scores: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) scores -> (N, H, W) float32: each pixel's best score less its second best (1 with one class)."""
    if scores.shape[1] < 2:
        return torch.ones_like(scores[:, 0], dtype=torch.float32)
    top = scores.float().topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]).clamp_min_(0)


def _counts_torch(image: torch.Tensor, labels: torch.Tensor, num_classes: int, levels: int,
                  block: int, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, height, width = image.shape
    bins = levels**3
    rows, cols = -(-height // block), -(-width // block)
    # In float32 (exact below 2^24) until the class is added: fewer conversions of whole images.
    quantised = image.float().clamp(0, 1).mul(levels - 1e-3).floor_()  # (N, 3, H, W) in 0..levels-1
    colour = quantised[:, 0].mul(levels).add_(quantised[:, 1]).mul_(levels).add_(quantised[:, 2])  # (N, H, W)
    where = (torch.arange(height, device=image.device) // block)[:, None] * cols + \
        (torch.arange(width, device=image.device) // block)[None, :]
    cells = colour.add_(where.mul(bins)).long()  # (N, H, W): the pixel's (block, bin) within one class's counts
    per_class = rows * cols * bins
    image_offset = torch.arange(n, device=image.device)[:, None, None] * (num_classes * per_class)
    index = (image_offset + labels.long() * per_class + cells).flatten()
    counts = torch.zeros(n * num_classes * per_class, device=image.device)
    counts = counts.index_put_((index,), torch.ones(()).to(counts).expand(index.shape) if weight is None
                               else weight.to(counts).flatten(), accumulate=True)
    return counts.view(n, num_classes, rows, cols, bins), cells


def box_sum(x: torch.Tensor, dim: int, reach: int) -> torch.Tensor:
    """Sum over a window of 2 * reach + 1 along `dim`, zeros beyond the ends."""
    if reach == 0:
        return x
    size = x.shape[dim]
    total = x.clone()
    for shift in range(1, min(reach, size - 1) + 1):
        total.narrow(dim, 0, size - shift).add_(x.narrow(dim, shift, size - shift))
        total.narrow(dim, shift, size - shift).add_(x.narrow(dim, 0, size - shift))
    return total


def box_mean(x: torch.Tensor, reach: int) -> torch.Tensor:
    """(N, H, W) -> (N, H, W) float32: the mean over the (2 * reach + 1)^2 square around each pixel, of the pixels
    inside the image: `box_sum` over both axes divided by the pixels counted, here from running sums (a few passes
    whatever the reach), kept in float64 so that their rounding does not grow along the line."""
    total = x.double()
    for dim in (1, 2):
        size = total.shape[dim]
        running = total.cumsum(dim)
        # running sums from 0 (before the first pixel) to the whole line, the ends repeated `reach` times: the window
        # sum at i is then padded[i + 2 * reach + 1] - padded[i]
        first = torch.zeros_like(running.narrow(dim, 0, 1)).expand(*(reach + 1 if d == dim else -1
                                                                      for d in range(3)))
        last = running.narrow(dim, size - 1, 1).expand(*(reach if d == dim else -1 for d in range(3)))
        padded = torch.cat([first, running, last], dim)
        total = padded.narrow(dim, 2 * reach + 1, size) - padded.narrow(dim, 0, size)
        index = torch.arange(size, device=x.device)
        count = ((index + reach + 1).clamp_max(size) - (index - reach).clamp_min(0)).double()
        total = total.div_(count.view(1, -1, 1) if dim == 1 else count.view(1, 1, -1))
    return total.float()
