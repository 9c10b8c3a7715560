"""The VGG-16 trunk shared by FCN, DeepLab-LargeFOV (and anything else built on VGG-16): conv1_1..conv5_3
as flat attributes, so the networks built on it keep the Caffe layer names as state-dict keys, and the
import of torchvision's ImageNet VGG-16 checkpoint onto those names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.errors import WeightsError
from refine_cli.models.common import scaled
from refine_cli.transforms import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, Preprocess

# Simonyan & Zisserman, configuration D: five blocks of 3x3 convs, each block followed by a 2x max pool.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
CONV_NAMES: tuple[str, ...] = tuple(
    f"conv{b + 1}_{i + 1}" for b, (_, n) in enumerate(VGG16_BLOCKS) for i in range(n)
)
# Index of each conv in torchvision's `vgg16().features` (a Sequential of conv, ReLU, ..., pool), in the
# order of CONV_NAMES: the layout of `vgg16-397923af.pth`.
TORCHVISION_FEATURE_INDEX: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class VGGFeatures(NamedTuple):
    """What the trunk hands to a head: the last (ReLU'd) conv of blocks 3-5 and the pooled outputs, and of block 2
    (half resolution, for heads that want finer detail)."""

    conv3_3: torch.Tensor
    pool3: torch.Tensor
    conv4_3: torch.Tensor
    pool4: torch.Tensor
    conv5_3: torch.Tensor
    pool5: torch.Tensor
    conv2_2: torch.Tensor | None = None


class VGG16Trunk(nn.Module):
    """VGG-16 conv1_1..conv5_3 (ReLU after each) with five max pools, as a base class.

    Networks subclass it so the convs sit at the top level of their state dict (`conv1_1.weight`, ...),
    the layout of the Caffe models and their PyTorch ports. The geometry is what differs between heads:

    width: multiplies every conv's channels (`scaled(64 * 2**k, width)`); 1.0 is the published net.
    conv1_padding: padding of conv1_1 (FCN uses 100 so that any input survives the 7x7 fc6).
    pool_kernel, pool_padding: of all five pools (2/0 in VGG and FCN, 3/1 in DeepLab).
    pool_strides: per pool (DeepLab-LargeFOV keeps pool4 and pool5 at stride 1).
    pools: which of the five pools exist (the DilatedNet front end has none after blocks 4 and 5); a missing pool
        passes its block's output on, and `forward_trunk` reports it under the pool's name.
    pad_convs: False leaves every 3x3 conv unpadded (the DilatedNet front end's "valid" convolutions; conv1_1's
        `conv1_padding` included).
    conv5_dilation: dilation (= padding) of conv5_1..conv5_3 (2 in DeepLab, restoring the field of view
        lost with pool4's stride).
    batch_norm: a BatchNorm after every conv (`bn1_1` ... `bn5_3`), as in torchvision's vgg16_bn. Not in any
        of the published nets; the compact variants use it because plain narrow VGGs trained from scratch stay
        stuck at the class prior for hundreds of steps (measured on the synthetic world), while with BN they learn.
    All pools use ceil mode, as Caffe's pooling does.
    """

    # The input the network is fed by default; `load_imagenet_trunk` folds the difference between this
    # and torchvision's ImageNet normalisation into conv1_1.
    trunk_input: Preprocess = IMAGENET
    # Whether fc6 / fc7 take torchvision's classifier.0 / classifier.3 as convs (`convolutionalised_fc`): FCN and
    # DilatedNet, whose fc layers have VGG-16's own shape at full width; DeepLab's 1024-channel ones do not.
    imagenet_fc: bool = False

    def __init__(
        self,
        *,
        width: float = 1.0,
        conv1_padding: int = 1,
        pool_kernel: int = 2,
        pool_padding: int = 0,
        pool_strides: Sequence[int] = (2, 2, 2, 2, 2),
        pools: Sequence[bool] = (True, True, True, True, True),
        pad_convs: bool = True,
        conv5_dilation: int = 1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if len(pool_strides) != len(VGG16_BLOCKS) or len(pools) != len(VGG16_BLOCKS):
            raise ValueError(f"pool_strides and pools need {len(VGG16_BLOCKS)} values each, got "
                             f"{tuple(pool_strides)}, {tuple(pools)}")
        self.width = width
        self.batch_norm = batch_norm
        self.block_channels = tuple(scaled(c, width) for c, _ in VGG16_BLOCKS)
        c_in = 3
        for b, (_, n) in enumerate(VGG16_BLOCKS):
            c_out = self.block_channels[b]
            for i in range(n):
                if b == 0 and i == 0:
                    pad, dil = conv1_padding, 1
                elif b == 4:
                    pad = dil = conv5_dilation
                else:
                    pad, dil = 1, 1
                setattr(self, f"conv{b + 1}_{i + 1}",
                        nn.Conv2d(c_in, c_out, 3, padding=pad if pad_convs else 0, dilation=dil))
                if batch_norm:
                    setattr(self, f"bn{b + 1}_{i + 1}", nn.BatchNorm2d(c_out))
                c_in = c_out
            pool = nn.MaxPool2d(pool_kernel, stride=pool_strides[b], padding=pool_padding, ceil_mode=True)
            setattr(self, f"pool{b + 1}", pool if pools[b] else nn.Identity())
        for name in CONV_NAMES:
            conv = getattr(self, name)
            # torchvision's VGG initialisation, for training from scratch (compact widths).
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward_trunk(self, x: torch.Tensor) -> VGGFeatures:
        """x: (N, 3, H, W) float, already normalised for this network. Returns the block outputs; their
        sizes follow from the geometry given to the constructor."""
        h = x
        kept: list[torch.Tensor] = []
        conv2_2 = None
        for b, (_, n) in enumerate(VGG16_BLOCKS):
            for i in range(n):
                h = getattr(self, f"conv{b + 1}_{i + 1}")(h)
                if self.batch_norm:
                    h = getattr(self, f"bn{b + 1}_{i + 1}")(h)
                h = F.relu(h, inplace=True)
            if b == 1:
                conv2_2 = h
            if b >= 2:
                kept.append(h)
            h = getattr(self, f"pool{b + 1}")(h)
            if b >= 2:
                kept.append(h)
        return VGGFeatures(*kept, conv2_2=conv2_2)

    # ImageNet initialisation --------------------------------------------------------------------------

    def _imagenet_pairs(
        self, state_dict: Mapping[str, torch.Tensor], preprocess: Preprocess
    ) -> list[tuple[str, torch.Tensor]]:
        """(our key, value) for every tensor the ImageNet checkpoint gives this network, validated: the convs,
        and fc6 / fc7 where `imagenet_fc`."""
        if self.width != 1.0:
            raise WeightsError(
                f"the ImageNet VGG-16 checkpoint only fits width=1.0, this network has width={self.width}; "
                "build it with width=1.0 or train it from scratch"
            )
        pairs: list[tuple[str, torch.Tensor]] = []
        for name, idx in zip(CONV_NAMES, TORCHVISION_FEATURE_INDEX):
            for kind in ("weight", "bias"):
                key = f"{name}.{kind}"
                pairs.append((key, checkpoint_tensor(state_dict, f"features.{idx}.{kind}", self, key)))
        pairs[0:2] = _fold_input(pairs[0][1], pairs[1][1], preprocess)
        return pairs + convolutionalised_fc(self, state_dict) if self.imagenet_fc else pairs

    def load_imagenet_trunk(
        self, state_dict: Mapping[str, torch.Tensor], *, preprocess: Preprocess | None = None
    ) -> list[str]:
        """Initialise from torchvision's VGG-16 classification checkpoint (`features.{0,2,...,28}`,
        `classifier.{0,3,6}`); returns our keys it set. Everything is validated before anything is copied.

        preprocess: the input this network will be fed (default: the class's `trunk_input`). torchvision's
        weights expect RGB in [0, 1] normalised by the ImageNet mean/std; any other colour order, scale or
        mean/std is folded exactly into conv1_1 (weights permuted and rescaled, the mean offset added to the
        bias; zero padding then stands for the new mean colour, as it did in the Caffe nets).
        Raises WeightsError on a width other than 1.0, a missing key or a shape mismatch.
        """
        pairs = self._imagenet_pairs(state_dict, self.trunk_input if preprocess is None else preprocess)
        params = dict(self.named_parameters())
        with torch.no_grad():
            for key, value in pairs:
                params[key].copy_(value)
        return [key for key, _ in pairs]


def checkpoint_tensor(
    state_dict: Mapping[str, torch.Tensor],
    src: str,
    module: nn.Module,
    dst: str,
    flat_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """state_dict[src] for our parameter `dst` of `module`, reshaped to it when it has `flat_shape` (a fully
    connected weight becoming a conv); WeightsError naming both keys and shapes when it does not fit."""
    if src not in state_dict:
        raise WeightsError(
            f"ImageNet checkpoint has no '{src}' (needed for {dst}); expected torchvision's VGG-16 layout "
            "(vgg16-397923af.pth)"
        )
    value = state_dict[src].detach()
    target = module.get_parameter(dst)
    if flat_shape is not None and tuple(value.shape) == tuple(flat_shape):
        value = value.reshape(target.shape)
    if value.shape != target.shape:
        raise WeightsError(
            f"ImageNet checkpoint '{src}' has shape {tuple(state_dict[src].shape)} but {dst} needs "
            f"{tuple(target.shape)}; only the published VGG-16 widths can be initialised from it"
        )
    return value


def convolutionalised_fc(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """torchvision's VGG-16 classifier as `module`'s fc6 / fc7 convs (the FCN paper's "convolutionalisation"):
    classifier.0 (4096 x 512*7*7) is fc6 as a 7x7 conv over pool5 (torchvision flattens pool5 as (C, H, W), the
    order of a conv weight's (in, kh, kw)); classifier.3 (4096 x 4096) is fc7 as a 1x1 conv. Validated like
    `checkpoint_tensor`; classifier.6 (the 1000 ImageNet classes) is not used."""
    pairs = []
    for src, dst in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
        weight = module.get_parameter(f"{dst}.weight")
        flat = (weight.shape[0], weight[0].numel())
        pairs.append((f"{dst}.weight", checkpoint_tensor(state_dict, f"{src}.weight", module, f"{dst}.weight", flat)))
        pairs.append((f"{dst}.bias", checkpoint_tensor(state_dict, f"{src}.bias", module, f"{dst}.bias")))
    return pairs


def _fold_input(
    weight: torch.Tensor, bias: torch.Tensor, pre: Preprocess
) -> list[tuple[str, torch.Tensor]]:
    """conv1_1 rewritten so that on an input prepared by `pre` it computes what the ImageNet weights
    computed on torchvision's input. With z (torchvision's input) = a * u + d per channel, where u is ours:
    W' = W * a (with channels reordered), b' = b + sum(W * d)."""
    w = weight.double()
    order = [2, 1, 0] if pre.color_order == "BGR" else [0, 1, 2]  # our channel j holds RGB channel order[j]
    f64 = {"dtype": torch.float64, "device": w.device}
    mean = torch.tensor(IMAGENET_MEAN, **f64)[order]
    std = torch.tensor(IMAGENET_STD, **f64)[order]
    a = torch.tensor(pre.std, **f64) / (pre.scale * std)
    d = (torch.tensor(pre.mean, **f64) / pre.scale - mean) / std
    w = w[:, order]
    new_w = w * a[None, :, None, None]
    new_b = bias.double() + (w.sum(dim=(2, 3)) * d[None, :]).sum(dim=1)
    return [("conv1_1.weight", new_w.to(weight.dtype)), ("conv1_1.bias", new_b.to(bias.dtype))]
