"""The model registry: a plain dict from name to a `ModelSpec`, and keyword-only `build`.

A spec says what kind of network a name is, how its input must be prepared, which builder makes it and
with which fixed arguments (compact variants are the same builder with a smaller width). Behaviour flags
live here, never in `name.startswith(...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from torch import nn

from refine_cli.errors import UnknownNameError, UsageError
from refine_cli.models import colour_spn, dilated, espnet, espnetv2, fcn_vgg, guidance, largefov, parsenet, segmentation, spn
from refine_cli.transforms import CAFFE_FCN, IMAGENET, RAW_RGB, Preprocess


@dataclass(frozen=True)
class ModelSpec:
    """builder: keyword-only callable returning the module.
    kind: "base" (image -> logits) or "refiner" (image, coarse probabilities -> logits).
    preprocess: the input the network expects by default (a checkpoint's metadata overrides it).
    defaults: builder arguments fixed by this name.
    trunk: the ImageNet trunk checkpoint (a `weights` name) used to initialise training, if any.
    fixed_classes: a refiner built for one class count (its builder takes `classes`), not a universal one.
    aux_head: a base network whose builder switches an auxiliary head on and off (`aux_loss`).
    What a built network can do beyond its forward is declared by refine_cli/models/contract.py.
    """

    builder: Callable[..., nn.Module]
    kind: Literal["base", "refiner"]
    preprocess: Preprocess
    description: str
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    trunk: str | None = None
    fixed_classes: bool = False
    aux_head: bool = False


def _fixed(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


MODELS: Mapping[str, ModelSpec] = MappingProxyType({
    # FCN (Long et al.), key-for-key the PyTorch port of the Caffe VOC weights.
    "fcn32s_vgg16": ModelSpec(fcn_vgg.fcn32s, "base", CAFFE_FCN, "FCN-32s, VGG-16 (Long et al.)", trunk="vgg16"),
    "fcn16s_vgg16": ModelSpec(fcn_vgg.fcn16s, "base", CAFFE_FCN, "FCN-16s, VGG-16 (Long et al.)", trunk="vgg16"),
    "fcn8s_vgg16": ModelSpec(fcn_vgg.fcn8s, "base", CAFFE_FCN, "FCN-8s, VGG-16 (Long et al.)", trunk="vgg16"),
    "fcn8s_vgg16_compact": ModelSpec(
        fcn_vgg.fcn8s, "base", IMAGENET, "FCN-8s with a quarter-width, batch-normalised VGG-16 trunk, for CPUs",
        defaults=_fixed(width=0.25, fc_channels=256, batch_norm=True),
    ),
    # DeepLab v1/v2 LargeFOV.
    "deeplab_largefov_vgg16": ModelSpec(
        largefov.deeplab_largefov, "base", IMAGENET, "DeepLab-LargeFOV, VGG-16 (Chen et al.)", trunk="vgg16"
    ),
    "deeplab_largefov_vgg16_compact": ModelSpec(
        largefov.deeplab_largefov, "base", IMAGENET, "DeepLab-LargeFOV with a quarter-width, batch-normalised VGG-16 trunk",
        defaults=_fixed(width=0.25, fc_channels=256, batch_norm=True),
    ),
    # DilatedNet (Yu & Koltun): the front end, then the context module trained on the frozen front end.
    # The compact pair shares its front-end geometry ("same" padding) so that one loads into the other.
    "dilated_frontend_vgg16": ModelSpec(
        dilated.dilated_frontend_vgg16, "base", IMAGENET, "DilatedNet front end, VGG-16 (Yu & Koltun)",
        trunk="vgg16",
    ),
    "dilated_context_vgg16": ModelSpec(
        dilated.dilated_context_vgg16, "base", IMAGENET,
        "DilatedNet front end + large context module, VGG-16 (Yu & Koltun)", trunk="vgg16",
    ),
    "dilated_frontend_vgg16_compact": ModelSpec(
        dilated.dilated_frontend_vgg16, "base", IMAGENET,
        "DilatedNet front end, quarter-width batch-normalised VGG-16, zero-padded convs, for CPUs",
        defaults=_fixed(width=0.25, fc_channels=128, padding="same", batch_norm=True),
    ),
    "dilated_context_vgg16_compact": ModelSpec(
        dilated.dilated_context_vgg16, "base", IMAGENET,
        "DilatedNet compact front end + basic context module, for CPUs",
        defaults=_fixed(width=0.25, fc_channels=128, padding="same", context="basic", batch_norm=True),
    ),
    # ParseNet (Liu, Rabinovich & Berg): global context on DeepLab-LargeFOV.
    "parsenet_vgg16": ModelSpec(
        parsenet.parsenet_vgg16, "base", IMAGENET, "ParseNet on DeepLab-LargeFOV VGG-16 (Liu et al.)",
        trunk="vgg16",
    ),
    "parsenet_vgg16_compact": ModelSpec(
        parsenet.parsenet_vgg16, "base", IMAGENET, "ParseNet on a quarter-width, batch-normalised DeepLab-LargeFOV VGG-16",
        defaults=_fixed(width=0.25, fc_channels=256, batch_norm=True),
    ),
    # torchvision-compatible dilated ResNet / MobileNetV3 models.
    "fcn_resnet50": ModelSpec(
        segmentation.fcn_resnet, "base", IMAGENET, "FCN head on dilated ResNet-50 (torchvision layout)",
        defaults=_fixed(depth=50), trunk="resnet50", aux_head=True,
    ),
    "fcn_resnet101": ModelSpec(
        segmentation.fcn_resnet, "base", IMAGENET, "FCN head on dilated ResNet-101 (torchvision layout)",
        defaults=_fixed(depth=101), trunk="resnet101", aux_head=True,
    ),
    "deeplabv3_resnet50": ModelSpec(
        segmentation.deeplabv3_resnet, "base", IMAGENET, "DeepLabV3 on dilated ResNet-50 (torchvision layout)",
        defaults=_fixed(depth=50), trunk="resnet50", aux_head=True,
    ),
    "deeplabv3_resnet101": ModelSpec(
        segmentation.deeplabv3_resnet, "base", IMAGENET, "DeepLabV3 on dilated ResNet-101 (torchvision layout)",
        defaults=_fixed(depth=101), trunk="resnet101", aux_head=True,
    ),
    "deeplabv3_resnet50_compact": ModelSpec(
        segmentation.deeplabv3_resnet, "base", IMAGENET, "DeepLabV3 on a quarter-width dilated ResNet-50",
        defaults=_fixed(depth=50, width=0.25, aux_loss=False), aux_head=True,
    ),
    "deeplabv3_mobilenet_v3_large": ModelSpec(
        segmentation.deeplabv3_mobilenet_v3_large, "base", IMAGENET,
        "DeepLabV3 on MobileNetV3-Large (torchvision layout)", aux_head=True,
    ),
    # Light-weight networks of Mehta et al., key for key their released files (sacmehta/ESPNet, sacmehta/EdgeNets).
    # No ImageNet trunk initialises them here; the released files carry their own input (see weights/importers.py).
    "espnet": ModelSpec(
        espnet.espnet, "base", IMAGENET, "ESPNet p=2 q=8 with its light decoder (Mehta et al., ECCV 2018)",
        defaults=_fixed(p=2, q=8),
    ),
    "espnetv2": ModelSpec(
        espnetv2.espnetv2, "base", IMAGENET, "ESPNetv2 segmentation, width s=2.0 (Mehta et al., CVPR 2019)",
        defaults=_fixed(s=2.0, decoder_width=16),
    ),
    # Spatial propagation refiners (Liu et al. 2017).
    "spn_universal": ModelSpec(
        spn.spn_universal, "refiner", IMAGENET,
        "Universal SPN refiner: VGG-16 guidance, any number of classes", trunk="vgg16",
    ),
    "spn_universal_compact": ModelSpec(
        spn.spn_universal, "refiner", IMAGENET,
        "Universal SPN refiner for CPUs: eighth-width guidance net, 8 hidden maps decoded at half resolution",
        defaults=_fixed(
            guidance_width=0.125, guidance_batch_norm=True, hidden=8, mid_channels=8, half_skip=True, gate_kernel=1,
            decode_at="half", residual=True,
        ),
    ),
    "spn_colour": ModelSpec(
        colour_spn.spn_colour, "refiner", RAW_RGB,
        "SPN scans with gates from the image's colours, rescaled by a small learnt guidance, at full resolution, any "
        "classes",
    ),
    "spn_voc21": ModelSpec(
        spn.spn_voc21, "refiner", IMAGENET, "SPN as released for VOC: 21 classes in, 32 hidden channels",
        trunk="vgg16", fixed_classes=True,
    ),
})


def names(kind: str | None = None) -> list[str]:
    """Registered names, optionally only those of one kind ("base" or "refiner")."""
    return [n for n, s in MODELS.items() if kind is None or s.kind == kind]


def trainable_spec(name: str, kind: str) -> ModelSpec:
    """The spec of `name`, which `train <kind>` trains; UsageError naming the ones it does otherwise."""
    s = spec(name)
    if s.kind != kind:
        raise UsageError(f"'{name}' is a {s.kind} network; `train {kind}` trains {', '.join(names(kind))}")
    return s


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, list(MODELS)) from None


def arch_args(name: str, *, num_classes: int = 21, **kwargs: Any) -> dict[str, Any]:
    """The full argument set `build` uses for `name`: what a checkpoint records to rebuild the net.
    Base nets take `num_classes`; refiners are class-agnostic (or fix their class count themselves)."""
    s = spec(name)
    args = {**s.defaults, **kwargs}
    if s.kind == "base":
        args["num_classes"] = num_classes
    return args


def build(name: str, *, num_classes: int = 21, **kwargs: Any) -> nn.Module:
    """Build a registered network. Keyword arguments override the spec's defaults."""
    return spec(name).builder(**arch_args(name, num_classes=num_classes, **kwargs))
