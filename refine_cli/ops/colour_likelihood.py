"""Local colour models of a label map's classes: how likely each pixel's colour is under each class, judged from
the pixels of that class around it.

The image's colours are quantised into `levels`^3 bins and counted per class in square blocks of `block` pixels; a
pixel's model of class c is the histogram of c over the (2 * reach + 1)^2 blocks centred on its own, blended with
c's histogram over the whole image (weight `prior` pixels, so a class with few pixels nearby leans on its global
colours), as in the local classifiers of Video SnapCut (Bai et al., SIGGRAPH 2009) with histograms for classifiers.
Every step is a count, a box sum or a lookup: linear in the pixels, whatever the number of classes.
"""

from __future__ import annotations

import torch


def colour_likelihood(image: torch.Tensor, labels: torch.Tensor, num_classes: int, *, levels: int = 8,
                      block: int = 32, reach: int = 1, prior: float = 50.0) -> torch.Tensor:
    """image: (N, 3, H, W) RGB in [0, 1]; labels: (N, H, W) integers in 0..num_classes-1. Returns (N, K, H, W)
    float32: the density of each pixel's colour bin under each class's local colour model (each model sums to 1
    over the bins)."""
    if image.ndim != 4 or image.shape[1] != 3 or labels.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(f"colour_likelihood takes (N, 3, H, W) images and (N, H, W) labels; got "
                         f"{tuple(image.shape)} and {tuple(labels.shape)}")
    if levels < 1 or block < 1 or reach < 0 or prior <= 0 or num_classes < 1:
        raise ValueError("levels, block and num_classes must be at least 1, reach at least 0, prior positive")
    n, _, height, width = image.shape
    bins = levels**3
    rows, cols = -(-height // block), -(-width // block)
    # In float32 (exact below 2^24) until the class is added: fewer conversions of whole images.
    quantised = image.float().clamp(0, 1).mul(levels - 1e-3).floor_()  # (N, 3, H, W) in 0..levels-1
    colour = quantised[:, 0].mul(levels).add_(quantised[:, 1]).mul_(levels).add_(quantised[:, 2])  # (N, H, W)
    where = (torch.arange(height, device=image.device) // block)[:, None] * cols + \
        (torch.arange(width, device=image.device) // block)[None, :]
    cell = colour.add_(where.mul(bins)).long()  # (N, H, W): the pixel's (block, bin) within one class's counts
    per_class = rows * cols * bins
    image_offset = torch.arange(n, device=image.device)[:, None, None] * (num_classes * per_class)
    counts = torch.bincount((image_offset + labels.long() * per_class + cell).flatten(),
                            minlength=n * num_classes * per_class).float()
    counts = counts.view(n, num_classes, rows, cols, bins)
    whole = counts.sum((2, 3))  # (N, K, bins)
    density = (whole + 1.0 / bins) / (whole.sum(-1, keepdim=True) + 1.0)  # never zero
    local = _box_sum(_box_sum(counts, 2, reach), 3, reach)
    model = (local + prior * density[:, :, None, None]) / (local.sum(-1, keepdim=True) + prior)
    model = model.view(n, num_classes, per_class)
    return model.gather(2, cell.view(n, 1, -1).expand(n, num_classes, -1)).view(n, num_classes, height, width)


def _box_sum(x: torch.Tensor, dim: int, reach: int) -> torch.Tensor:
    """Sum over a window of 2 * reach + 1 along `dim`, zeros beyond the ends."""
    if reach == 0:
        return x
    size = x.shape[dim]
    total = x.clone()
    for shift in range(1, min(reach, size - 1) + 1):
        total.narrow(dim, 0, size - shift).add_(x.narrow(dim, shift, size - shift))
        total.narrow(dim, shift, size - shift).add_(x.narrow(dim, 0, size - shift))
    return total
