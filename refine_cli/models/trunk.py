"""What a segmentation trunk hands its heads (`TrunkFeatures`), and how an ImageNet classification
checkpoint loads into a trunk: keys renamed by a prefix, the classifier dropped, every shape checked first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from refine_cli.errors import WeightsError


class TrunkFeatures(NamedTuple):
    """out: the last feature map, the input of the main head.
    aux: the intermediate map the auxiliary head reads (torchvision's `return_layers["aux"]`)."""

    out: torch.Tensor
    aux: torch.Tensor


# Checkpoints saved before BatchNorm counted its batches lack these buffers; BatchNorm fills them in.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def load_classification_weights(
    trunk: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    width: float,
    prefix: str,
    head: tuple[str, ...],
    checkpoint: str,
) -> list[str]:
    """Copy the trunk part of an ImageNet classification state dict into `trunk`.

    A checkpoint key `prefix + k` fills the trunk's key `k`; keys starting with one of `head` (the
    classifier) are ignored. Nothing is copied unless every key fits: an unknown key, a missing trunk
    key or a shape mismatch raises `WeightsError`. `checkpoint` names the expected file in messages.
    Returns the trunk keys that were set, in the trunk's order.
    """
    if width != 1.0:
        raise WeightsError(
            f"ImageNet weights ({checkpoint}) exist only for width 1.0, but this trunk has width {width}; "
            "build the model with width=1.0 or train it without an ImageNet trunk"
        )
    own = trunk.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(head):
            continue
        if not key.startswith(prefix) or key[len(prefix):] not in own:
            raise WeightsError(
                f"checkpoint key '{key}' has no place in the trunk; pass the {checkpoint} classification checkpoint"
            )
        target = key[len(prefix):]
        if tuple(value.shape) != tuple(own[target].shape):
            raise WeightsError(
                f"checkpoint key '{key}' has shape {tuple(value.shape)} but the trunk's '{target}' has shape "
                f"{tuple(own[target].shape)}; pass the {checkpoint} classification checkpoint"
            )
        mapped[target] = value
    missing = [k for k in own if k not in mapped and not k.endswith(_OPTIONAL_SUFFIX)]
    if missing:
        raise WeightsError(
            f"the checkpoint lacks {len(missing)} trunk keys (first: '{prefix}{missing[0]}'); "
            f"pass the complete {checkpoint} classification checkpoint"
        )
    trunk.load_state_dict(mapped, strict=False)
    return [k for k in own if k in mapped]
