"""The colour-gated spatial propagation refiner: the SPN's three-way scan with gates read off the image's colours
instead of a guidance network, run at full resolution.

A pixel's gate to each of its three neighbours in the previous column (row, or the reverse directions) is the
domain-transform weight of Gastal and Oliveira (SIGGRAPH 2011), a ** (1 + spatial_sigma / range_sigma * d), where
d is the L1 colour difference in [0, 1] RGB and a = exp(-sqrt(2) / spatial_sigma), split evenly over the three
neighbours (the diagonal ones a step of sqrt(2) away). Within a region of one colour a pixel hears its neighbours
over about `spatial_sigma` pixels; across an edge almost nothing passes. All four scans run on the same input,
`iterations` times with the spatial scale shrinking as in the domain transform's schedule, on every class map at
once (the universal form: one set of gates, any number of classes).

Each scan gathers, for every pixel, the maps of the pixels behind it weighted by the products of the gates on the
way (the recurrence run on unnormalised sums); the four scans' sums divided by their sums of weights give a
weighted mean over the pixel's own region. Class probabilities are thereby averaged within the image's regions: a
coarse mask whose boundary strays from the object's edge is pulled back to it, while the regions away from
boundaries are left as they are. There
are no learnt weights: it is a refiner for any image and any label set, and the floor the learnt refiners are
measured against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.ops import DIRECTIONS, propagate
from refine_cli.ops.propagate import Backend
from refine_cli.ops.scan import oriented, unoriented

PROB_FLOOR = 1e-6  # the propagated probabilities are returned as log(p), floored here


class ColourPropagation(nn.Module):
    """(image, coarse probabilities) -> refined logits, through colour-gated propagation.

    spatial_sigma: reach of the propagation in pixels, within a region of one colour.
    range_sigma: colour difference (L1 over RGB in [0, 1]) that counts as much as one pixel of distance, relative
        to spatial_sigma: smaller values stop the propagation at fainter edges.
    iterations: passes of the four scans, their spatial scale shrinking each time (the domain transform's
        schedule), so the blocky artefacts of a first long-reaching pass are smoothed by the later ones.
    """

    per_class = True  # every class map is propagated the same way: any label set
    full_resolution = True  # the pipeline runs it on the full-size image, never on a scaled-down copy
    min_side = 1

    def __init__(self, *, spatial_sigma: float = 40.0, range_sigma: float = 0.2, iterations: int = 2,
                 backend: Backend = "auto") -> None:
        super().__init__()
        if spatial_sigma <= 0 or range_sigma <= 0 or iterations < 1:
            raise ValueError("spatial_sigma and range_sigma must be positive and iterations at least 1; got "
                             f"{spatial_sigma}, {range_sigma}, {iterations}")
        self.spatial_sigma, self.range_sigma, self.iterations = float(spatial_sigma), float(range_sigma), iterations
        self.backend = backend

    def forward(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """image: (N, 3, H, W) RGB in [0, 1]; coarse: (N, K, H, W) probabilities. Returns (N, K, H, W) log
        probabilities (floored at PROB_FLOOR)."""
        return self.forward_parts(image, coarse)[1]

    def forward_parts(self, image: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `SPNRefiner.forward_parts`: keep 0 (nothing of log(coarse) is added back) and the refined log
        probabilities as the correction."""
        if image.shape[0] != coarse.shape[0] or image.shape[-2:] != coarse.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and coarse {tuple(coarse.shape)} must share batch and size")
        image = image.float()
        # (N, K, 1, H, W): the K maps share the gates. Floored, so that no sum decays into subnormal floats (slow)
        x = coarse.float().clamp_min(PROB_FLOOR).unsqueeze(2)
        ones = torch.ones_like(x[:, :1])
        for sigma in self.schedule():
            for axis in ((0, 1), (2, 3)):  # rows (left and right scans), then columns (down and up)
                maps = torch.cat([x, ones], 1)  # the last map gathers the weights
                total = -maps  # each of the two scans counts the pixel itself once; keep it once
                for code in axis:
                    total = total + self.weighted_sums(maps, image, code, DIRECTIONS[code], sigma)
                x = total[:, :-1] / total[:, -1:]
        refined = x.squeeze(2).clamp_min(PROB_FLOOR).log().to(coarse.dtype)
        return refined.new_zeros(()), refined

    def weighted_sums(self, maps: torch.Tensor, image: torch.Tensor, code: int, direction: str,
                      sigma: float) -> torch.Tensor:
        """For every pixel, the sum over the pixels behind it in the scan of their maps times the product of the
        gates along the way, plus its own map (weight 1): the scan's recurrence h = (1 - sum g) x + sum g h_prev
        run on x / (1 - sum g), which is h = x + sum g h_prev. Divided by the same sums of ones, the four scans
        give a weighted mean whose weights stop at edges, with no pixel weighing more for being first after one
        (the plain recurrence gives the first pixel of a region the weight of all that follow)."""
        gates = self.gates(image, code, sigma)
        return propagate(maps / self._own_weight(gates, code), gates, direction, backend=self.backend)

    @staticmethod
    def _own_weight(gates: torch.Tensor, code: int) -> torch.Tensor:
        """1 - sum of the gates the scan uses at each pixel (none in its first column, no neighbour beyond the map's
        top or bottom row), as (N, 1, 1, H, W)."""
        seen = oriented(gates, code)
        used = seen.clone()
        used[..., 0] = 0
        used[:, 0, :, 0, :] = 0
        used[:, 2, :, -1, :] = 0
        return unoriented(1 - used.sum(1, keepdim=True), code)

    def schedule(self) -> list[float]:
        """The spatial scale of each iteration: sigma_i = sigma * sqrt(3) * 2^(n-i-1) / sqrt(4^n - 1), whose
        variances add up to sigma^2 (Gastal and Oliveira, eq. 14)."""
        n = self.iterations
        return [self.spatial_sigma * math.sqrt(3) * 2 ** (n - i - 1) / math.sqrt(4**n - 1) for i in range(n)]

    def gates(self, image: torch.Tensor, code: int, sigma: float) -> torch.Tensor:
        """(N, 3, 1, H, W) gates of the scan `DIRECTIONS[code]`: neighbours above-behind, behind, below-behind."""
        seen = oriented(image, code)  # the scan runs left to right over this view
        height, width = seen.shape[-2:]
        behind = F.pad(seen, (1, 0, 1, 1), mode="replicate")[..., :width]  # column t-1, rows h-1 .. h+1 padded
        a = math.exp(-math.sqrt(2) / sigma)
        distance = 1 + sigma / self.range_sigma * (seen - behind[:, :, 1 : 1 + height]).abs().sum(1, keepdim=True)
        straight = a**distance
        out = [torch.zeros_like(straight), straight, torch.zeros_like(straight)]  # no diagonal neighbours
        return unoriented(torch.cat(out, 1), code).unsqueeze(2).contiguous()


def spn_colour(*, spatial_sigma: float = 40.0, range_sigma: float = 0.2, iterations: int = 2) -> ColourPropagation:
    return ColourPropagation(spatial_sigma=spatial_sigma, range_sigma=range_sigma, iterations=iterations)
