"""The refine-cli checkpoint format: a plain dict of tensors and plain values, written atomically with
`torch.save` and read back with `torch.load(weights_only=True)`; its metadata; and turning a checkpoint
into a model through the registry with every key and shape checked.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from refine_cli.errors import UnknownNameError, WeightsError, WeightsNotFoundError
from refine_cli.io import atomic_write
from refine_cli.labels import voc_palette
from refine_cli.transforms import Preprocess

FORMAT = "refine-cli.checkpoint"
VERSION = 1
Kind = Literal["base", "refiner"]
KINDS: tuple[str, ...] = ("base", "refiner")

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) container
_PICKLE_PROTO = 0x80  # the legacy torch.save container starts with a pickle protocol opcode
_SHOWN = 5  # how many offending keys an error names
_REASON_CHARS = 120  # the longest loader message an error quotes


class ArchNotAvailableError(WeightsError):
    """The checkpoint's network is registered but its builder cannot make it in this version."""


def _check_plain(value: Any, where: str) -> None:
    """Metadata must stay loadable with `weights_only=True`: plain Python values only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has a non-string key {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise ValueError(f"{where} holds a {type(value).__name__}; only plain values (str, numbers, lists, dicts) fit")


def _plain_copy(value: Any) -> Any:
    """A deep copy with tuples as lists and mappings as dicts (what the file stores)."""
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint carries besides its weights.

    classes: class names in output-channel order (empty for a class-agnostic refiner).
    palette: one (r, g, b) per class; defaults to the VOC colour map.
    preprocess: how the network wants its input (the pipeline never hard-codes a mean).
    provenance: where the weights come from (source url or file, data, recipe, steps, machine, created...).
    metrics: measured or reported scores, e.g. {"synth-val": {"miou": 0.71}}; reported numbers name their source.
    """

    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        if not all(isinstance(c, str) and c for c in classes):
            raise ValueError(f"class names must be non-empty strings, got {list(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names repeat: {list(classes)}")
        palette = tuple(tuple(int(v) for v in rgb) for rgb in self.palette) or tuple(
            voc_palette(len(classes))
        )[: len(classes)]
        if any(len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) for rgb in palette):
            raise ValueError("palette entries must be (r, g, b) with values in 0..255")
        if len(palette) < len(classes):
            raise ValueError(f"palette has {len(palette)} colours for {len(classes)} classes")
        if not isinstance(self.preprocess, Preprocess):
            raise ValueError(f"preprocess must be a Preprocess, got {type(self.preprocess).__name__}")
        _check_plain(self.provenance, "provenance")
        _check_plain(self.metrics, "metrics")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "provenance", _plain_copy(self.provenance))
        object.__setattr__(self, "metrics", _plain_copy(self.metrics))

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "palette": [list(rgb) for rgb in self.palette],
            "preprocess": _plain_copy(self.preprocess.to_dict()),
            "provenance": _plain_copy(self.provenance),
            "metrics": _plain_copy(self.metrics),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointMeta:
        return cls(
            classes=tuple(d.get("classes", ())),
            palette=tuple(tuple(rgb) for rgb in d.get("palette", ())),
            preprocess=Preprocess.from_dict(d.get("preprocess", {})),
            provenance=dict(d.get("provenance", {})),
            metrics=dict(d.get("metrics", {})),
        )


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A network's weights plus everything needed to rebuild and feed it.

    arch: registry name; arch_args: exactly the keyword arguments `models.build(arch, **arch_args)` gets.
    kind: "base" (image -> logits) or "refiner" (image, coarse probabilities -> logits).
    state_dict: parameter and buffer tensors, keys as the module names them.
    """

    arch: str
    arch_args: Mapping[str, Any]
    kind: Kind
    state_dict: Mapping[str, torch.Tensor]
    meta: CheckpointMeta

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a registry name, got {self.arch!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.arch_args, Mapping):
            raise ValueError("arch_args must be a mapping of builder arguments")
        _check_plain(self.arch_args, "arch_args")
        if not isinstance(self.state_dict, Mapping):
            raise ValueError("state_dict must be a mapping of tensors")
        for k, v in self.state_dict.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise ValueError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        if not isinstance(self.meta, CheckpointMeta):
            raise ValueError("meta must be a CheckpointMeta")
        object.__setattr__(self, "arch_args", _plain_copy(self.arch_args))
        object.__setattr__(self, "state_dict", dict(self.state_dict))

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values() if t.is_floating_point())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "arch": self.arch,
            "arch_args": _plain_copy(self.arch_args),
            "kind": self.kind,
            "dtype": "float32",
            "state_dict": dict(self.state_dict),
            "meta": self.meta.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        """Rebuild from the file's dict; a half-precision file (dtype "float16") comes back as float32."""
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version {version!r} is not a checkpoint version")
        if version > VERSION:
            raise ValueError(f"version {version} is newer than this refine-cli reads ({VERSION})")
        state = d["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError("state_dict is not a mapping")
        if d.get("dtype", "float32") == "float16":
            state = {k: v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float16 else v
                     for k, v in state.items()}
        return cls(
            arch=d["arch"],
            arch_args=dict(d["arch_args"]),
            kind=d["kind"],
            state_dict=state,
            meta=CheckpointMeta.from_dict(d["meta"]),
        )


def is_tensor_dict(obj: Any) -> bool:
    """True for a bare state dict: a non-empty mapping from strings to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def non_finite_tensors(obj: Any, prefix: str = "") -> tuple[list[str], int]:
    """The names of the floating-point tensors in `obj` (a tensor, or dicts and lists of them, e.g. a state dict or
    an optimizer state) that hold NaN or infinite values, and how many floating-point tensors there are."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return [], 0
        return ([] if bool(torch.isfinite(obj).all()) else [prefix or "tensor"]), 1
    items: Any = ()
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    bad: list[str] = []
    total = 0
    for key, value in items:
        names, count = non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
        bad += names
        total += count
    return bad, total


def describe_non_finite(bad: list[str], total: int, what: str = "tensors") -> str:
    """'3 of 97 tensors hold NaN or infinite values, first a, b, c'."""
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return f"{len(bad)} of {total} {what} hold NaN or infinite values, first {', '.join(bad[:_SHOWN])}{more}"


# ---------------------------------------------------------------------------------------------- files


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint, *, half: bool = False) -> Path:
    """Write `ckpt` atomically (temp file in the same folder, then os.replace); parents are created.

    half: store floating tensors as float16 (about half the size, for bundled files); loading casts them back
    to float32 and the file records the storage dtype.
    """
    path = Path(path)
    d = ckpt.to_dict()
    if half:
        d["dtype"] = "float16"
        d["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in d["state_dict"].items()}
    d["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in d["state_dict"].items()}
    bad, total = non_finite_tensors(d["state_dict"])  # after the cast: float16 overflows to infinity
    if bad:
        raise WeightsError(f"not writing {path}: {describe_non_finite(bad, total)}; such weights give garbage")
    atomic_torch_save(d, path)
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temp file beside `path`, flushed to disk, then renamed over it."""
    atomic_write(path, lambda f: torch.save(obj, f), durable=True)


def read_torch_file(path: str | os.PathLike[str], *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` with every failure turned into one WeightsError that says what to do.

    mmap: map the tensors' storage lazily instead of reading it (zip files only; cheap metadata peeks).
    """
    path = Path(path)
    if not path.exists():
        raise WeightsNotFoundError(f"{path}: no such file; check the path, or run `refine-cli weights list`")
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise WeightsError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    if not head:
        raise WeightsError(f"{path} is empty (0 bytes): an interrupted copy or download? get the file again")
    is_zip = head == _ZIP_MAGIC
    if not is_zip and head[0] != _PICKLE_PROTO:
        raise WeightsError(f"{path} is not a PyTorch file; give a .pt/.pth file written by torch.save")
    try:
        with warnings.catch_warnings():
            # A plain pickle (not written by torch.save) makes torch warn about its protocol before refusing it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path} holds arbitrary Python objects, not only tensors and plain values; it will not be loaded "
            "(that would run code from the file). Save `model.state_dict()` alone and import that"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        reason = _short_reason(exc)
        raise WeightsError(f"{path} is truncated or corrupt ({reason}); download or copy it again") from None


def _short_reason(exc: BaseException) -> str:
    """The first sentence of a loader's message, cut at a word if still long (torch's can run to a paragraph)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". ")[0].rstrip(".")
    if len(text) <= _REASON_CHARS:
        return text
    return text[: text.rfind(" ", 0, _REASON_CHARS)].rstrip(",;:") + " ..."


def load_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, mmap: bool = False, check_values: bool = True
) -> Checkpoint:
    """Read a refine-cli checkpoint; anything else (a bare state dict, another format) is a WeightsError, and so are
    weights holding NaN or infinite values. check_values=False skips that test, which reads every tensor (for
    looks at the metadata, with mmap)."""
    obj = read_torch_file(path, map_location=map_location, mmap=mmap)
    ckpt = _as_checkpoint(obj, Path(path))
    if check_values:
        require_finite(ckpt.state_dict, Path(path))
    return ckpt


def require_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights read from `path` that hold NaN or infinite values: a network built from them gives garbage
    (NaN probabilities become all-zero masks) without any error of its own."""
    bad, total = non_finite_tensors(state)
    if bad:
        raise WeightsError(f"{path} is unusable: {describe_non_finite(bad, total)}; retrain, or take an earlier "
                           "checkpoint")


def _as_checkpoint(obj: Any, path: Path) -> Checkpoint:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a refine-cli checkpoint")
    if obj.get("format") != FORMAT:
        if "format" not in obj and (is_tensor_dict(obj) or any(is_tensor_dict(obj.get(k)) for k in WRAPPER_KEYS)):
            raise WeightsError(
                f"{path} is a bare state dict without refine-cli metadata; import it first: "
                "`refine-cli weights import FILE --from torchvision|fcn-caffe-port --arch NAME` "
                "(or `--from espnet|espnetv2`)"
            )
        raise WeightsError(f"{path} is not a refine-cli checkpoint (its 'format' entry is {obj.get('format')!r})")
    version = obj.get("version")
    if isinstance(version, int) and version > VERSION:
        raise WeightsError(
            f"{path} was written by a newer refine-cli (checkpoint version {version}; this one reads "
            f"version {VERSION}); upgrade refine-cli"
        )
    try:
        return Checkpoint.from_dict(obj)
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
        raise WeightsError(f"{path} is a damaged refine-cli checkpoint ({detail}); get the file again") from None


# The containers other tools wrap a state dict in (pytorch-fcn's trainer, torchvision's reference scripts).
WRAPPER_KEYS: tuple[str, ...] = ("model_state_dict", "state_dict", "model")


# ---------------------------------------------------------------------------------------------- models


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> str | None:
    """A one-line description of how `got` fails to fit `expected` (keys and shapes), or None when it fits."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} (file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def first(items: list[str]) -> str:
        more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
        return ", ".join(items[:_SHOWN]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {first(shapes)}")
    if unexpected and all(k.startswith(("module.", "_orig_mod.")) for k in unexpected):
        parts.append("the file was saved from a wrapped model: save the unwrapped module's state_dict")
    return "; ".join(parts)


def build_arch(arch: str, arch_args: Mapping[str, Any]) -> nn.Module:
    """`models.build(arch, **arch_args)` with the registry's failures as WeightsErrors."""
    from refine_cli.models import registry  # the networks load only when a model is built

    try:
        spec = registry.spec(arch)
    except UnknownNameError as exc:
        raise WeightsError(
            f"the checkpoint needs the network '{arch}', which this refine-cli does not have (it has: "
            f"{', '.join(sorted(exc.valid))}); upgrade refine-cli or use another checkpoint"
        ) from None
    try:
        inspect.signature(spec.builder).bind(**{**spec.defaults, **arch_args})
    except TypeError as exc:
        raise WeightsError(f"arch_args {dict(arch_args)} do not fit the '{arch}' builder ({exc})") from None
    try:
        return registry.build(arch, **arch_args)
    except NotImplementedError:
        raise ArchNotAvailableError(f"the '{arch}' network cannot be built by this refine-cli version") from None


def build_model(ckpt: Checkpoint) -> nn.Module:
    """Build `ckpt.arch` through the registry and load the weights strictly; returned in eval mode.

    A missing/unexpected key or a shape mismatch raises a WeightsError naming the first offending keys.
    """
    model = build_arch(ckpt.arch, ckpt.arch_args)
    problem = state_dict_mismatch(model.state_dict(), ckpt.state_dict)
    if problem:
        raise WeightsError(f"the weights do not fit the '{ckpt.arch}' network: {problem}")
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose state_dict keys are the network's own (no DDP `module.`, no compile `_orig_mod.`)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def checkpoint_from_model(
    model: nn.Module,
    *,
    arch: str,
    arch_args: Mapping[str, Any],
    meta: CheckpointMeta,
    kind: Kind | None = None,
) -> Checkpoint:
    """Snapshot a model's weights (detached CPU copies, wrappers removed). `kind` defaults to the
    registry's kind for `arch`."""
    if kind is None:
        from refine_cli.models import registry

        kind = registry.spec(arch).kind
    state = {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}
    return Checkpoint(arch=arch, arch_args=dict(arch_args), kind=kind, state_dict=state, meta=meta)
