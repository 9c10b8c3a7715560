"""Helpers shared by the VGG-16 model tests: the layouts of the public checkpoints written out by hand (the
spec our modules are checked against), fabricated stand-ins for those checkpoints, random weights."""

from __future__ import annotations

import math

import torch
from torch import nn

# conv1_1..conv5_3 of VGG-16 configuration D, as the FCN port and our trunk name them.
VGG16_TRUNK_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1_1.weight": (64, 3, 3, 3), "conv1_1.bias": (64,),
    "conv1_2.weight": (64, 64, 3, 3), "conv1_2.bias": (64,),
    "conv2_1.weight": (128, 64, 3, 3), "conv2_1.bias": (128,),
    "conv2_2.weight": (128, 128, 3, 3), "conv2_2.bias": (128,),
    "conv3_1.weight": (256, 128, 3, 3), "conv3_1.bias": (256,),
    "conv3_2.weight": (256, 256, 3, 3), "conv3_2.bias": (256,),
    "conv3_3.weight": (256, 256, 3, 3), "conv3_3.bias": (256,),
    "conv4_1.weight": (512, 256, 3, 3), "conv4_1.bias": (512,),
    "conv4_2.weight": (512, 512, 3, 3), "conv4_2.bias": (512,),
    "conv4_3.weight": (512, 512, 3, 3), "conv4_3.bias": (512,),
    "conv5_1.weight": (512, 512, 3, 3), "conv5_1.bias": (512,),
    "conv5_2.weight": (512, 512, 3, 3), "conv5_2.bias": (512,),
    "conv5_3.weight": (512, 512, 3, 3), "conv5_3.bias": (512,),
}

# torchvision's `vgg16()` state dict (vgg16-397923af.pth): the convs at these `features` indices, in the
# order of the trunk names above, then the three fully connected layers.
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TRUNK_CONV_NAMES = tuple(k[: -len(".weight")] for k in VGG16_TRUNK_SHAPES if k.endswith(".weight"))


def torchvision_vgg16_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, idx in zip(TRUNK_CONV_NAMES, TORCHVISION_CONV_INDEX):
        shapes[f"features.{idx}.weight"] = VGG16_TRUNK_SHAPES[f"{name}.weight"]
        shapes[f"features.{idx}.bias"] = VGG16_TRUNK_SHAPES[f"{name}.bias"]
    shapes.update({
        "classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
        "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
    })
    return shapes


def fabricated_torchvision_vgg16(*, seed: int, real_classifier: bool) -> dict[str, torch.Tensor]:
    """Random tensors in torchvision's VGG-16 layout. With real_classifier=False the classifier tensors
    are stride-0 views of one number (right shapes, no 0.5 GB of memory) for models that ignore them."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in torchvision_vgg16_shapes().items():
        if key.startswith("classifier") and not real_classifier:
            out[key] = torch.randn(1, generator=g).expand(shape)
        elif key.endswith(".bias"):
            out[key] = torch.randn(shape, generator=g) * 0.01
        else:  # He-scaled, so that activations keep their magnitude through the 16 layers
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
    return out


def randomise_(model: nn.Module, *, seed: int) -> None:
    """Seeded random values for every parameter (He-scaled weights, small random biases), so that a
    parity test exercises every weight and offset, including the layers that start at zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_in))


def meta_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A checkpoint with these keys and shapes, on the meta device (no memory)."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
