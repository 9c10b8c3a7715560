"""The colour-gated spatial propagation refiner: the SPN's scans with gates read off the image's colours, run at full
resolution; a small learnt guidance network (`guidance`, `refine_cli.models.gate_guidance`) may modulate them.

The gate linking two neighbouring pixels is the domain-transform weight of Gastal and Oliveira (SIGGRAPH 2011),
a ** (1 + spatial_sigma / range_sigma * d), with d their L1 colour difference in [0, 1] RGB and
a = exp(-sqrt(2) / spatial_sigma): within a region of one colour a pixel reaches about `spatial_sigma` pixels,
across an edge almost nothing passes. Only the straight neighbour of the three-way scan is linked (a separable
filter: diagonal links spread a scan like a random walk, so a stray band along an edge mostly averages itself).

Each scan, run on unnormalised sums, gathers for every pixel the class maps behind it weighted by the products of
the links on the way; the two scans of an axis divided by the sums of weights give a weighted mean over the
pixel's stretch of its own region. Rows, then columns, `iterations` times with the spatial scale shrinking as in
the domain transform's schedule, every class map at once (one set of gates: any label set, binary masks
included; `refine_cli.ops.edge_mean`, one fused C++ kernel per step on CPU). Class probabilities are thereby
averaged within the image's regions: a coarse boundary that strays from the object's edge by a few pixels is pulled
back to it, and regions away from boundaries keep their class.

A path-bound average cannot move a boundary that strays further, nor cross a textured region whose inner edges stop
the scans. With `colour_weight` set, each class's colours around every pixel (local histograms,
`refine_cli.ops.colour_likelihood`) re-weigh its probabilities before the last iteration, which settles them: a
non-local colour term, as the dense CRF's appearance kernel is, at the cost of a count and a lookup per pixel.

How far to trust the colours depends on how far the coarse boundaries may stray. Probabilities say it themselves
(the network's uncertain bands); a hard mask does not, but its shape does: a mask whose boundaries carry no detail
finer than several pixels (a low-resolution network's blocks or blobs) was placed only to within that, while one
with pixel-fine detail (thin poles, sharp corners) mostly lies on its object's edges already. `mask_detail`
measures this per image, and hard masks without fine detail get a stronger colour weight (`smooth_mask_weight`).
A smooth mask may also be an accurate one: `mask_alignment` measures how closely its boundaries follow the image's
edges, and the closer they do, the less of that weight it gets, and the more of it comes back as given
(`smooth_mask_alignment`, `smooth_mask_kept`). The same share of smoothness lets the scans reach across fainter
edges (`smooth_mask_range`): such a mask's boundary may lie beyond faint texture edges that would stop them.
Probabilities say where they are sure: with `confident_kept`, a pixel's coarse probabilities come back in proportion
to its largest one, so the propagation moves what the network doubted and leaves its confident regions alone (thin
structures and small objects included, which averaging with their surroundings erodes). With `texture_reach`, an
edge's colour difference is judged against the texture around it (`texture_normalised`): the inner edges of
textured regions stop the scans less, the edges between plain regions more. With `guidance`, a network trained on
real photographs rescales every colour difference and can close a gate where no colour edge shows: which edges
are objects' outlines is learnt rather than read off one fixed measure.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.gate_guidance import GateGuidance
from refine_cli.ops import cpp
from refine_cli.ops.class_map import class_map
from refine_cli.ops.colour_likelihood import box_mean, box_sum, colour_models, reweigh
from refine_cli.ops.edge_mean import EdgeMeanBackend, edge_mean

PROB_FLOOR = 1e-6  # the propagated probabilities are returned as log(p), floored here
LOSS_BAND, LOSS_CLIP = 8, 3.0  # `training_loss_band`
TEXTURE_FLOOR = 0.05  # `texture_normalised`: a mean colour difference (L1 over RGB in [0, 1]) this small is no texture


class Trust(NamedTuple):
    """How far `ColourPropagation` trusts each image's coarse map, all (N,): `weight` the colour models' weight,
    `kept` the share of the coarse map that comes back as given, `smooth` the share of a smooth hard mask's settings it
    gets (1 for a blobby or blocky mask off the image's edges, 0 for probabilities and detailed masks), all float32;
    `hard` bool, whether it is a hard mask (most pixels exactly one-hot) rather than probabilities."""

    weight: torch.Tensor
    kept: torch.Tensor
    smooth: torch.Tensor
    hard: torch.Tensor


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
    colour_weight: 0, or how much the local colour models (`refine_cli.ops.colour_likelihood`) count: before the
        last iteration of the last round, each pixel's probabilities are multiplied by its colour's likelihood under
        each class's model (built from the mask propagated so far, in blocks of `colour_block` pixels and their
        neighbours) raised to this power; the last, shortest-reaching iteration then settles them among their
        neighbours. The colours of a class seen tens of pixels away move a boundary that the local average alone
        leaves where a blobby mask put it.
    colour_bins: None (every class's histograms quantise each colour channel into 8 levels), or how many bins all
        the classes' histograms may hold together: each channel gets more levels (at most 16) while their cube, times
        the number of classes, fits. With fewer classes each has more pixels to fill a finer histogram, and the
        table (the models' time and memory) grows no larger than with 8 levels and colour_bins / 512 classes.
    smooth_mask_weight: None, or the colour weight for a hard mask (most pixels exactly one-hot) without fine
        detail: its `mask_detail` at most `smooth_mask_detail[0]` gets this weight, at least `smooth_mask_detail[1]`
        gets `colour_weight`, and the weight goes linearly between. Probabilities always get `colour_weight`.
    smooth_mask_alignment: None, or (low, high): a smooth mask whose boundary already lies on the image's edges
        (`mask_alignment` at least `high`) is accurate, not blobby, and gets `colour_weight`; at most `low`, the whole
        smooth-mask weight; linearly between.
    smooth_mask_kept: None, or (low, high): a smooth hard mask whose boundary lies on the image's edges still closer
        (alignment at least `high`) comes back as given (its probabilities, blended into the refined ones from
        `low` up): even the plain propagation moves such a mask's boundaries off its edges. Needs
        `smooth_mask_weight`.
    smooth_mask_range: None, or the range_sigma for a smooth hard mask (the share of `smooth_mask_weight` it gets,
        after `smooth_mask_alignment`, goes from range_sigma to this: the gates' exponent is linear in its
        inverse): larger lets the scans carry a blobby boundary across the faint edges of texture. Needs
        `smooth_mask_weight`.
    confident_kept: None, or a power g: probabilities (not hard masks) come back as given at each pixel in the share
        p^g, p its largest coarse probability (at g = 16: half at p = 0.96, a sixth at 0.9, none to speak of below 0.8).
    colour_confidence: None, or a power c: each pixel counts in its class's colour models by how sure the map
        propagated so far is of it, (best - second best probability)^c, rather than 1. The band of doubt along a
        coarse boundary holds the neighbouring class's colours as much as its own class's; counted in full, it
        teaches each model the other's colours, most where the boundary strays furthest.
    texture_reach: None, or a radius in pixels: the colour differences the gates read are first measured against the
        texture within it (`texture_normalised`, with `texture_power`), so that the scans cross the inner edges of
        foliage or gravel and stop at an edge between two plain regions.
    guidance: None, or a number of channels: a learnt `refine_cli.models.gate_guidance.GateGuidance` of that width
        modulates the colour differences (last, after the texture and smooth-mask scales), the SPN's guidance
        network in a form that keeps the gates at full resolution. Its weights are the checkpoint's only tensors.
    """

    per_class = True  # every class map is propagated the same way: any label set
    full_resolution = True  # the pipeline runs it on the full-size image, never on a scaled-down copy
    channels_last = False  # it reads each colour channel as one NCHW plane (its guidance too small to gain from NHWC)
    min_side = 1

    def __init__(self, *, spatial_sigma: float = 40.0, range_sigma: float = 0.2, iterations: int = 2, rounds: int = 1,
                 colour_weight: float = 0.0, colour_block: int = 32, colour_bins: int | None = None,
                 smooth_mask_weight: float | None = None, smooth_mask_detail: tuple[float, float] = (0.2, 0.3),
                 smooth_mask_alignment: tuple[float, float] | None = None,
                 smooth_mask_kept: tuple[float, float] | None = None, smooth_mask_range: float | None = None,
                 confident_kept: float | None = None, colour_confidence: float | None = None,
                 texture_reach: int | None = None, texture_power: float = 0.5, guidance: int | None = None,
                 guidance_oriented: bool = False, backend: EdgeMeanBackend = "auto") -> None:
        super().__init__()
        if spatial_sigma <= 0 or range_sigma <= 0 or iterations < 1 or rounds < 1:
            raise ValueError("spatial_sigma and range_sigma must be positive, iterations and rounds at least 1; got "
                             f"{spatial_sigma}, {range_sigma}, {iterations}, {rounds}")
        if colour_weight < 0 or colour_block < 1 or (colour_bins is not None and colour_bins < 1):
            raise ValueError(f"colour_weight must be at least 0, colour_block and colour_bins at least 1; "
                             f"got {colour_weight}, {colour_block}, {colour_bins}")
        low, high = smooth_mask_detail
        if smooth_mask_weight is not None and (smooth_mask_weight < 0 or not 0 <= low < high):
            raise ValueError(f"smooth_mask_weight must be at least 0 and smooth_mask_detail (low, high) with "
                             f"0 <= low < high; got {smooth_mask_weight}, {smooth_mask_detail}")
        if smooth_mask_range is not None and not smooth_mask_range > 0:
            raise ValueError(f"smooth_mask_range must be positive; got {smooth_mask_range}")
        if confident_kept is not None and not confident_kept > 0:
            raise ValueError(f"confident_kept must be positive; got {confident_kept}")
        if colour_confidence is not None and not colour_confidence > 0:
            raise ValueError(f"colour_confidence must be positive; got {colour_confidence}")
        if texture_reach is not None and (texture_reach < 1 or not texture_power > 0):
            raise ValueError(f"texture_reach must be at least 1 and texture_power positive; got {texture_reach}, "
                             f"{texture_power}")
        for name, given in (("smooth_mask_alignment", smooth_mask_alignment), ("smooth_mask_kept", smooth_mask_kept)):
            if given is not None and not 0 <= given[0] < given[1]:
                raise ValueError(f"{name} (low, high) needs 0 <= low < high; got {given}")
        self.smooth_mask_weight = None if smooth_mask_weight is None else float(smooth_mask_weight)
        self.smooth_mask_detail = (float(low), float(high))
        self.smooth_mask_alignment = None if smooth_mask_alignment is None else \
            (float(smooth_mask_alignment[0]), float(smooth_mask_alignment[1]))
        self.smooth_mask_kept = None if smooth_mask_kept is None else \
            (float(smooth_mask_kept[0]), float(smooth_mask_kept[1]))
        self.smooth_mask_range = None if smooth_mask_range is None else float(smooth_mask_range)
        self.confident_kept = None if confident_kept is None else float(confident_kept)
        self.colour_confidence = None if colour_confidence is None else float(colour_confidence)
        self.texture_reach, self.texture_power = texture_reach, float(texture_power)
        self.rounds = rounds
        self.colour_weight, self.colour_block, self.colour_bins = float(colour_weight), colour_block, colour_bins
        self.spatial_sigma, self.range_sigma, self.iterations = float(spatial_sigma), float(range_sigma), iterations
        self.backend = backend
        if guidance is not None and guidance < 1:
            raise ValueError(f"guidance must be a number of channels, at least 1; got {guidance}")
        self.guidance = None if guidance is None else GateGuidance(guidance, oriented=guidance_oriented)

    def training_loss_band(self) -> tuple[int, float]:
        """`TrainsNearBoundaries`: the guidance learns from the pixels within 8 px of the coarse boundaries, each
        pixel's negative log-likelihood clipped at 3. Counted everywhere and unclipped, it learnt to blur every gate
        (the pixels no propagation can fix outweigh the rest: weights/README.md, the model card)."""
        return LOSS_BAND, LOSS_CLIP

    def forward(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """image: (N, 3, H, W) RGB in [0, 1]; coarse: (N, K, H, W) probabilities. Returns (N, K, H, W) log
        probabilities (floored at PROB_FLOOR): the log of `refine_probabilities`."""
        return self.forward_parts(image, coarse)[1]

    def forward_parts(self, image: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `SPNRefiner.forward_parts`: keep 0 (nothing of log(coarse) is added back) and the refined log
        probabilities (floored at PROB_FLOOR) as the correction."""
        refined = self.refine_probabilities(image, coarse).clamp_min_(PROB_FLOOR).log_().to(coarse.dtype)
        return refined.new_zeros(()), refined

    def refine_probabilities(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """image: (N, 3, H, W) RGB in [0, 1]; coarse: (N, K, H, W) probabilities. Returns (N, K, H, W) float32
        refined probabilities, summing to 1 over the classes (`refine_cli.models.contract.GivesProbabilities`)."""
        if image.shape[0] != coarse.shape[0] or image.shape[-2:] != coarse.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and coarse {tuple(coarse.shape)} must share batch and size")
        image = image.float()
        weight, kept, smooth, hard = self.trust(coarse, image)
        # Floored, so that no sum decays into subnormal floats (slow), and renormalised over the classes given (the
        # pipeline passes only those some pixel votes for).
        x = coarse.float().clamp_min(PROB_FLOOR).contiguous()  # each class map one plane, as the scans read it
        x = x.div_(x.sum(1, keepdim=True))  # x is a new tensor (clamp_min): divided in place
        keep = self._kept(x, kept, hard)
        given = x if keep is not None else None  # held only when some of it comes back (memory)
        # Colour differences between neighbours, the same at every scale: along rows and along columns.
        across_columns = (image[..., 1:] - image[..., :-1]).abs().sum(1)  # (N, H, W-1)
        across_rows = (image[..., 1:, :] - image[..., :-1, :]).abs().sum(1)  # (N, H-1, W)
        if self.texture_reach is not None:
            across_columns, across_rows = texture_normalised(across_columns, across_rows, self.texture_reach,
                                                             self.texture_power)
        scale = self._difference_scale(smooth)
        if scale is not None:  # smooth masks' differences count for less: their scans reach across fainter edges
            across_columns, across_rows = across_columns * scale, across_rows * scale
        if self.guidance is not None:  # the learnt guidance: which edges to trust, which to cross
            across_columns, across_rows = self.guidance.modulate(image, across_columns, across_rows)
        links = [(self._links(across_columns, s), self._links(across_rows, s)) for s in self.schedule()]
        for round_ in range(self.rounds):
            if round_:  # the previous round's mask, one-hot (floored as above)
                x = F.one_hot(class_map(x), x.shape[1]).movedim(-1, 1).float().clamp_min(PROB_FLOOR)
                x = x / x.sum(1, keepdim=True)
            if round_ < self.rounds - 1 or not bool(weight.any()):
                x = self._propagate(x, links)
                continue
            x = self._propagate(x, links[:-1])
            # Re-weighed before the last iteration, which then costs nothing extra: a colour model's stray pixels are
            # averaged with their neighbours, and (measured on the train splits) sharp masks keep their mIoU, which
            # a further propagation after the whole schedule lowered.
            power = float(weight[0]) if bool((weight == weight[0]).all()) else weight  # one number: no pass at 1
            models = colour_models(image, x, block=self.colour_block, levels=self.colour_levels(x.shape[1]),
                                   power=power, confidence=self.colour_confidence or 0.0, backend=self.backend)
            x = self._propagate(reweigh(x, models, floor=PROB_FLOOR, backend=self.backend), links[-1:])
        if given is not None:  # the propagation returns new tensors: `given` is still the coarse map
            x = x.lerp_(given, keep)
        return x

    def trust(self, coarse: torch.Tensor, image: torch.Tensor) -> Trust:
        """Per image of (N, K, H, W) coarse probabilities and (N, 3, H, W) RGB images: how far its coarse map is
        trusted (`Trust`)."""
        n = coarse.shape[0]
        weight = torch.full((n,), self.colour_weight, device=coarse.device)
        kept = torch.zeros((n,), device=coarse.device)
        if coarse.shape[1] < 2:  # one class: every pixel is one-hot
            return Trust(weight, kept, torch.zeros_like(kept), torch.ones_like(kept, dtype=torch.bool))
        # (N,): given as a mask, not probabilities: most pixels exactly one-hot, judged on every 4th row and column
        # (a maximum over the class axis strides through the maps: 0.6 ms for 11 classes at 480 x 360, 0.2 so).
        hard = (coarse[..., ::4, ::4].amax(1) == 1).flatten(1).float().mean(1) >= 0.5
        if self.smooth_mask_weight is None or not bool(hard.any()):
            return Trust(weight, kept, torch.zeros_like(kept), hard)
        labels = class_map(coarse)
        low, high = self.smooth_mask_detail
        smooth = ((high - mask_detail(coarse, labels=labels)) / (high - low)).clamp_(0, 1) * hard
        if (self.smooth_mask_alignment or self.smooth_mask_kept) and bool((smooth > 0).any()):
            alignment = mask_alignment(image.float(), labels)
            if self.smooth_mask_kept is not None:
                low, high = self.smooth_mask_kept
                kept = smooth * ((alignment - low) / (high - low)).clamp_(0, 1)
            if self.smooth_mask_alignment is not None:
                low, high = self.smooth_mask_alignment
                smooth = smooth * ((high - alignment) / (high - low)).clamp_(0, 1)
        return Trust(weight + (self.smooth_mask_weight - weight) * smooth, kept, smooth, hard)

    def _kept(self, x: torch.Tensor, kept: torch.Tensor, hard: torch.Tensor) -> torch.Tensor | None:
        """The share of the (N, K, H, W) coarse probabilities `x` that comes back as given: None (none of it),
        (N, 1, 1, 1) smooth hard masks' `kept`, or (N, 1, H, W) with `confident_kept` for probabilities."""
        keep = kept.view(-1, 1, 1, 1) if bool(kept.any()) else None
        if self.confident_kept is None or bool(hard.all()):
            return keep
        confident = x.amax(1, keepdim=True).pow_(self.confident_kept).mul_((~hard).view(-1, 1, 1, 1))
        return confident if keep is None else confident.add_(keep)  # `kept` is 0 where the image is not hard

    def colour_levels(self, classes: int) -> int:
        """Levels per colour channel of each class's histograms (`colour_bins`)."""
        levels = 8
        while self.colour_bins is not None and levels < 16 and (levels + 1) ** 3 * classes <= self.colour_bins:
            levels += 1
        return levels

    def _propagate(self, x: torch.Tensor, links: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        for along_rows, along_columns in links:
            x = edge_mean(x, along_rows, 3, backend=self.backend)
            x = edge_mean(x, along_columns, 2, backend=self.backend)
        return x

    def schedule(self) -> list[float]:
        """The spatial scale of each iteration: sigma_i = sigma * sqrt(3) * 2^(n-i-1) / sqrt(4^n - 1), whose
        variances add up to sigma^2 (Gastal and Oliveira, eq. 14)."""
        n = self.iterations
        return [self.spatial_sigma * math.sqrt(3) * 2 ** (n - i - 1) / math.sqrt(4**n - 1) for i in range(n)]

    def _difference_scale(self, smooth: torch.Tensor) -> torch.Tensor | None:
        """(N,) smooth shares -> None (every image at range_sigma) or (N, 1, 1): range_sigma over each image's own
        (`smooth_mask_range`), what its colour differences are multiplied by."""
        if self.smooth_mask_range is None or not bool((smooth > 0).any()):
            return None
        return (1 + (self.range_sigma / self.smooth_mask_range - 1) * smooth).view(-1, 1, 1)

    def _links(self, difference: torch.Tensor, sigma: float) -> torch.Tensor:
        """The gate between each pair of neighbours: a ** (1 + sigma / range_sigma * colour difference)."""
        log_a = -math.sqrt(2) / sigma  # exp(log a * ...): torch.pow with a scalar base is several times slower
        return torch.exp(difference.mul(log_a * sigma / self.range_sigma).add_(log_a))


def boundary_pixels(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels -> bool (N, H, W): `refine_cli.labels.boundary_map`'s lines (a label change to the right or
    below), for tensors on any device."""
    edges = torch.zeros_like(labels, dtype=torch.bool)
    edges[..., :-1] |= labels[..., :-1] != labels[..., 1:]
    edges[..., :-1, :] |= labels[..., :-1, :] != labels[..., 1:, :]
    return edges


def mask_detail(coarse: torch.Tensor, size: int = 7, *, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K, H, W) class scores -> (N,) float32: how much detail each image's label map (its argmax) carries at a
    scale of a few pixels. The one-hot map is smoothed (a `size` x `size` box sum, twice) and the pixels whose
    label the smoothing changes (the first best on ties) are counted, per pixel of boundary
    (`refine_cli.labels.boundary_map`'s lines). Smooth or blocky boundaries lose only the corners the smoothing
    rounds. Medians on DAVIS and CamVid train: 0.13 for the compact DeepLab-LargeFOV's masks (a stride-8 network's
    bilinear blobs), 0.23 for ground truth made blocks of 16 px, 0.24 for ESPNetv2's foreground; thin structures
    and pixel-fine turns lose more: 0.37 for the compact FCN-8s, 0.47 for blocks of 8 px, 0.54 for ESPNet's
    full-resolution masks. Integer sums: the same on every CPU, and from the C++ kernel and PyTorch alike.
    `labels`: `class_map(coarse)`, when the caller has it already."""
    if not 1 <= size <= 15:
        raise ValueError(f"mask_detail smooths over 1 to 15 pixels; got {size}")
    labels = class_map(coarse) if labels is None else labels
    reach = size // 2
    if labels.device.type == "cpu" and cpp.available():  # one pass per image (csrc/colour_model_cpu.cpp)
        changed, boundary = torch.ops.refine_cli_colour.mask_detail_counts(labels, coarse.shape[1], reach).unbind(1)
        return changed.float() / boundary.clamp_min(1).float()
    counts = torch.zeros(coarse.shape, dtype=torch.uint8, device=coarse.device).scatter_(1, labels[:, None], 1)
    counts = box_sum(box_sum(counts, 3, reach), 2, reach)  # at most size^2: fits uint8 up to size 15
    counts = counts.to(torch.int16 if size**4 < 2**15 else torch.int32)
    counts = box_sum(box_sum(counts, 3, reach), 2, reach)  # at most size^4
    changed = (class_map(counts.float()) != labels).flatten(1).sum(1)
    return changed.float() / boundary_pixels(labels).flatten(1).sum(1).clamp_min(1).float()


def colour_gradient(across_columns: torch.Tensor, across_rows: torch.Tensor) -> torch.Tensor:
    """The colour differences to the right (N, H, W-1) and below (N, H-1, W) -> (N, H, W) float32: each pixel's larger
    one (0 past the last column and row)."""
    n, h, w = across_rows.shape[0], across_columns.shape[1], across_rows.shape[2]
    gradient = across_columns.new_zeros((n, h, w), dtype=torch.float32)
    gradient[..., :-1] = across_columns
    gradient[..., :-1, :] = torch.maximum(gradient[..., :-1, :], across_rows)
    return gradient


def texture_normalised(across_columns: torch.Tensor, across_rows: torch.Tensor, reach: int,
                       power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour differences between neighbours (as `ColourPropagation` reads them) measured against the texture around
    them: each is multiplied by ((m + TEXTURE_FLOOR) / (t + TEXTURE_FLOOR))^power, t the mean `colour_gradient`
    within `reach` pixels (a square, the image's pixels only) averaged over the two neighbours, m the image's mean.
    Within foliage, gravel or a patterned wall the many inner edges count for less and the scans cross them; an
    edge between two plain regions counts for more. (The contrast normalisation of boundary detectors: an edge is
    judged by its surroundings.)"""
    gradient = colour_gradient(across_columns, across_rows)
    local = box_mean(gradient, reach)
    mean = gradient.mean((1, 2), keepdim=True)
    factor = local.add_(TEXTURE_FLOOR).reciprocal_().mul_(mean + TEXTURE_FLOOR).pow_(power)
    return (across_columns * (factor[..., 1:] + factor[..., :-1]).mul_(0.5),
            across_rows * (factor[..., 1:, :] + factor[..., :-1, :]).mul_(0.5))


def mask_alignment(image: torch.Tensor, labels: torch.Tensor, reach: int = 5) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] and (N, H, W) labels -> (N,) float32: how well each label map's boundaries lie on
    the image's edges: the mean colour gradient (the larger L1 difference to the right or below) on its boundary
    pixels over the mean within `reach` pixels of them (a square). About 1 for a boundary that ignores the image
    (medians on DAVIS and CamVid train: 1.04 for blocks of 16 px, 1.10 for the compact DeepLab's masks), higher the
    closer it follows the edges (1.40 for ground truth coarsened at stride 8 and enlarged bilinearly, 1.55 for the
    ground truth itself)."""
    gradient = colour_gradient((image[..., 1:] - image[..., :-1]).abs().sum(1),
                               (image[..., 1:, :] - image[..., :-1, :]).abs().sum(1))
    edges = boundary_pixels(labels)
    # Within `reach` of a boundary pixel (a square): a box count of them, in uint8 while it holds (2 * reach + 1)^2.
    near = box_sum(box_sum(edges.to(torch.uint8 if reach <= 7 else torch.int32), 2, reach), 1, reach) > 0
    on = (gradient * edges).flatten(1).sum(1) / edges.flatten(1).sum(1).clamp_min(1)
    around = (gradient * near).flatten(1).sum(1) / near.flatten(1).sum(1).clamp_min(1)
    return on / around.clamp_min(1e-6)


def spn_colour(*, spatial_sigma: float = 40.0, range_sigma: float = 0.2, iterations: int = 2, rounds: int = 1,
               colour_weight: float = 0.0, colour_block: int = 32, colour_bins: int | None = None,
               smooth_mask_weight: float | None = None, smooth_mask_detail: tuple[float, float] = (0.2, 0.3),
               smooth_mask_alignment: tuple[float, float] | None = None,
               smooth_mask_kept: tuple[float, float] | None = None,
               smooth_mask_range: float | None = None, confident_kept: float | None = None,
               colour_confidence: float | None = None, texture_reach: int | None = None,
               texture_power: float = 0.5, guidance: int | None = None,
               guidance_oriented: bool = False) -> ColourPropagation:
    return ColourPropagation(spatial_sigma=spatial_sigma, range_sigma=range_sigma, iterations=iterations,
                             rounds=rounds, colour_weight=colour_weight, colour_block=colour_block,
                             colour_bins=colour_bins, smooth_mask_weight=smooth_mask_weight,
                             smooth_mask_detail=smooth_mask_detail, smooth_mask_alignment=smooth_mask_alignment,
                             smooth_mask_kept=smooth_mask_kept,
                             smooth_mask_range=smooth_mask_range, confident_kept=confident_kept,
                             colour_confidence=colour_confidence, texture_reach=texture_reach,
                             texture_power=texture_power, guidance=guidance, guidance_oriented=guidance_oriented)
