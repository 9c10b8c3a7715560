"""What the training loop, the importers and the pipeline may ask of a network, declared once.

Every base network is an `nn.Module` mapping (N, 3, H, W) images to (N, K, H, W) logits; every refiner maps (image,
coarse probabilities) to logits through `forward_parts`. The optional abilities below are Protocols: a network has an
ability exactly when it defines the method, and callers test for it with `isinstance`, never by probing names. What a
registered name is (its kind, whether it trains, takes a fixed class count or has an auxiliary head) is a flag of its
`ModelSpec` (refine_cli/models/registry.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from refine_cli.models.common import SegOutput
from refine_cli.transforms import Preprocess


@runtime_checkable
class TrainsWithAux(Protocol):
    """A base network `train base` can train: its logits and, where it has one, the auxiliary head's."""

    def forward_train(self, x: torch.Tensor) -> SegOutput: ...


@runtime_checkable
class LoadsImageNetTrunk(Protocol):
    """A network (or a part of one, such as an SPN's guidance network) that starts training from an ImageNet
    classification checkpoint. `preprocess`: the input the network will be fed; returns the keys it set."""

    def load_imagenet_trunk(self, state_dict: Mapping[str, torch.Tensor], *,
                            preprocess: Preprocess | None = None) -> list[str]: ...


@runtime_checkable
class HasStages(Protocol):
    """A network trained in stages (`--stage`): the parameters one stage trains."""

    def trainable_parameters(self, stage: str) -> list[nn.Parameter]: ...


@runtime_checkable
class ReportsScalars(Protocol):
    """A network with learnt numbers worth logging each step (an adaptive receptive field's factor)."""

    def training_scalars(self) -> dict[str, float]: ...


@runtime_checkable
class TrainsNearBoundaries(Protocol):
    """A refiner whose training loss is counted only where it acts, within `band` px of the coarse map's boundaries,
    each pixel's loss clipped at `clip` (a pixel the coarse map is confidently wrong about, which no propagation can
    fix, would otherwise dominate): returns (band, clip); `refine-cli train refiner --loss-band/--loss-clip`
    override them."""

    def training_loss_band(self) -> tuple[int, float]: ...


@runtime_checkable
class GivesProbabilities(Protocol):
    """A refiner whose logits are the log of probabilities it computes (keep 0, correction their log): it gives the
    probabilities themselves, and the pipeline, which wants labels or probabilities, skips the log and the softmax
    that would undo it (a log costs as much as one of the refiner's steps on the CPU)."""

    def refine_probabilities(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Refines(Protocol):
    """A refiner. per_class: refines each class map alone (any class count) rather than a fixed set; full_resolution:
    the pipeline must run it on the full-size image; min_side: the smallest side it takes (smaller inputs are padded);
    channels_last: its convolutions gain from NHWC images, into which the pipeline then turns them (when its
    `channels_last` is on); False: it reads NCHW planes. forward_parts returns (keep, correction): the logits are
    keep * log(coarse) + correction."""

    per_class: bool
    full_resolution: bool
    min_side: int
    channels_last: bool

    def forward_parts(self, image: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
