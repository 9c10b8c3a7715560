"""DilatedNet (Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016): the
dilated VGG-16 front end, the context module with its identity initialisation, and the two-stage
training hooks (front end first, then the context module on top of the frozen front end)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.errors import UsageError, WeightsError
from refine_cli.models.adaptive_rf import (
    AdaptiveReceptiveField,
    AdaptiveRFMixin,
    fc_receptive_field,
    vgg_trunk_field,
)
from refine_cli.models.common import SegOutput
from refine_cli.models.vgg import VGG16Trunk
from refine_cli.transforms import IMAGENET

Padding = Literal["reflect", "same"]
ContextKind = Literal["basic", "large"]
ContextPadding = Literal["once", "per_layer"]

OUTPUT_STRIDE = 8
CONV5_DILATION = 2
FC6_KERNEL = 7
FC6_DILATION = 4
FC6_EXTENT = FC6_DILATION * (FC6_KERNEL - 1) + 1  # 25 cells
# The authors' front end has no padding anywhere; its input is the image reflected by 186 pixels on each
# side (fyu/dilation: predict.py `label_margin = 186`, cv2.BORDER_REFLECT_101; network.py's training
# data layer `margin=186`, REFLECT). An input of 8n + 372 pixels then yields exactly n score cells.
REFLECT_MARGIN = 186
# fyu/dilation network.py: the front end's `final` score layer starts as Gaussian std 0.001, bias 0.
FINAL_STD = 0.001

# The context module (the paper's context-network table; fyu/dilation network.py `build_context`): 3x3
# layers with these dilations, each followed by a ReLU, then a 1x1 layer back to C maps without a ReLU.
CONTEXT_DILATIONS: tuple[int, ...] = (1, 1, 2, 4, 8, 16, 1)
CONTEXT_NAMES: tuple[str, ...] = (
    "conv1_1", "conv1_2", "conv2_1", "conv3_1", "conv4_1", "conv5_1", "fc1", "final"
)
# Output widths in units of C: basic keeps C throughout; large is the released VOC model's module
# (dilation8_pascal_voc_deploy.prototxt, C = 21: 42, 42, 84, 168, 336, 672, 672, 21).
CONTEXT_MULTIPLIERS: Mapping[str, tuple[int, ...]] = {
    "basic": (1, 1, 1, 1, 1, 1, 1, 1),
    "large": (2, 2, 4, 8, 16, 32, 32, 1),
}
# Standard deviation of the symmetry-breaking noise of the large module's initialisation, in units of
# C / c_{i+1}. The paper asks only for sigma << C / c_{i+1}; 1e-3 is our choice.
CONTEXT_NOISE = 1e-3


def context_widths(channels: int, kind: ContextKind) -> tuple[int, ...]:
    """Output widths of the eight context layers for C = `channels`."""
    if kind not in CONTEXT_MULTIPLIERS:
        raise ValueError(f"context must be 'basic' or 'large', got {kind!r}")
    return tuple(m * channels for m in CONTEXT_MULTIPLIERS[kind])


def identity_init_(conv: nn.Conv2d, channels: int, *, noise: float = 0.0) -> None:
    """The paper's identity initialisation of one context layer, c_i maps in, c_{i+1} maps out, C base maps:

        k^b(t, a) = C / c_{i+1}   if t = 0 and floor(a C / c_i) = floor(b C / c_{i+1})
                  = eps           otherwise,   eps ~ N(0, sigma^2), sigma = noise * C / c_{i+1},

    t = 0 being the kernel centre. With c_i = c_{i+1} = C and noise 0 this is the basic rule
    k^b(t, a) = 1[t=0] 1[a=b]. Where widths are multiples of C, each base map a is carried by c/C
    channels holding a C/c share of it, so the layer passes the C base maps through (before the ReLU).
    Bias: 0."""
    c_out, c_in, kh, kw = conv.weight.shape
    group_in = torch.arange(c_in) * channels // c_in
    group_out = torch.arange(c_out) * channels // c_out
    same = (group_out[:, None] == group_in[None, :]).to(conv.weight.dtype)
    gain = channels / c_out
    with torch.no_grad():
        weight = torch.zeros_like(conv.weight)
        if noise > 0:
            weight.normal_(0.0, noise * gain)
            weight[:, :, kh // 2, kw // 2] *= 1.0 - same
        weight[:, :, kh // 2, kw // 2] += gain * same
        conv.weight.copy_(weight)
        if conv.bias is not None:
            conv.bias.zero_()


class ContextModule(nn.Module):
    """C maps in, C maps out: 3x3 convs dilated 1, 1, 2, 4, 8, 16, 1 (ReLU after each), then a 1x1 conv.

    Layers `conv1_1, conv1_2, conv2_1, conv3_1, conv4_1, conv5_1, fc1, final` (the authors' `ctx_*` /
    `ct_*` names without the prefix). Identity-initialised (`identity_init_`): untrained, it returns
    max(x, 0) exactly (basic; large with noise=0) or up to the small noise (large).

    widths: the eight output widths (the last must be C); see `context_widths`.
    padding: "once" zero-pads the input by 33 (= sum of the 3x3 dilations) and runs every layer unpadded,
    as the released deploy model does (`ct_conv1_1` pad 33); "per_layer" pads each layer by its dilation,
    as the authors' training script (network.py) does. Both keep the size; they differ near the border.
    noise: sigma of the initialisation in units of C / c_{i+1}; None: 0 when all widths are C (the basic
    rule), `CONTEXT_NOISE` otherwise.
    """

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        *,
        padding: ContextPadding = "once",
        noise: float | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != len(CONTEXT_NAMES) or widths[-1] != channels:
            raise ValueError(f"need {len(CONTEXT_NAMES)} widths ending in {channels}, got {tuple(widths)}")
        if padding not in ("once", "per_layer"):
            raise ValueError(f"context padding must be 'once' or 'per_layer', got {padding!r}")
        self.channels = channels
        self.widths = tuple(widths)
        self.padding = padding
        if noise is None:
            noise = 0.0 if all(w == channels for w in widths) else CONTEXT_NOISE
        c_in = channels
        for name, c_out, dilation in zip(CONTEXT_NAMES, widths, CONTEXT_DILATIONS + (None,)):
            if dilation is None:
                conv = nn.Conv2d(c_in, c_out, 1)
            else:
                pad = dilation if padding == "per_layer" else 0
                conv = nn.Conv2d(c_in, c_out, 3, padding=pad, dilation=dilation)
            identity_init_(conv, channels, noise=noise)
            setattr(self, name, conv)
            c_in = c_out

    @property
    def field(self) -> int:
        """Receptive field of an output cell, in input cells: 67."""
        return 1 + 2 * sum(CONTEXT_DILATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) float, any H, W >= 1. Returns (N, C, H, W) float."""
        if self.padding == "once":
            x = F.pad(x, (sum(CONTEXT_DILATIONS),) * 4)
        h = x
        for name in CONTEXT_NAMES[:-1]:
            h = F.relu(getattr(self, name)(h))
        return self.final(h)


