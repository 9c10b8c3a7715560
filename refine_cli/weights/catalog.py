"""The public files refine-cli knows how to download: torchvision's VOC-class segmentation checkpoints
(converted into our format after download) and the ImageNet trunks that initialise training (kept raw).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from refine_cli.errors import UsageError
from refine_cli.labels import VOC_CLASSES
from refine_cli.transforms import Preprocess
from refine_cli.weights.locations import WEIGHTS

# torchvision's COCO_WITH_VOC_LABELS transforms: ImageNet mean/std, short side resized to 520.
TORCHVISION_SEG = Preprocess(resize="short_side", size=520)
_TV_REPORTED = "torchvision model documentation (COCO val2017, 20 VOC categories)"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file.

    sha256: the full hash or its leading hex digits (torchvision publishes the first 8 in the file name and
        its own loader checks only that prefix); the full hash of what was downloaded goes to the manifest.
    kind: "base" (a segmentation checkpoint, converted into `arch`) or "trunk" (raw ImageNet weights).
    trunk: for a trunk, the `ModelSpec.trunk` name it serves ("vgg16", "resnet50", ...).
    source_format: how `import_checkpoint` reads it.
    metrics: scores reported by the publisher, with their source.
    """

    name: str
    file_name: str
    url: str
    sha256: str
    kind: Literal["base", "trunk"]
    description: str
    source_format: Literal["torchvision", "raw"] = "torchvision"
    arch: str | None = None
    trunk: str | None = None
    classes: tuple[str, ...] = ()
    preprocess: Preprocess | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)


def _tv_seg(name: str, file_name: str, arch: str, miou: float, description: str) -> RemoteFile:
    return RemoteFile(
        name=name, file_name=file_name, url=WEIGHTS.torchvision_url + file_name,
        sha256=file_name.rsplit("-", 1)[1].split(".")[0], kind="base", description=description,
        arch=arch, classes=VOC_CLASSES, preprocess=TORCHVISION_SEG,
        metrics=MappingProxyType({"coco-val2017-voc": {"miou": miou, "reported_by": _TV_REPORTED}}),
    )


def _tv_trunk(name: str, file_name: str, trunk: str, description: str) -> RemoteFile:
    return RemoteFile(
        name=name, file_name=file_name, url=WEIGHTS.torchvision_url + file_name,
        sha256=file_name.rsplit("-", 1)[1].split(".")[0], kind="trunk", description=description,
        source_format="raw", trunk=trunk,
    )


# mIoU as reported by torchvision's model documentation for its COCO-trained, VOC-class checkpoints.
REMOTE_FILES: Mapping[str, RemoteFile] = MappingProxyType({
    f.name: f for f in (
        _tv_seg("fcn_resnet50_coco", "fcn_resnet50_coco-1167a1af.pth", "fcn_resnet50", 60.5,
                "FCN on dilated ResNet-50, COCO subset with VOC classes (torchvision)"),
        _tv_seg("fcn_resnet101_coco", "fcn_resnet101_coco-7ecb50ca.pth", "fcn_resnet101", 63.7,
                "FCN on dilated ResNet-101, COCO subset with VOC classes (torchvision)"),
        _tv_seg("deeplabv3_resnet50_coco", "deeplabv3_resnet50_coco-cd0a2569.pth", "deeplabv3_resnet50", 66.4,
                "DeepLabV3 on dilated ResNet-50, COCO subset with VOC classes (torchvision)"),
        _tv_seg("deeplabv3_resnet101_coco", "deeplabv3_resnet101_coco-586e9e4e.pth", "deeplabv3_resnet101", 67.4,
                "DeepLabV3 on dilated ResNet-101, COCO subset with VOC classes (torchvision)"),
        _tv_seg("deeplabv3_mobilenet_v3_large_coco", "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
                "deeplabv3_mobilenet_v3_large", 60.3,
                "DeepLabV3 on MobileNetV3-Large, COCO subset with VOC classes (torchvision)"),
        _tv_trunk("vgg16_imagenet", "vgg16-397923af.pth", "vgg16", "VGG-16 ImageNet classifier (torchvision)"),
        _tv_trunk("resnet50_imagenet", "resnet50-0676ba61.pth", "resnet50",
                  "ResNet-50 ImageNet classifier (torchvision)"),
        _tv_trunk("resnet101_imagenet", "resnet101-63fe2227.pth", "resnet101",
                  "ResNet-101 ImageNet classifier (torchvision)"),
    )
})


def find_remote(name: str) -> RemoteFile | None:
    """The catalog entry called `name`, or serving the trunk `name` (e.g. "vgg16"); None if there is none."""
    if name in REMOTE_FILES:
        return REMOTE_FILES[name]
    return next((f for f in REMOTE_FILES.values() if f.trunk == name), None)


def remote_file(name: str) -> RemoteFile:
    """Like `find_remote`, but an unknown name is a usage error listing the catalog."""
    rf = find_remote(name)
    if rf is None:
        raise UsageError(f"no downloadable weights called '{name}'; choose one of: {', '.join(REMOTE_FILES)}")
    return rf


def remote_files() -> list[RemoteFile]:
    """The catalog, in order (read at call time, so a replaced catalog is seen everywhere)."""
    return list(REMOTE_FILES.values())


def remote_by_file_name(file_name: str) -> RemoteFile | None:
    return next((f for f in REMOTE_FILES.values() if f.file_name == file_name), None)
