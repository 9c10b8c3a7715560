"""The SPN refiner (Liu et al., "Learning Affinity via Spatial Propagation Networks", NIPS 2017).

Coarse class probabilities are encoded to hidden maps at half resolution, propagated in four directions with
gates from the guidance network (node-wise max over directions, twice, the second pass reusing the gates, as in
the authors' Caffe model), upsampled and decoded to refined logits. Two forms:
- universal: every class map is refined on its own with shared weights (1 channel in, C hidden, 1 out), so one
  set of weights serves any label set, binary masks included;
- joint: the released VOC form, all K class probabilities in, K logits out.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.guidance import GuidanceNet
from refine_cli.ops import propagate_directions
from refine_cli.ops.class_map import class_map
from refine_cli.ops.propagate import Backend, GateNorm


RESIDUAL_EPS = 1e-3  # floor of the coarse probabilities whose log a residual refiner adds to its logits
KEEP_BIAS = 4.0  # an untrained keep gate keeps sigmoid(4) = 98 % of log(coarse): the refiner starts near the identity


class SpatialPropagation(nn.Module):
    """Four directional scans merged by element-wise max, `passes` times with the same gates. No parameters.

    gate_norm: how raw gates are made stable (`refine_cli.ops.normalize_gates`).
    backend: the kernel `propagate` uses ("auto" picks the fastest for the device).
    """

    def __init__(self, *, passes: int = 2, gate_norm: GateNorm = "bounded", backend: Backend = "auto") -> None:
        super().__init__()
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.passes, self.gate_norm, self.backend = passes, gate_norm, backend

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x: (N, K, C, h, w) float, K groups of C hidden maps that share the gates.
        gates: (N, 4, 3, C, h, w) raw gates (directions in the order of `refine_cli.ops.DIRECTIONS`).
        Returns (N, K, C, h, w) in x's dtype."""
        for _ in range(self.passes):
            x = propagate_directions(x, gates, gate_norm=self.gate_norm, backend=self.backend)
        return x


