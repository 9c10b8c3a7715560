"""Coarse class probabilities for refiner training: the base network loaded from its checkpoint, and the on-disk
cache of its outputs (computed once per base checkpoint and dataset, as the released SPN was trained).

A cache folder is keyed by the base checkpoint file's sha256 and the dataset's fingerprint (folder, layout, split,
file list), so another base or another list gets another folder. Maps are float16 `.npz` files (`ProbsCache`);
`cache.json` is written last and marks the folder complete. A killed computation resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refine_cli import weights
from refine_cli.data import ProbsCache, SegmentationDataset
from refine_cli.errors import UsageError
from refine_cli import distributed
from refine_cli.train.common import predict_logits
from refine_cli.distributed import DistInfo
from refine_cli.train.events import CacheProgress, EventFn, Note
from refine_cli.transforms import Preprocess
from refine_cli.weights.locations import atomic_write_text, cache_root, file_sha256, now_iso

CACHE_FORMAT = "refine-cli.probs-cache"
MARKER = "cache.json"
PROBS_SUBDIR = "probs"
_PROGRESS_EVERY = 8


@dataclass(frozen=True)
class BaseNet:
    """A base segmenter loaded for producing coarse probabilities."""

    module: nn.Module
    preprocess: Preprocess
    classes: tuple[str, ...]
    arch: str
    path: Path
    sha256: str

    def provenance(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "arch": self.arch, "classes": list(self.classes)}


def load_base(name_or_path: str, device: torch.device) -> BaseNet:
    """The base checkpoint (a name `refine_cli.weights.resolve` knows, or a path), built in eval mode on `device`."""
    if not name_or_path:
        raise UsageError("no base network given; pass --base CHECKPOINT (a name or a .pt path)")
    path = weights.resolve(name_or_path)
    ckpt = weights.load_checkpoint(path)
    if ckpt.kind != "base":
        raise UsageError(f"--base {path} holds a {ckpt.kind} network ({ckpt.arch}); give a base segmenter checkpoint")
    module = weights.build_model(ckpt).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return BaseNet(module, ckpt.meta.preprocess, ckpt.meta.classes, ckpt.arch, path, file_sha256(path))


def coarse_probs(base: BaseNet, image: torch.Tensor, device: torch.device,
                 autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> torch.Tensor:
    """image (3, H, W) uint8 -> (K, H, W) float32 class probabilities of the base network, on `device`."""
    with torch.inference_mode():
        return predict_logits(base.module, image, base.preprocess, device, autocast).softmax(0)


def cache_dir(*, base_sha256: str, fingerprint: str, probs_dir: str | Path | None = None) -> Path:
    """`<probs_dir or the refine-cli cache/probs>/<base sha256[:16]>-<dataset fingerprint[:16]>`."""
    root = Path(probs_dir).expanduser() if probs_dir else cache_root() / PROBS_SUBDIR
    return root / f"{base_sha256[:16]}-{fingerprint[:16]}"


@dataclass(frozen=True)
class CacheReport:
    path: Path
    computed: int  # maps computed by this call (over all processes)
    reused: int  # maps found already on disk


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def ensure_cache(
    base: BaseNet,
    dataset: SegmentationDataset,
    *,
    directory: Path,
    split: str,
    fingerprint: str,
    info: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    emit: EventFn,
) -> CacheReport:
    """Make sure `directory` holds the base network's probabilities for every sample of `dataset`, computing only
    the missing ones. Rank 0 decides what is missing; each process computes every world_size-th of those, then
    whatever its own node still lacks (nodes need not share the folder). Every process returns the same report."""
    cache = ProbsCache(directory)
    names = dataset.names

    def plan() -> tuple[bool, list[int]]:
        marker = _marker(directory)
        complete = (marker is not None and marker.get("base_sha256") == base.sha256
                    and marker.get("data_fingerprint") == fingerprint)
        return complete, [i for i, name in enumerate(names) if name not in cache]

    complete, missing = distributed.on_main(plan, info)
    if not missing:
        emit(Note(f"{split}: reusing {len(names)} cached coarse probability maps in {directory}"))
    else:
        emit(Note(f"{split}: computing {len(missing)} coarse probability maps with {base.arch} into {directory}"
                  + (f" ({len(names) - len(missing)} already there)" if len(missing) < len(names) else "")))
    mine = missing[info.rank::info.world_size]
    for done, i in enumerate(mine, start=1):
        _compute(base, dataset, cache, i, info, autocast)
        if done % _PROGRESS_EVERY == 0 or done == len(mine):
            emit(CacheProgress(split, min(len(missing), done * info.world_size), len(missing)))
    distributed.barrier(info)
    local = [i for i, name in enumerate(names) if name not in cache]
    for i in local:
        _compute(base, dataset, cache, i, info, autocast)
    count = torch.tensor([len(mine) + len(local)], dtype=torch.int64, device=info.device)
    computed = int(distributed.all_reduce_sum(count, info)[0])
    if info.is_main and (computed or not complete):
        meta = {"format": CACHE_FORMAT, "base_sha256": base.sha256, "base": str(base.path), "base_arch": base.arch,
                "data_fingerprint": fingerprint, "split": split, "samples": len(names),
                "classes": list(dataset.classes), "created": now_iso()}
        atomic_write_text(directory / MARKER, json.dumps(meta, indent=2) + "\n")
    distributed.barrier(info)
    return CacheReport(directory, computed=computed, reused=len(names) - len(missing))


def _compute(base: BaseNet, dataset: SegmentationDataset, cache: ProbsCache, index: int, info: DistInfo,
             autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
    pair = dataset.pairs[index]
    image = torch.from_numpy(dataset.read_image(pair).transpose(2, 0, 1).copy())
    cache.save(pair.name, coarse_probs(base, image, info.device, autocast).cpu())
