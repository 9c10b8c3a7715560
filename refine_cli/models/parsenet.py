"""ParseNet (Liu, Rabinovich & Berg, "ParseNet: Looking Wider to See Better", arXiv 1506.04579, ICLR 2016
workshop): the L2 normalisation layer with learned per-channel scale, the global-context head (early or
late fusion) usable on any trunk, and ParseNet on the DeepLab-LargeFOV VGG-16."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from refine_cli.models.largefov import DeepLabLargeFOV

Fusion = Literal["early", "late"]

# Unit-norm features are too small for the classifier to train well, hence the learned gamma and a larger
# start. 10 is our choice, inside the usual 10-20 range (the SSD detector by the same first author starts its
# conv4_3 L2 normalisation at 20); it is an option, not a value quoted from the paper.
DEFAULT_SCALE = 10.0
# The classifier's init, as DeepLab-LargeFOV's fc8 (Gaussian, std 0.01).
SCORE_STD = 0.01


class L2Norm(nn.Module):
    """y = gamma * x / ||x||, the norm taken per pixel across channels, gamma learned per channel
    (ParseNet's normalisation layer). ||x|| = sqrt(sum_c x_c^2 + eps): smooth everywhere, exact away from
    zero.

    channels: C. scale_init: gamma's initial value for every channel. eps: keeps an all-zero pixel finite.
    Parameter: `scale` (C,).
    """

    def __init__(self, channels: int, scale_init: float = DEFAULT_SCALE, *, eps: float = 1e-10) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.eps = eps
        self.scale = nn.Parameter(torch.full((channels,), float(scale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) float (any H, W, 1x1 included). Returns the same shape and dtype; each pixel's
        channel vector has norm ~1 before the per-channel scale."""
        norm = torch.sqrt(x.square().sum(dim=1, keepdim=True) + self.eps)
        return x / norm * self.scale.view(1, -1, 1, 1).to(x.dtype)


class ParseNetHead(nn.Module):
    """Class scores from a feature map plus its global average ("global context").

    The global feature is the map averaged over all positions (N, C, 1, 1), "unpooled" (broadcast) back to
    every position. Fusion, the paper's two options:
    - "early": local and global features concatenated per pixel, then one 1x1 classifier (`score`, 2C in);
    - "late": a 1x1 classifier per feature (`score` on the local, `score_global` on the global one), the two
      score maps summed.
    l2norm: each feature is first L2-normalised across channels and rescaled by its own learned gamma
    (`norm_local`, `norm_global`, both `L2Norm`); False concatenates / scores the raw features (the
    paper's "without normalisation" comparison).
    context=False drops the global branch: `score` on the (normalised) local feature alone, the same net
    without global context.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        fusion: Fusion = "early",
        context: bool = True,
        l2norm: bool = True,
        scale_init: float = DEFAULT_SCALE,
    ) -> None:
        super().__init__()
        if fusion not in ("early", "late"):
            raise ValueError(f"fusion must be 'early' or 'late', got {fusion!r}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be positive: {in_channels}, {num_classes}")
        self.fusion = fusion
        self.context = context
        self.l2norm = l2norm
        self.norm_local = L2Norm(in_channels, scale_init) if l2norm else None
        self.norm_global = L2Norm(in_channels, scale_init) if (l2norm and context) else None
        early_concat = context and fusion == "early"
        self.score = nn.Conv2d(2 * in_channels if early_concat else in_channels, num_classes, 1)
        self.score_global = nn.Conv2d(in_channels, num_classes, 1) if (context and fusion == "late") else None
        for conv in (self.score, self.score_global):
            if conv is not None:
                nn.init.normal_(conv.weight, std=SCORE_STD)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W) float, any H, W >= 1. Returns (N, num_classes, H, W) float scores."""
        local = x if self.norm_local is None else self.norm_local(x)
        if not self.context:
            return self.score(local)
        pooled = x.mean(dim=(2, 3), keepdim=True)
        glob = pooled if self.norm_global is None else self.norm_global(pooled)
        if self.fusion == "early":
            return self.score(torch.cat([local, glob.expand_as(local)], dim=1))
        # Scoring the 1x1 global feature and broadcasting the scores equals scoring the unpooled map.
        return self.score(local) + self.score_global(glob)


class ParseNet(DeepLabLargeFOV):
    """ParseNet on DeepLab-LargeFOV: the LargeFOV trunk, pool5a, fc6 (3x3 dilated 12) and fc7 unchanged,
    fc8 replaced by a `ParseNetHead` (`head.*`) on fc7's output, whose global average is the context (the
    paper pools fc7). Output stride 8, logits zoomed by 8 to the input as in `DeepLabLargeFOV`; with
    `adaptive_rf` the head sits inside the receptive-field layers like fc8 does.

    The paper's PASCAL VOC 2012 network is built on DeepLab-LargeFOV. Reported mean IoU, as listed by the wizwand.com benchmark page
    for arXiv 1506.04579: PASCAL VOC 2012 test 69.8, PASCAL-Context 40.4.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 1024,
        fusion: Fusion = "early",
        context: bool = True,
        l2norm: bool = True,
        scale_init: float = DEFAULT_SCALE,
        adaptive_rf: bool = False,
        rf_init: float = 1.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes, width=width, fc_channels=fc_channels, adaptive_rf=adaptive_rf,
            rf_init=rf_init, batch_norm=batch_norm, fc8=False,
        )
        self.head = ParseNetHead(
            fc_channels, num_classes, fusion=fusion, context=context, l2norm=l2norm, scale_init=scale_init
        )

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)


def parsenet_vgg16(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 1024,
    fusion: Fusion = "early",
    context: bool = True,
    l2norm: bool = True,
    scale_init: float = DEFAULT_SCALE,
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> ParseNet:
    """ParseNet, VGG-16 DeepLab-LargeFOV base (Liu, Rabinovich & Berg 2015): global average of fc7, L2
    normalised and rescaled, fused early (concatenated) or late (scored and summed). context=False and
    l2norm=False give the paper's ablations on the same network. See `ParseNet`."""
    return ParseNet(
        num_classes=num_classes, width=width, fc_channels=fc_channels, fusion=fusion, context=context,
        l2norm=l2norm, scale_init=scale_init, adaptive_rf=adaptive_rf, rf_init=rf_init, batch_norm=batch_norm,
    )
