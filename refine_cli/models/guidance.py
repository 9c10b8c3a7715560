"""The SPN guidance network: an image-only VGG-16 encoder/decoder that outputs the propagation gates.

As released with the SPN VOC model (Liu et al. 2017): conv1_1..conv5_3 (ImageNet-initialised), then a decoder
that upsamples by 2 four times, each time a 3x3 conv (+ReLU, the last +ELU) summed with the encoder skip of the
same size (conv5_3, conv4_3, conv3_3), and a linear 3x3 conv to 4 directions x 3 gates x C channels at half the
input resolution. The coarse mask never enters it: the gates depend on the image alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli.models.common import scaled
from refine_cli.models.vgg import VGG16Trunk
from refine_cli.ops.scan import oriented, unoriented

NUM_DIRECTIONS = 4
GATES_PER_DIRECTION = 3


def half_size(height: int, width: int) -> tuple[int, int]:
    """The propagation resolution for an (height, width) input: what a 4x4 stride-2 conv with padding 1 gives."""
    return max(1, height // 2), max(1, width // 2)


class GuidanceNet(VGG16Trunk):
    """Image -> raw gates for the four directions.

    width: VGG width multiplier (1.0: the released VGG-16; the compact refiner uses a narrow one).
    channels: C, the number of hidden channels the gates are for.
    batch_norm: BatchNorm after every encoder conv (see `VGG16Trunk`; the compact refiner trains from scratch).
    last_channels: width of the last decoder conv (before width scaling). The first three decoder convs have
        the widths of conv5_3, conv4_3 and conv3_3, the skips their outputs are summed with.
    half_skip: sum the conv2_2 features (half resolution) into the last decoder conv's output, as the other
        decoder stages sum theirs (not in the release, whose gates see nothing finer than conv3_3 at 1/4: at the
        compact widths the two have the same channel count, and edges are then placed at 1/2 resolution).
    gate_kernel: kernel side of the linear conv that outputs the gates (3 as released; 1 makes the widest layer of
        the compact net 9x cheaper).
    edge_sigma: when set, every gate is multiplied by the colour affinity of the two pixels it joins,
        exp(-|I_p - I_q|^2 / (2 sigma^2)) on the network's normalised input area-averaged to the gates' size
        (`colour_affinity`), so propagation stops at colour edges whatever the learned gates say (the bilateral
        kernel of a dense CRF, as a fixed prior on the gates). Not in the release; no parameters.
    """

    def __init__(
        self,
        *,
        channels: int,
        width: float = 1.0,
        last_channels: int = 128,
        batch_norm: bool = False,
        half_skip: bool = False,
        gate_kernel: int = 3,
        edge_sigma: float | None = None,
    ) -> None:
        super().__init__(width=width, batch_norm=batch_norm)
        if edge_sigma is not None and edge_sigma <= 0:
            raise ValueError(f"edge_sigma must be positive, got {edge_sigma}")
        self.edge_sigma = edge_sigma
        c3, c4, c5 = self.block_channels[2], self.block_channels[3], self.block_channels[4]
        last = scaled(last_channels, width)
        self.channels = channels
        self.half_skip = half_skip
        if half_skip and last != self.block_channels[1]:
            raise ValueError(
                f"half_skip needs last_channels to match conv2_2's {self.block_channels[1]} channels, got {last}"
            )
        self.up5 = nn.Conv2d(c5, c5, 3, padding=1)  # 1/32 -> 1/16, + conv5_3
        self.up4 = nn.Conv2d(c5, c4, 3, padding=1)  # 1/16 -> 1/8, + conv4_3
        self.up3 = nn.Conv2d(c4, c3, 3, padding=1)  # 1/8 -> 1/4, + conv3_3
        self.up2 = nn.Conv2d(c3, last, 3, padding=1)  # 1/4 -> 1/2, ELU
        if gate_kernel not in (1, 3):
            raise ValueError(f"gate_kernel must be 1 or 3, got {gate_kernel}")
        gates = NUM_DIRECTIONS * GATES_PER_DIRECTION * channels
        self.gates = nn.Conv2d(last, gates, gate_kernel, padding=gate_kernel // 2)
        for conv in (self.up5, self.up4, self.up3, self.up2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # Small initial gates: the untrained propagation starts close to the identity on its input.
        nn.init.normal_(self.gates.weight, std=1e-3)
        nn.init.zeros_(self.gates.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: (N, 3, H, W) float, normalised for this network (ImageNet mean/std, RGB), any H, W >= 2.

        Returns raw (unnormalised) gates (N, 4, 3, C, H // 2, W // 2): directions in the order of
        `refine_cli.ops.DIRECTIONS`, then g1, g2, g3, then the C hidden channels.
        """
        return self.features_and_gates(image)[1]

    def features_and_gates(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `forward`, also returning the features the gates are computed from: (N, D, H // 2, W // 2), D the last
        decoder conv's width."""
        f = self.forward_trunk(image)
        h = f.pool5
        h = F.relu(self.up5(_up(h, f.conv5_3)), inplace=True) + f.conv5_3
        h = F.relu(self.up4(_up(h, f.conv4_3)), inplace=True) + f.conv4_3
        h = F.relu(self.up3(_up(h, f.conv3_3)), inplace=True) + f.conv3_3
        size = half_size(image.shape[-2], image.shape[-1])
        h = F.elu(self.up2(F.interpolate(h, size=size, mode="bilinear", align_corners=False)))
        if self.half_skip:
            h = h + _up(f.conv2_2, h)
        g = self.gates(h)
        n = g.shape[0]
        g = g.view(n, NUM_DIRECTIONS, GATES_PER_DIRECTION, self.channels, *size)
        if self.edge_sigma is not None:
            g = g * colour_affinity(image, size, self.edge_sigma).to(g.dtype)[:, :, :, None]
        return h, g


def colour_affinity(image: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(N, 3, H, W) image -> (N, 4, 3, h, w) affinities in (0, 1] of each gate's two pixels at `size` (h, w): for
    direction d and gate k at pixel p, exp(-|I_p - I_q|^2 / (2 sigma^2)) with q the neighbour the gate weighs
    (the previous column's rows above, level and below, seen from a left-to-right scan; other directions through
    `oriented`, as the kernels see them). A neighbour outside the map counts as a zero pixel; the kernels never use
    its gate."""
    small = F.interpolate(image.float(), size=size, mode="area")
    out = []
    for code in range(NUM_DIRECTIONS):
        x = oriented(small, code)
        prev = F.pad(x, (1, 0))[..., :-1]  # column t-1 seen at column t
        up = F.pad(prev, (0, 0, 1, 0))[..., :-1, :]  # row r-1 of column t-1, at (r, t)
        down = F.pad(prev, (0, 0, 0, 1))[..., 1:, :]  # row r+1 of column t-1
        dist = torch.stack([(x - q).square().sum(1) for q in (up, prev, down)], dim=1)
        out.append(unoriented(torch.exp(-dist / (2 * sigma**2)), code))
    return torch.stack(out, dim=1)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling to the skip's size (x2 for even sizes; exact for any size)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
