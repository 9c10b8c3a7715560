"""The colour-gated spatial propagation refiner: the SPN's scans with gates read off the image's colours instead of
a guidance network, run at full resolution, with no learnt weights.

The gate linking two neighbouring pixels is the domain-transform weight of Gastal and Oliveira (SIGGRAPH 2011),
a ** (1 + spatial_sigma / range_sigma * d), with d their L1 colour difference in [0, 1] RGB and
a = exp(-sqrt(2) / spatial_sigma): within a region of one colour a pixel reaches about `spatial_sigma` pixels,
across an edge almost nothing passes. Only the straight neighbour of the three-way scan is linked (a separable
filter: diagonal links spread a scan like a random walk, so a stray band along an edge mostly averages itself).

Each scan, run on unnormalised sums, gathers for every pixel the class maps behind it weighted by the products of
the links on the way; the two scans of an axis divided by the sums of weights give a weighted mean over the
pixel's stretch of its own region. Rows, then columns, `iterations` times with the spatial scale shrinking as in
the domain transform's schedule, every class map at once (one set of gates: any label set, binary masks
included). Class probabilities are thereby averaged within the image's regions: a coarse boundary that strays
from the object's edge by a few pixels is pulled back to it, and regions away from boundaries keep their class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.ops import propagate
from refine_cli.ops.propagate import Backend

PROB_FLOOR = 1e-6  # the propagated probabilities are returned as log(p), floored here
# Links between neighbours (one fewer than pixels along the axis) padded to the map: the first pixel of a scan has
# no neighbour behind it.
_BEHIND = {"left_to_right": (1, 0, 0, 0), "right_to_left": (0, 1, 0, 0), "top_to_bottom": (0, 0, 1, 0),
           "bottom_to_top": (0, 0, 0, 1)}


class ColourPropagation(nn.Module):
    """(image, coarse probabilities) -> refined logits, through colour-gated propagation.

    spatial_sigma: reach of the propagation in pixels, within a region of one colour.
    range_sigma: colour difference (L1 over RGB in [0, 1]) that counts as much as one pixel of distance, relative
        to spatial_sigma: smaller values stop the propagation at fainter edges.
    rounds: how many times the whole filter runs, each round after the first on the previous round's mask made
        one-hot: a boundary moves a few pixels per round, so a mask whose boundaries stray further (a stride-16
        network's) needs more than one; each round costs as much as the first.
    iterations: passes of the four scans, their spatial scale shrinking each time (the domain transform's
        schedule), so the blocky artefacts of a first long-reaching pass are smoothed by the later ones.
    """

    per_class = True  # every class map is propagated the same way: any label set
    full_resolution = True  # the pipeline runs it on the full-size image, never on a scaled-down copy
    min_side = 1

    def __init__(self, *, spatial_sigma: float = 40.0, range_sigma: float = 0.2, iterations: int = 2, rounds: int = 1,
                 backend: Backend = "auto") -> None:
        super().__init__()
        if spatial_sigma <= 0 or range_sigma <= 0 or iterations < 1 or rounds < 1:
            raise ValueError("spatial_sigma and range_sigma must be positive, iterations and rounds at least 1; got "
                             f"{spatial_sigma}, {range_sigma}, {iterations}, {rounds}")
        self.rounds = rounds
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
        # Floored, so that no sum decays into subnormal floats (slow), and renormalised over the classes given (the
        # pipeline passes only those some pixel votes for).
        x = coarse.float().clamp_min(PROB_FLOOR)
        x = x / x.sum(1, keepdim=True)
        # Colour differences between neighbours, the same at every scale: along rows and along columns.
        across_columns = (image[..., 1:] - image[..., :-1]).abs().sum(1, keepdim=True)  # (N, 1, H, W-1)
        across_rows = (image[..., 1:, :] - image[..., :-1, :]).abs().sum(1, keepdim=True)  # (N, 1, H-1, W)
        links = [(self._links(across_columns, s), self._links(across_rows, s)) for s in self.schedule()]
        for round_ in range(self.rounds):
            if round_:  # the previous round's mask, one-hot (floored as above)
                x = F.one_hot(x.argmax(1), x.shape[1]).movedim(-1, 1).float().clamp_min(PROB_FLOOR)
                x = x / x.sum(1, keepdim=True)
            for along_rows, along_columns in links:
                x = self._mean_along(x, along_rows, ("left_to_right", "right_to_left"))
                x = self._mean_along(x, along_columns, ("top_to_bottom", "bottom_to_top"))
        refined = x.clamp_min(PROB_FLOOR).log().to(coarse.dtype)
        return refined.new_zeros(()), refined

    def schedule(self) -> list[float]:
        """The spatial scale of each iteration: sigma_i = sigma * sqrt(3) * 2^(n-i-1) / sqrt(4^n - 1), whose
        variances add up to sigma^2 (Gastal and Oliveira, eq. 14)."""
        n = self.iterations
        return [self.spatial_sigma * math.sqrt(3) * 2 ** (n - i - 1) / math.sqrt(4**n - 1) for i in range(n)]

    def _links(self, difference: torch.Tensor, sigma: float) -> torch.Tensor:
        """The gate between each pair of neighbours: a ** (1 + sigma / range_sigma * colour difference)."""
        a = math.exp(-math.sqrt(2) / sigma)
        return torch.pow(a, 1 + (sigma / self.range_sigma) * difference)

    def _mean_along(self, x: torch.Tensor, links: torch.Tensor, directions: tuple[str, str]) -> torch.Tensor:
        """The weighted mean of x along rows or columns (the two opposite `directions`), the weight of a pixel the
        product of the links between it and the pixel averaged for.

        Each of the two scans, run on x / (1 - g), is h = x + g h_prev: the sum over the pixels behind of their x
        times the product of the links, plus x itself. Both scans' sums (the pixel counted once), divided by the
        sums of weights, are the mean; x holds probabilities, so the weights are the sums over the classes (no map
        of ones to scan). (The plain recurrence, an exponential moving average, would give the
        first pixel after an edge the weight of all that follow it, and a stray band along an edge would stay.)"""
        maps = x.unsqueeze(2)  # (N, K, 1, H, W): the K maps share the gates
        sums = []
        for direction in directions:
            gate = F.pad(links, _BEHIND[direction])  # (N, 1, H, W): each pixel's link to the one behind it, 0 first
            zero = torch.zeros_like(gate)
            gates = torch.cat([zero, gate, zero], 1).unsqueeze(2)  # only the straight neighbour: (N, 3, 1, H, W)
            sums.append(propagate(maps / (1 - gate).unsqueeze(1), gates, direction, backend=self.backend))
        total = sums[0].add_(sums[1]).sub_(maps)  # in place: each full-size temporary costs as much as a scan
        return total.div_(total.sum(1, keepdim=True)).squeeze(2)


def spn_colour(*, spatial_sigma: float = 40.0, range_sigma: float = 0.2, iterations: int = 2,
               rounds: int = 1) -> ColourPropagation:
    return ColourPropagation(spatial_sigma=spatial_sigma, range_sigma=range_sigma, iterations=iterations,
                             rounds=rounds)