class SPNRefiner(nn.Module):
    """(image, coarse probabilities) -> refined logits.

    guidance: the gate network; its `channels` is the hidden width C.
    per_class: True for the universal form (each class map refined alone, shared weights, any K);
        False for the joint form (exactly `classes` maps in and out).
    classes: the class count of the joint form (ignored by the universal form, which is 1 in / 1 out).
    mid_channels: width of the 3x3 conv between the upsampled hidden maps and the logits.
    decode_at: "full" as released (hidden maps upsampled x2, then the two decoder convs at full resolution), or
        "half" (the decoder convs on the propagated maps at half resolution, then only the logits upsampled x2:
        4x fewer decoder operations and no full-size hidden maps, the compact refiner's choice for CPU speed).
    residual: add log(coarse) (clamped at `RESIDUAL_EPS`) to the decoded logits, the last conv starting at zero, so
        the untrained refiner returns the coarse prediction unchanged and training learns only corrections. Not in
        the release, which decodes the logits from the propagated maps alone and must first learn to reproduce the
        coarse map: at CPU budgets the released form ended worse than its input, on training images too.
    keep_gate: (residual only) also decode, per pixel and class, how much of log(coarse) to keep, so that a hard
        one-hot input, whose log is 0 or log(RESIDUAL_EPS), can be overruled by a small correction where the
        refiner doubts it and left alone elsewhere. Not in the release.
    prototype: (universal only) each class map enters with a second map, how much every pixel looks like the
        class as a whole (`prototype_similarity` of the guidance network's features): non-local evidence that a
        local scan lacks, for holes, stray blobs and whole regions of the wrong class. Not in the release.
    """

    # The encoder's 4x4 stride-2 convolution (padding 1) needs two pixels each way; the pipeline pads smaller inputs.
    min_side = 2
    full_resolution = False  # on a CPU the pipeline may run it on a scaled-down copy (`refiner_side`)
    channels_last = True  # its guidance network's convolutions take NHWC images

    def __init__(
        self,
        *,
        guidance: GuidanceNet,
        per_class: bool,
        classes: int = 1,
        mid_channels: int = 16,
        passes: int = 2,
        gate_norm: GateNorm = "bounded",
        decode_at: Literal["full", "half"] = "full",
        residual: bool = False,
        keep_gate: bool = False,
        prototype: bool = False,
    ) -> None:
        super().__init__()
        if keep_gate and not residual:
            raise ValueError("keep_gate weighs the coarse map a residual refiner adds; it needs residual=True")
        if decode_at not in ("full", "half"):
            raise ValueError(f"decode_at must be 'full' or 'half', got {decode_at!r}")
        hidden = guidance.channels
        self.decode_at = decode_at
        maps = 1 if per_class else classes
        self.per_class, self.classes = per_class, maps
        self.guidance = guidance
        if prototype and not per_class:
            raise ValueError("prototype similarity is a per-class input of the universal refiner")
        self.prototype = prototype
        self.encode = nn.Conv2d(maps * (2 if prototype else 1), hidden, 4, stride=2, padding=1)
        self.propagation = SpatialPropagation(passes=passes, gate_norm=gate_norm)
        self.decode_mid = nn.Conv2d(hidden, mid_channels, 3, padding=1)
        self.keep_gate = keep_gate
        self.decode_out = nn.Conv2d(mid_channels, maps * (2 if keep_gate else 1), 3, padding=1)
        self.residual = residual
        if residual:
            nn.init.zeros_(self.decode_out.weight)
            nn.init.zeros_(self.decode_out.bias)

    def forward(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """image: (N, 3, H, W) float, normalised for the guidance network (ImageNet mean/std, RGB), H, W >= `min_side`.
        coarse: (N, K, H, W) float class probabilities in [0, 1] (K any for the universal form, `classes` for
            the joint form).
        Returns refined logits (N, K, H, W), float, in coarse's dtype: `keep * log(coarse) + correction` of
        `forward_parts` (log(coarse) floored at `RESIDUAL_EPS`)."""
        keep, correction = self.forward_parts(image, coarse)
        if not self.residual:
            return correction
        return keep * coarse.clamp_min(RESIDUAL_EPS).log() + correction

    def forward_parts(self, image: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined logits in two parts, so that a caller can compose them with a coarse map of another size
        (the pipeline upsamples both and applies them to the full-size coarse map):
        keep: how much of log(coarse) the logits keep: 1 for a residual refiner, a learned weight in (0, 1) per
            pixel and class with `keep_gate` (about 0.98 untrained), 0 for a refiner that decodes its logits alone;
            a tensor broadcastable to (N, K, H, W).
        correction: (N, K, H, W), what is added."""
        if image.shape[0] != coarse.shape[0] or image.shape[-2:] != coarse.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape)} and coarse {tuple(coarse.shape)} must share batch and size"
            )
        n, k, height, width = coarse.shape
        if not self.per_class and k != self.classes:
            raise ValueError(f"this refiner takes {self.classes} class maps, got {k}")
        groups = k if self.per_class else 1
        if self.prototype:
            features, gates = self.guidance.features_and_gates(image)
            similarity = prototype_similarity(features, coarse)
            maps = torch.stack([coarse, _resize(similarity, height, width)], dim=2).flatten(0, 1)
        else:
            gates = self.guidance(image)
            maps = coarse.reshape(n * groups, self.classes, height, width)
        hidden = self.encode(maps)
        hidden = hidden.view(n, groups, *hidden.shape[1:])
        hidden = self.propagation(hidden, gates.to(hidden.dtype)).flatten(0, 1)
        if self.decode_at == "full":
            hidden = _resize(hidden, height, width)
        out = self.decode_out(F.relu(self.decode_mid(hidden), inplace=True))
        if self.decode_at == "half":
            out = _resize(out, height, width)
        if self.keep_gate:
            correction = out[:, : self.classes].reshape(n, k, height, width)
            keep = torch.sigmoid(out[:, self.classes :] + KEEP_BIAS).reshape(n, k, height, width)
            return keep, correction
        keep = torch.ones((), dtype=out.dtype, device=out.device) if self.residual else out.new_zeros(())
        return keep, out.reshape(n, k, height, width)


def prototype_similarity(features: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """features: (N, D, h, w); coarse: (N, K, H, W) class probabilities -> (N, K, h, w) cosine similarity in [-1, 1]
    of each pixel's feature vector with class k's prototype, the mean feature vector weighted by p_k (at the
    features' size, area-averaged). A class with no weight gets similarity 0."""
    f = F.normalize(features.float(), dim=1)
    p = F.adaptive_avg_pool2d(coarse.float(), f.shape[-2:]) if coarse.shape[-2:] != f.shape[-2:] else coarse.float()
    weight = p.flatten(2)  # (N, K, hw)
    prototypes = torch.bmm(weight, f.flatten(2).transpose(1, 2)) / weight.sum(-1, keepdim=True).clamp_min(1e-6)
    prototypes = F.normalize(prototypes, dim=-1)  # (N, K, D)
    similarity = torch.bmm(prototypes, f.flatten(2))  # (N, K, hw)
    return similarity.view(*p.shape).to(features.dtype)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)


def present_classes(scores: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) scores -> (N, K) bool: which classes win at least one pixel of each image."""
    n, k = scores.shape[:2]
    # A count per (image, class): a scatter of every pixel into (N, K) serialises on a few cells (~10x slower on CPU).
    labels = class_map(scores)
    if n > 1:  # image i's classes counted at i * k + class
        labels = labels + torch.arange(n, device=scores.device)[:, None, None] * k
    return torch.bincount(labels.flatten(), minlength=n * k).view(n, k) > 0


def suppress_absent_classes(logits: torch.Tensor, coarse: torch.Tensor, *,
                            present: torch.Tensor | None = None) -> torch.Tensor:
    """The released test-time rule: classes absent from the coarse argmax are zeroed in the refined output.
    logits, coarse: (N, K, H, W); present: `present_classes(coarse)` when the caller has it already. Returns logits
    with -inf for every class no coarse pixel votes for."""
    present = present_classes(coarse) if present is None else present
    if bool(present.all()):
        return logits
    return logits.masked_fill(~present[:, :, None, None], float("-inf"))


def spn_universal(
    *,
    guidance_width: float = 1.0,
    guidance_batch_norm: bool = False,
    hidden: int = 16,
    mid_channels: int = 16,
    passes: int = 2,
    gate_norm: GateNorm = "bounded",
    half_skip: bool = False,
    gate_kernel: int = 3,
    decode_at: Literal["full", "half"] = "full",
    residual: bool = False,
    keep_gate: bool = False,
    prototype: bool = False,
    edge_sigma: float | None = None,
) -> SPNRefiner:
    """The universal refiner: each class map propagated alone with shared weights (1 in, `hidden` channels at half
    resolution, 1 out), the class-agnostic form of the SPN slides. Gates normalised where their magnitudes exceed 1
    (the authors' PyTorch module). Reported (VOC 2012 val, trained on FCN-8s outputs, applied unchanged):
    FCN-8s 65.51 -> 69.86, DeepLab-VGG16 68.97 -> 73.12, DeepLab-ResNet-101 76.46 -> 79.76 mIoU."""
    guidance = GuidanceNet(
        channels=hidden,
        width=guidance_width,
        batch_norm=guidance_batch_norm,
        half_skip=half_skip,
        gate_kernel=gate_kernel,
        edge_sigma=edge_sigma,
    )
    return SPNRefiner(
        guidance=guidance,
        per_class=True,
        mid_channels=mid_channels,
        passes=passes,
        gate_norm=gate_norm,
        decode_at=decode_at,
        residual=residual,
        keep_gate=keep_gate,
        prototype=prototype,
    )


def spn_voc21(
    *,
    classes: int = 21,
    guidance_width: float = 1.0,
    hidden: int = 32,
    mid_channels: int = 64,
    passes: int = 2,
    gate_norm: GateNorm = "unit_sum",
) -> SPNRefiner:
    """The SPN as released for VOC: 21 class probabilities -> 4x4 stride-2 conv to 32 hidden channels -> four
    directions twice with max -> bilinear x2 -> 3x3 conv 64 + ReLU -> 3x3 conv to 21 logits. Gates divided by the
    sum of their magnitudes everywhere, as in the authors' Caffe VOC model."""
    guidance = GuidanceNet(channels=hidden, width=guidance_width)
    return SPNRefiner(
        guidance=guidance,
        per_class=False,
        classes=classes,
        mid_channels=mid_channels,
        passes=passes,
        gate_norm=gate_norm,
    )
