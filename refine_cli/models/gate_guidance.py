"""The learnt guidance of the colour-gated refiner (`refine_cli.models.colour_spn`): a small network that reads the
image and says, per pixel, how far to trust its colour edges.

In the SPN (Liu et al., NIPS 2017) a guidance network produces the propagation's gates from the image. Here the gates
stay the domain-transform weights of the colour differences between neighbours, computed at full resolution, and
the network only modulates those differences: each is multiplied by exp(s) and has c >= 0 added, s and c averaged
over the two neighbours. s < 0 lets the scans cross an edge the image shows but the labels do not (texture,
shadows, reflections), s > 0 holds them at a faint edge, and c closes a gate where a boundary lies without a colour
edge. With `oriented` (the bundled refiner's setting) s and c come apart for the links along rows and along columns:
a gate across a thin upright structure (a pole) may close while the gates along it stay open. Three 3 x 3
convolutions (dilations 1, 2, 4) at half resolution, their maps concatenated into a 1 x 1 output, upsampled
bilinearly: about 7 ms per 480 x 360 frame on one CPU thread. Its output layer starts
at s = 0 and c = CLOSURE_SCALE * softplus(CLOSURE_BIAS) (about 0.001, against colour differences of 0.1 and more at
an edge), so an untrained guidance leaves the refiner as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALE_LIMIT = 3.0  # s is clamped to [-3, 3]: an edge counts between 0.05 and 20 times its colour difference
CLOSURE_SCALE = 0.5  # c = CLOSURE_SCALE * softplus(the network's second map)
CLOSURE_BIAS = -6.0  # the second map's starting bias


def half_size(image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, ceil(H / 2), ceil(W / 2)): the mean of each 2 x 2 block, less 0.5 (a last odd row or
    column is its own mean: `avg_pool2d(image - 0.5, 2, ceil_mode=True)`, from four strided views)."""
    height, width = image.shape[-2:]
    if height % 2 or width % 2:
        image = F.pad(image, (0, width % 2, 0, height % 2), mode="replicate")
    return (image[..., ::2, ::2] + image[..., 1::2, ::2]).add_(image[..., ::2, 1::2]).add_(image[..., 1::2, 1::2]) \
        .mul_(0.25).sub_(0.5)


class GateGuidance(nn.Module):
    """image (N, 3, H, W) RGB in [0, 1] -> (scale s, closure c), each (N, H, W) float32, or with `oriented` each
    (N, 2, H, W): one map for the links along rows (across columns) and one for the links along columns, so that a
    gate across a thin structure may close while the gates along it stay open."""

    def __init__(self, channels: int = 12, oriented: bool = False) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"the guidance needs at least one channel; got {channels}")
        self.channels, self.oriented = channels, oriented
        self.outputs = 4 if oriented else 2
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=4, dilation=4)
        self.out = nn.Conv2d(3 * channels, self.outputs, 1)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor([0.0, CLOSURE_BIAS] * (self.outputs // 2)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image.shape[-2:]
        x = half_size(image.float())
        if x.device.type == "cpu":  # oneDNN's dilated 3 x 3 convolutions of 12 channels take 1.7x as long in NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.conv1(x), inplace=True)
        features = [x]
        for conv in (self.conv2, self.conv3):
            x = F.relu(conv(x), inplace=True)
            features.append(x)
        # The 1 x 1 output layer over the three maps concatenated, as one matrix product per map (no concatenated copy;
        # an NHWC map's (channels, pixels) view is a transposed operand, not a copy).
        n, channels, rows, cols = x.shape
        outputs = self.outputs
        weight = self.out.weight.view(outputs, 3, channels)
        maps = self.out.bias.view(1, outputs, 1).expand(n, outputs, rows * cols).clone()
        for index, feature in enumerate(features):
            maps.baddbmm_(weight[:, index].expand(n, outputs, channels), feature.reshape(n, channels, rows * cols))
        maps = F.interpolate(maps.view(n, outputs, rows, cols), scale_factor=2, mode="bilinear", align_corners=False)
        maps = maps[..., :height, :width]
        scale, closure = maps[:, 0::2], maps[:, 1::2]
        if not self.oriented:
            scale, closure = scale[:, 0], closure[:, 0]
        return scale.clamp(-SCALE_LIMIT, SCALE_LIMIT), F.softplus(closure).mul_(CLOSURE_SCALE)

    def modulate(self, image: torch.Tensor, across_columns: torch.Tensor,
                 across_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour differences to the right (N, H, W-1) and below (N, H-1, W) -> the same, modulated: d * exp(s) + c,
        s and c the means of the two neighbours'."""
        scale, closure = self(image)
        if self.oriented:
            (scale_columns, scale_rows), (closure_columns, closure_rows) = scale.unbind(1), closure.unbind(1)
        else:
            scale_columns = scale_rows = scale
            closure_columns = closure_rows = closure
        return (across_columns * (scale_columns[..., 1:] + scale_columns[..., :-1]).mul(0.5).exp()
                + (closure_columns[..., 1:] + closure_columns[..., :-1]).mul(0.5),
                across_rows * (scale_rows[..., 1:, :] + scale_rows[..., :-1, :]).mul(0.5).exp()
                + (closure_rows[..., 1:, :] + closure_rows[..., :-1, :]).mul(0.5))
