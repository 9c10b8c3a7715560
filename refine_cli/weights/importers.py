"""Importers of public checkpoints into the refine-cli format: torchvision's segmentation files (keys match
our networks 1:1), the PyTorch port of the Caffe FCN weights (flat `conv1_1.weight`... keys, BGR 0..255
input) and Sachin Mehta's ESPNet (sacmehta/ESPNet) and ESPNetv2 (sacmehta/EdgeNets) files. Every key and shape is
checked against the network before anything is written; each source brings its input preprocessing, class names
and palette.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

import refine_cli
from refine_cli.errors import UsageError, WeightsError
from refine_cli.labels import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES
from refine_cli.transforms import CAFFE_FCN, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from refine_cli.weights.catalog import TORCHVISION_SEG, remote_file
from refine_cli.weights.format import (
    WRAPPER_KEYS,
    ArchNotAvailableError,
    Checkpoint,
    CheckpointMeta,
    build_arch,
    is_tensor_dict,
    read_torch_file,
    require_finite,
    save_checkpoint,
    state_dict_mismatch,
)
from refine_cli.weights.locations import (
    WEIGHTS,
    bundled_dir,
    checkpoint_names,
    checkpoints_dir,
    downloads_dir,
    file_sha256,
    now_iso,
    record_file,
)

Source = Literal["torchvision", "fcn-caffe-port", "espnet", "espnetv2"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# torchvision's segmentation models hold their optional auxiliary head under this prefix.
_AUX_PREFIX = "aux_classifier."
_BN_COUNTER = "num_batches_tracked"

# ESPNet's CamVid input (sacmehta/ESPNet, train/Transforms.py): BGR as cv2 reads it, per channel (x - mean) / std on
# 0..255, then / 255; for x in [0, 1] that is (x - mean / 255) / std. The source does not publish the statistics of
# its CamVid run: these come from its own procedure (train/loadData.py: each image's per-channel mean and standard
# deviation, averaged over the training list) run on the 367 SegNet CamVid train images. Measured on CamVid val
# (weights/espnet_inputs.py): pixel accuracy 93.26 %; 55.82 % in RGB order, 29.11 % with the Cityscapes statistics
# of the source's test script, 9.94 % without the / 255.
CAMVID_BGR_MEAN = (110.20, 108.37, 104.95)
CAMVID_BGR_STD = (72.05, 72.59, 69.86)
# The source trained at CamVid's 480 x 360: larger inputs are shrunk to that width so street objects keep their
# training scale (a no-op on CamVid itself).
ESPNET_CAMVID = Preprocess(color_order="BGR", mean=tuple(m / 255 for m in CAMVID_BGR_MEAN), std=CAMVID_BGR_STD,
                           resize="long_side", size=480)
# ESPNetv2 on PASCAL VOC (sacmehta/EdgeNets): RGB / 255 with the ImageNet mean/std. EdgeNets' test script squeezes
# every image to 384 x 384 and its demo keeps the size (rounded down to multiples of 32). Mean foreground IoU on the
# 236 DAVIS frames (854 x 480; weights/bundle_pretrained.py --rules): 384 x 384 41.74, short side 384 49.28, short
# side 480 52.34, the demo's 832 x 480 52.38. The short side at 480 keeps that score and, unlike the demo's rule,
# also brings large photos to the scale (and cost) of these frames.
ESPNETV2_VOC = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="short_side", size=480)


@dataclass(frozen=True)
class SourceFormat:
    """What a `--from` source implies.

    arch: the network its layout fits (None: any network with that layout, named by `--arch`).
    preprocess, classes, palette: the defaults the checkpoint gets (palette () = the VOC colour map).
    """

    arch: str | None
    preprocess: Preprocess
    classes: tuple[str, ...] = VOC_CLASSES
    palette: tuple[tuple[int, int, int], ...] = ()


SOURCE_FORMATS: Mapping[str, SourceFormat] = MappingProxyType({
    "torchvision": SourceFormat(None, TORCHVISION_SEG),
    "fcn-caffe-port": SourceFormat(None, CAFFE_FCN),
    "espnet": SourceFormat("espnet", ESPNET_CAMVID, CAMVID_CLASSES, CAMVID_PALETTE),
    "espnetv2": SourceFormat("espnetv2", ESPNETV2_VOC),
})
SOURCES: tuple[str, ...] = tuple(SOURCE_FORMATS)


@dataclass
class _Layout:
    """A file's tensors as our network names them, the builder arguments read from its shapes, its number of
    outputs (None when the file does not say) and what the conversion changed."""

    state: dict[str, torch.Tensor]
    arch_args: dict[str, Any] = field(default_factory=dict)
    outputs: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def read_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names from a text file, one per line in output-channel order (blank lines and # comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(
            f"cannot read the class list {path} ({exc.strerror}); give a text file, one name a line"
        ) from None
    names = tuple(s for s in (line.split("#", 1)[0].strip() for line in lines) if s)
    if not names:
        raise UsageError(f"{path} lists no class names; write one name a line, in output-channel order")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"{path} repeats class names: {', '.join(repeated)}")
    return names


def imported_path(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where `import_checkpoint(..., name=name)` writes: `<cache>/checkpoints/<name>.pt`."""
    return checkpoints_dir(cache_dir) / f"{name}{WEIGHTS.suffix}"


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a bare state dict, or of one wrapped as {"model_state_dict" | "state_dict" | "model": ...}."""
    if is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        if obj and all(isinstance(k, str) for k in obj):
            bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
            if bad is not None:
                raise WeightsError(
                    f"{path} is not a state dict: entry '{bad}' is a {type(obj[bad]).__name__}, not a tensor "
                    f"(and no {' / '.join(WRAPPER_KEYS)} entry holds one)"
                )
    raise WeightsError(f"{path} holds a {type(obj).__name__} with no state dict of tensors in it")


def _has_aux_head(arch: str) -> bool:
    from refine_cli.models import registry

    return registry.spec(arch).aux_head


def expected_state(arch: str, arch_args: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict as shapes and dtypes: built on the meta device (no memory, no init cost:
    FCN-8s takes ~0.1 s instead of ~4 s on 2 CPU cores)."""
    try:
        with torch.device("meta"):
            return build_arch(arch, arch_args).state_dict()
    except ArchNotAvailableError:
        pass  # an op the meta device lacks looks the same as a missing builder: the real build tells
    except (NotImplementedError, RuntimeError):  # a builder whose initialisation reads tensor values (no registered
        pass  # one does today): the meta device refuses, so build it for real
    return build_arch(arch, arch_args).state_dict()