def _reflect_index(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices reading an axis of `size` extended by `before`/`after` cells of mirror reflection without
    repeating the edge (OpenCV's BORDER_REFLECT_101), folded as many times as needed (the margin can be
    far wider than the image)."""
    i = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = i.remainder(period)
    return torch.where(i >= size, period - i, i)


def _reflect_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    rows = _reflect_index(x.shape[-2], top, bottom, x.device)
    cols = _reflect_index(x.shape[-1], left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class DilatedNet(AdaptiveRFMixin, VGG16Trunk):
    """The dilated VGG-16 front end, optionally followed by the context module.

    Front end (the paper's front-end section; fyu/dilation network.py `build_frontend_vgg`):
    conv1_1..conv5_3 with the VGG names, 2x2 max pools after blocks 1-3 only (pool4 and pool5 removed),
    conv5_x dilated by 2, fc6 a 7x7 conv dilated by 4 (`fc_channels`, 4096 published), fc7 1x1, ReLU and
    dropout 0.5 after each, `final` 1x1 to the class scores: output stride 8.
    Context (`context` "basic" or "large"): a `ContextModule` on the C = num_classes score maps
    (`context.*`), as in the paper and the released models.

    padding:
    - "reflect" (the authors'): no padding in any conv; the image is reflected (BORDER_REFLECT_101) by 186
      pixels on the top and left and by 186 + 8n - H at the bottom (alike on the right), n = ceil((H-1)/8)
      + 1, so that n score cells come out. The authors trained score cell x against the label at pixel 8x
      (their label slice: stride 8 from the margin) and zoom by 8 placing cell x at pixel 8x; `forward`
      does the same (corner-aligned, exact for any H). Costs the 372 extra rows and columns: a 64 px crop
      runs at 444 px.
    - "same" (ours, for small crops): every conv zero-padded to keep its size, ceil-mode pools, n =
      ceil(H/8) cells; cell x then sits over pixels 8x..8x+7 (centre 8x + 3.5) and `forward` upsamples
      with half-pixel alignment. Same parameters as "reflect"; the two are not interchangeable for trained
      weights.
    adaptive_rf: fc6-final inside an `AdaptiveReceptiveField` (inflation before fc6, interpolation after
    `final` back to the size without inflation; the context module, when present, works on that size).

    Two-stage training as in the paper: train the front end (`dilated_frontend_vgg16`), then build the
    context net, `load_frontend` the front end's state dict, `freeze_frontend()` (or keep only
    `trainable_parameters("context")` trainable), and optimise `context_parameters()` only.
    """

    trunk_input = IMAGENET
    imagenet_fc = True  # fc6 / fc7 from torchvision's classifier, as the authors initialised theirs

    def __init__(
        self,
        *,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 4096,
        padding: Padding = "reflect",
        context: ContextKind | None = None,
        context_padding: ContextPadding = "once",
        adaptive_rf: bool = False,
        rf_init: float = 1.0,
        batch_norm: bool = False,
    ) -> None:
        if num_classes < 1 or fc_channels < 1:
            raise ValueError(f"num_classes and fc_channels must be positive: {num_classes}, {fc_channels}")
        if padding not in ("reflect", "same"):
            raise ValueError(f"padding must be 'reflect' or 'same', got {padding!r}")
        widths = None if context is None else context_widths(num_classes, context)  # validates first
        same = padding == "same"
        super().__init__(
            width=width,
            pool_kernel=2,
            pools=(True, True, True, False, False),
            pad_convs=same,  # the authors' front end pads none of its convs
            conv5_dilation=CONV5_DILATION,
            batch_norm=batch_norm,
        )
        self.num_classes = num_classes
        self.fc_channels = fc_channels
        self.padding = padding
        c5 = self.block_channels[4]
        fc6_pad = (FC6_EXTENT - 1) // 2 if same else 0
        self.fc6 = nn.Conv2d(c5, fc_channels, FC6_KERNEL, padding=fc6_pad, dilation=FC6_DILATION)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop7 = nn.Dropout(0.5)
        self.final = nn.Conv2d(fc_channels, num_classes, 1)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.final.weight, std=FINAL_STD)
        nn.init.zeros_(self.final.bias)
        self.rf: AdaptiveReceptiveField | None = None
        if adaptive_rf:
            trim = 0 if same else (FC6_EXTENT - 1) // 2
            self.rf = AdaptiveReceptiveField(rf_init, min_size=1 if same else FC6_EXTENT, offset=trim)
        self.context: ContextModule | None = None
        if widths is not None:
            self.context = ContextModule(num_classes, widths, padding=context_padding)

    # forward ------------------------------------------------------------------------------------------

    def frontend_scores(self, x: torch.Tensor) -> torch.Tensor:
        """x as in `forward`. Returns the front end's (N, num_classes, n_h, n_w) scores at stride 8
        (n = ceil((H-1)/8) + 1 with "reflect" padding, ceil(H/8) with "same")."""
        height, width = x.shape[-2:]
        if self.padding == "reflect":
            bottom = REFLECT_MARGIN + OUTPUT_STRIDE * _cells(height) - height
            right = REFLECT_MARGIN + OUTPUT_STRIDE * _cells(width) - width
            x = _reflect_pad(x, REFLECT_MARGIN, bottom, REFLECT_MARGIN, right)
        conv5 = self.forward_trunk(x).pool5  # there is no pool5: this is conv5_3
        h = conv5 if self.rf is None else self.rf.inflate(conv5)
        h = self.drop6(F.relu(self.fc6(h), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        h = self.final(h)
        if self.rf is not None:
            trim = 0 if self.padding == "same" else FC6_EXTENT - 1
            h = self.rf.interpolate(h, (conv5.shape[-2] - trim, conv5.shape[-1] - trim))
        return h

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x as in `forward`. Returns (N, num_classes, n_h, n_w) scores at stride 8: the front end's,
        through the context module when there is one."""
        s = self.frontend_scores(x)
        return s if self.context is None else self.context(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) float, any H, W >= 1, normalised as the weights expect (ImageNet mean/std RGB by
        default). Returns (N, num_classes, H, W) float logits, same dtype/device as x."""
        height, width = x.shape[-2:]
        s = self.scores(x)
        if self.padding == "reflect":  # cell i over pixel 8i: corner-aligned zoom by 8
            size = (OUTPUT_STRIDE * (s.shape[-2] - 1) + 1, OUTPUT_STRIDE * (s.shape[-1] - 1) + 1)
            up = F.interpolate(s, size=size, mode="bilinear", align_corners=True)
        else:  # cell i centred on pixel 8i + 3.5: half-pixel zoom by 8
            size = (OUTPUT_STRIDE * s.shape[-2], OUTPUT_STRIDE * s.shape[-1])
            up = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
        return up[:, :, :height, :width].contiguous()

    def forward_train(self, x: torch.Tensor) -> SegOutput:
        """As `forward`, wrapped for the training loop (no auxiliary head)."""
        return SegOutput(self(x))

    # receptive field ---------------------------------------------------------------------------------

    def receptive_field(self, factor: float | None = None) -> float:
        """Nominal receptive field of an output score cell in input pixels (`adaptive_rf.fc_receptive_field`
        for the front end: 188 + 24 * 8 / f = 380 at f = 1; the context module adds 66 cells = 528 pixels).
        factor defaults to the current f (1 without `adaptive_rf`)."""
        if factor is None:
            factor = self.rf_factor or 1.0
        field, jump = vgg_trunk_field(
            pools=((2, 2), (2, 2), (2, 2), (1, 1), (1, 1)), conv5_dilation=CONV5_DILATION
        )
        total = fc_receptive_field(trunk_field=field, stride=jump, kernel_extent=FC6_EXTENT, factor=factor)
        if self.context is not None:
            total += (self.context.field - 1) * jump
        return total

    # two-stage training ------------------------------------------------------------------------------

    def context_parameters(self) -> Iterator[nn.Parameter]:
        """The context module's parameters (none without a context module)."""
        if self.context is not None:
            yield from self.context.parameters()

    def frontend_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the context module: trunk, fc6, fc7, final (and rf.factor)."""
        for name, p in self.named_parameters():
            if not name.startswith("context."):
                yield p

    def frontend_state_keys(self) -> list[str]:
        return [k for k in self.state_dict() if not k.startswith("context.")]

    def load_frontend(self, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
        """Copy a trained front end (the state dict of a `dilated_frontend_vgg16` built with the same width,
        fc_channels, num_classes and adaptive_rf) into this network; the context module keeps its values.
        Everything is checked before anything is copied. Returns the keys set; raises WeightsError naming
        the missing, unexpected or misshapen keys. (Padding mode has no parameters: build both nets with
        the same `padding`.)"""
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("context.")}
        missing = sorted(own.keys() - state_dict.keys())
        unexpected = sorted(state_dict.keys() - own.keys())
        if missing or unexpected:
            raise WeightsError(
                f"not a front-end state dict for this network: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}; pass the state dict of a dilated_frontend_vgg16 built with the same "
                "width, fc_channels, number of classes and adaptive_rf"
            )
        for key, target in own.items():
            if tuple(state_dict[key].shape) != tuple(target.shape):
                raise WeightsError(
                    f"front-end '{key}' has shape {tuple(state_dict[key].shape)} but this network needs "
                    f"{tuple(target.shape)}; build the context net with the front end's width, fc_channels "
                    "and number of classes"
                )
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(state_dict[key])
        return list(own)

    def trainable_parameters(self, stage: str) -> list[nn.Parameter]:
        """What each training stage updates (the trainer's `--stage` hook): "frontend" the front end,
        "context" the context module (the paper's second stage, on a trained front end), "joint"
        everything (the authors' optional third stage)."""
        if stage == "frontend":
            return list(self.frontend_parameters())
        if stage == "context":
            return list(self.context_parameters())
        if stage == "joint":
            return list(self.parameters())
        raise UsageError(f"unknown training stage '{stage}' for a DilatedNet; choose frontend, context or joint")

    def freeze_frontend(self, frozen: bool = True) -> None:
        """The paper's second stage: front-end parameters stop requiring gradients (and the front end
        then runs in eval mode, see `train`); the context module trains. frozen=False undoes it."""
        for p in self.frontend_parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> DilatedNet:
        """As `nn.Module.train`, except that a frozen front end (a context net none of whose front-end
        parameters requires gradients) stays in eval mode: the context module then trains on the
        deterministic front-end scores, as the authors' stage two trained on precomputed ones. Freeze
        first (`freeze_frontend`, or requires_grad_(False) on `frontend_parameters()`), then `train()`."""
        super().train(mode)
        frozen = self.context is not None and not any(p.requires_grad for p in self.frontend_parameters())
        if mode and frozen:
            for name, child in self.named_children():
                if name != "context":
                    child.train(False)
        return self


def _cells(size: int) -> int:
    """Score cells needed so that, cell i sitting over pixel 8i, the last one reaches pixel size - 1."""
    return -(-(size - 1) // OUTPUT_STRIDE) + 1


def dilated_frontend_vgg16(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 4096,
    padding: Padding = "reflect",
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> DilatedNet:
    """The DilatedNet front end (Yu & Koltun 2016): VGG-16 without pool4/pool5, conv5 dilated 2, fc6 7x7
    dilated 4 (4096), fc7, final 1x1; output stride 8, logits upsampled to the input. See `DilatedNet`.

    Reported numbers: the paper's tables give PASCAL VOC 2012 mean IoU for the front end alone and with
    the context module (basic and large, with and without CRF); we could not consult them while writing
    this, so none are quoted here rather than quoted from memory."""
    return DilatedNet(
        num_classes=num_classes, width=width, fc_channels=fc_channels, padding=padding,
        adaptive_rf=adaptive_rf, rf_init=rf_init, batch_norm=batch_norm,
    )


def dilated_context_vgg16(
    *,
    num_classes: int = 21,
    width: float = 1.0,
    fc_channels: int = 4096,
    context: ContextKind = "large",
    padding: Padding = "reflect",
    context_padding: ContextPadding = "once",
    adaptive_rf: bool = False,
    rf_init: float = 1.0,
    batch_norm: bool = False,
) -> DilatedNet:
    """Front end + context module (Yu & Koltun 2016). context: "large" (default, the released VOC model
    "Dilation8": widths 2C, 2C, 4C, 8C, 16C, 32C, 32C, C) or "basic" (C throughout). Identity-initialised;
    trained on a frozen front end (`load_frontend`, `freeze_frontend`). See `DilatedNet`, `ContextModule`."""
    return DilatedNet(
        num_classes=num_classes, width=width, fc_channels=fc_channels, padding=padding, context=context,
        context_padding=context_padding, adaptive_rf=adaptive_rf, rf_init=rf_init, batch_norm=batch_norm,
    )
