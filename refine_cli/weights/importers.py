"""Importers of public checkpoints into the refine-cli format: torchvision's segmentation files (keys match
our networks 1:1) and the PyTorch port of the Caffe FCN weights (flat `conv1_1.weight`... keys, BGR 0..255
input). Every key and shape is checked against the network before anything is written.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

import refine_cli
from refine_cli.errors import UsageError, WeightsError
from refine_cli.labels import VOC_CLASSES
from refine_cli.transforms import CAFFE_FCN, Preprocess
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

Source = Literal["torchvision", "fcn-caffe-port"]
SOURCES: tuple[str, ...] = ("torchvision", "fcn-caffe-port")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# torchvision's segmentation models hold their optional auxiliary head under this prefix.
_AUX_PREFIX = "aux_classifier."


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


def _accepts(arch: str, arg: str) -> bool:
    from refine_cli.models import registry

    return arg in inspect.signature(registry.spec(arch).builder).parameters


def expected_state(arch: str, arch_args: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict as shapes and dtypes: built on the meta device (no memory, no init cost:
    FCN-8s takes ~0.1 s instead of ~4 s on 2 CPU cores)."""
    try:
        with torch.device("meta"):
            return build_arch(arch, arch_args).state_dict()
    except ArchNotAvailableError:
        pass  # an op the meta device lacks looks the same as a missing builder: the real build tells
    except WeightsError:
        raise
    except Exception:  # a builder whose initialisation reads tensor values: build it for real
        pass
    return build_arch(arch, arch_args).state_dict()


def _fit(
    arch: str, arch_args: dict[str, Any], state: Mapping[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check `state` fits `arch` key by key and shape by shape; a file without (or with) torchvision's
    auxiliary head is matched by switching the builder's `aux_loss` when it has one."""
    expected = expected_state(arch, arch_args)
    problem = state_dict_mismatch(expected, state)
    if problem and _accepts(arch, "aux_loss"):
        has_aux = any(k.startswith(_AUX_PREFIX) for k in state)
        if arch_args.get("aux_loss", not has_aux) != has_aux:
            alt_args = {**arch_args, "aux_loss": has_aux}
            alt = expected_state(arch, alt_args)
            if state_dict_mismatch(alt, state) is None:
                return alt, alt_args
    if problem:
        raise WeightsError(f"{path} does not fit the '{arch}' network: {problem}")
    return expected, arch_args


def import_checkpoint(
    file: str | os.PathLike[str],
    *,
    source: Source,
    arch: str,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    save: bool = True,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    preprocess: Preprocess | None = None,
) -> Checkpoint:
    """Read a public checkpoint, check it against `arch` key by key and shape by shape, and (with `save`)
    write it as `<cache>/checkpoints/<name>.pt`.

    source: "torchvision" (torchvision segmentation layout, ImageNet input, short side 520) or
        "fcn-caffe-port" (the PyTorch port of the Caffe FCN weights: Caffe BGR 0..255 input; fits the
        networks whose registry spec takes that input, fcn8s_vgg16 and friends).
    classes: names in output-channel order (default: the 21 VOC classes); their count sets num_classes.
    name: the checkpoint's name in the cache (default: the file's stem).
    """
    from refine_cli.models import registry

    path = Path(file)
    if source not in SOURCES:
        raise UsageError(f"unknown source '{source}'; choose one of: {', '.join(SOURCES)}")
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
    classes = tuple(classes) if classes is not None else VOC_CLASSES

    state = extract_state_dict(read_torch_file(path), path)
    require_finite(state, path)
    expected, arch_args = _fit(arch, registry.arch_args(arch, num_classes=len(classes)), state, path)
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}

    if preprocess is None:
        preprocess = CAFFE_FCN if source == "fcn-caffe-port" else TORCHVISION_SEG
    prov = {
        "source_format": source,
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "imported": now_iso(),
        "refine_cli": refine_cli.__version__,
        **(provenance or {}),
    }
    meta = CheckpointMeta(classes=classes, preprocess=preprocess, provenance=prov, metrics=dict(metrics or {}))
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