def _block_indices(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks `prefix.<i>.` the file holds."""
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


def _tensor(state: Mapping[str, torch.Tensor], key: str, path: Path, source: str) -> torch.Tensor:
    if key not in state:
        raise WeightsError(f"{path} has no '{key}': it is not an {source} file (check --from)")
    return state[key]


def _espnet_layout(state: dict[str, torch.Tensor], path: Path) -> _Layout:
    """sacmehta/ESPNet's `ESPNet(classes, p, q)`: p and q from the numbered ESP modules, the decoder width from the
    last transposed conv, whose last output channel is dropped: ESPNet trains its ignored label as a class of its
    own (CamVid's void, 11; Cityscapes' 19), which no caller wants as a prediction."""
    weight = _tensor(state, "classifier.weight", path, "ESPNet")  # (in, out, 2, 2): a transposed conv
    width, outputs = int(weight.shape[0]), int(weight.shape[1])
    state = {**state, "classifier.weight": weight[:, : outputs - 1].clone()}
    args = {"p": _block_indices(state, "encoder.level2."), "q": _block_indices(state, "encoder.level3."),
            "decoder_channels": width}
    note = {"dropped_output_channels": [outputs - 1],
            "dropped_because": "the source trains its ignored label (CamVid void) as its last output; removed from "
                               "classifier.weight so the checkpoint predicts only the scored classes"}
    return _Layout(state, args, outputs - 1, note)


def _espnetv2_layout(state: dict[str, torch.Tensor], path: Path) -> _Layout:
    """sacmehta/EdgeNets' `ESPNetv2Segmentation`: the width s from the encoder's level widths, the decoder width
    from its first stage, the class count from the last 1x1 conv."""
    from refine_cli.models.espnetv2 import WIDTHS

    widths = (int(_tensor(state, "base_net.level1.act.weight", path, "ESPNetv2").shape[0]),
              int(_tensor(state, "base_net.level2_0.act.weight", path, "ESPNetv2").shape[0]))
    scales = [s for s, w in WIDTHS.items() if w[:2] == widths]
    if not scales:
        raise WeightsError(f"{path} has ESPNetv2 level widths {widths}, which no width s of ESPNetv2 has")
    args = {"s": scales[0],
            "decoder_width": int(_tensor(state, "bu_br_l2.0.weight", path, "ESPNetv2").shape[0]) // 4}
    outputs = int(_tensor(state, "bu_dec_l4.merge_layer.3.weight", path, "ESPNetv2").shape[0])
    return _Layout(state, args, outputs)


def _fill_batchnorm_counters(expected: Mapping[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Add the `num_batches_tracked` counters a file from PyTorch < 0.4.1 lacks, as 0, as `load_state_dict` does
    for such files (the counter only matters to BatchNorm without momentum, in training)."""
    missing = [k for k in expected if k.endswith(_BN_COUNTER) and k not in state
               and k[: -len(_BN_COUNTER)] + "running_mean" in state]
    for k in missing:
        state[k] = torch.zeros((), dtype=torch.long)


def _fit(
    arch: str, arch_args: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check `state` fits `arch` key by key and shape by shape; a file without (or with) torchvision's
    auxiliary head is matched by switching the builder's `aux_loss` when it has one. Missing BatchNorm counters
    are added to `state` first (`_fill_batchnorm_counters`)."""
    expected = expected_state(arch, arch_args)
    _fill_batchnorm_counters(expected, state)
    problem = state_dict_mismatch(expected, state)
    if problem and _has_aux_head(arch):
        has_aux = any(k.startswith(_AUX_PREFIX) for k in state)
        if arch_args.get("aux_loss", not has_aux) != has_aux:
            alt_args = {**arch_args, "aux_loss": has_aux}
            alt = expected_state(arch, alt_args)
            _fill_batchnorm_counters(alt, state)
            if state_dict_mismatch(alt, state) is None:
                return alt, alt_args
    if problem:
        raise WeightsError(f"{path} does not fit the '{arch}' network: {problem}")
    return expected, arch_args


def import_checkpoint(
    file: str | os.PathLike[str],
    *,
    source: Source,
    arch: str | None = None,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    save: bool = True,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    preprocess: Preprocess | None = None,
    palette: Sequence[tuple[int, int, int]] | None = None,
) -> Checkpoint:
    """Read a public checkpoint, check it against `arch` key by key and shape by shape, and (with `save`)
    write it as `<cache>/checkpoints/<name>.pt`.

    source: "torchvision" (torchvision segmentation layout, ImageNet input, short side 520),
        "fcn-caffe-port" (the PyTorch port of the Caffe FCN weights: Caffe BGR 0..255 input; fits the
        networks whose registry spec takes that input, fcn8s_vgg16 and friends),
        "espnet" (sacmehta/ESPNet's `ESPNet(classes, p, q)`; CamVid input and classes; the last output, the
        ignored label, is dropped) or "espnetv2" (sacmehta/EdgeNets' ESPNetv2 segmentation; VOC input and classes).
    arch: the network (required for torchvision and fcn-caffe-port; espnet and espnetv2 fit one network each).
    classes: names in output-channel order (default: the source's: CamVid's 11 for espnet, else the 21 VOC
        classes); their count sets num_classes.
    palette: one colour per class (default: CamVid's colours with CamVid's classes, else the VOC colour map).
    name: the checkpoint's name in the cache (default: the file's stem).
    """
    from refine_cli.models import registry

    path = Path(file)
    if source not in SOURCES:
        raise UsageError(f"unknown source '{source}'; choose one of: {', '.join(SOURCES)}")
    fmt = SOURCE_FORMATS[source]
    if arch is None:
        if fmt.arch is None:
            raise UsageError(f"--from {source} needs --arch NAME, one of: {', '.join(registry.names('base'))}")
        arch = fmt.arch
    elif fmt.arch is not None and arch != fmt.arch:
        raise UsageError(f"--from {source} fits the '{fmt.arch}' network, not '{arch}'; leave out --arch")
    spec = registry.spec(arch)  # an unknown arch is a usage error listing the valid ones
    if spec.kind != "base":
        bases = ", ".join(registry.names("base"))
        raise UsageError(f"'{arch}' is a {spec.kind}; importers bring in base segmenters: {bases}")
    if source == "fcn-caffe-port" and spec.preprocess != CAFFE_FCN:
        fits = [n for n, s in registry.MODELS.items() if s.preprocess == CAFFE_FCN]
        raise UsageError(f"--from fcn-caffe-port fits the Caffe FCN networks ({', '.join(fits)}), not '{arch}'")
    name = name if name is not None else path.stem
    if save and not _NAME.fullmatch(name):
        raise UsageError(f"'{name}' cannot name a checkpoint; use letters, digits, '.', '_' and '-' (give --name)")
    if save and name in checkpoint_names(bundled_dir()):
        raise UsageError(f"'{name}' is the name of a bundled checkpoint; pick another with --name")

    state = extract_state_dict(read_torch_file(path), path)
    require_finite(state, path)
    if source == "espnet":
        layout = _espnet_layout(state, path)
    elif source == "espnetv2":
        layout = _espnetv2_layout(state, path)
    else:
        layout = _Layout(state)
    if classes is None:
        if layout.outputs is not None and layout.outputs != len(fmt.classes):
            raise UsageError(f"{path} predicts {layout.outputs} classes, not the {len(fmt.classes)} of --from "
                             f"{source}; name them with --classes (a file, one name a line)")
        classes = fmt.classes
    classes = tuple(classes)
    if layout.outputs is not None and layout.outputs != len(classes):
        raise UsageError(f"{path} predicts {layout.outputs} classes and {len(classes)} names were given")
    if palette is None:
        palette = fmt.palette if classes == fmt.classes else ()

    state = layout.state
    given = set(state)
    expected, arch_args = _fit(
        arch, registry.arch_args(arch, num_classes=len(classes), **layout.arch_args), state, path)
    filled = len(set(state) - given)
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}

    if preprocess is None:
        preprocess = fmt.preprocess
    prov = {
        "source_format": source,
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "imported": now_iso(),
        "refine_cli": refine_cli.__version__,
        **layout.provenance,
        **({"batchnorm_counters_added": filled} if filled else {}),
        **(provenance or {}),
    }
    meta = CheckpointMeta(classes=classes, palette=tuple(palette), preprocess=preprocess, provenance=prov,
                          metrics=dict(metrics or {}))
    ckpt = Checkpoint(arch=arch, arch_args=arch_args, kind=spec.kind, state_dict=state, meta=meta)
    if save:
        out = save_checkpoint(imported_path(name, cache_dir=cache_dir), ckpt)
        record_file(out, source=str(path.name))
    return ckpt


def convert_remote(name: str, *, cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Convert the downloaded catalog file `name` into `<cache>/checkpoints/<name>.pt` (fetch it first);
    an existing conversion is kept unless `force`."""
    rf = remote_file(name)
    if rf.kind != "base" or rf.arch is None:
        raise UsageError(f"'{rf.name}' is an ImageNet trunk used to initialise training; it is not converted")
    out = imported_path(rf.name, cache_dir=cache_dir)
    if out.is_file() and not force:
        return out
    raw = downloads_dir(cache_dir) / rf.file_name
    if not raw.is_file():
        raise WeightsError(f"'{rf.name}' is not downloaded yet; run `refine-cli weights fetch {rf.name}`")
    import_checkpoint(
        raw, source="torchvision", arch=rf.arch, classes=rf.classes or None, name=rf.name, cache_dir=cache_dir,
        provenance={"url": rf.url}, metrics=rf.metrics, preprocess=rf.preprocess,
    )
    return out
