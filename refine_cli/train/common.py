"""What both trainers do before the loop starts: open and check the data, fingerprint the training file list,
initialise a network (ImageNet trunk, or a refine-cli checkpoint), and build the DataLoader over the
deterministic sample stream."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from refine_cli import models, weights
from refine_cli.config import DataConfig, Init
from refine_cli.data import SegmentationDataset, ensure_valid, open_dataset
from refine_cli.errors import UsageError, WeightsError
from refine_cli.metrics import ConfusionMatrix
from refine_cli.models import ModelSpec
from refine_cli.models.contract import HasStages, LoadsImageNetTrunk
from refine_cli import distributed
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn, Note
from refine_cli.train.order import Draw, StreamSampler
from refine_cli.transforms import Preprocess, normalize, resize_images, resized_shape

INIT_MODES = tuple(i.value for i in Init)


def open_split(cfg: DataConfig, split: str, emit: EventFn) -> SegmentationDataset:
    """The dataset of one split, checked (`refine_cli.data.ensure_valid`); bad pairs dropped with a note when
    `cfg.skip_bad`, else a DataError naming them."""
    if not cfg.root:
        raise UsageError("no dataset given; pass --data DIR")
    dataset = open_dataset(cfg.root, format=cfg.format, split=split)
    checked = ensure_valid(dataset, skip_bad=cfg.skip_bad)
    if len(checked) < len(dataset):
        emit(Note(f"{split}: skipped {len(dataset) - len(checked)} bad sample(s) of {len(dataset)}"))
    return checked


def data_fingerprint(dataset: SegmentationDataset, cfg: DataConfig, split: str) -> str:
    """sha256 of (dataset folder, layout, split, sample names in order): what keys a probability cache and ties
    a resumed run to its data."""
    key = {"root": str(Path(cfg.root).expanduser().resolve()), "format": cfg.format, "split": split,
           "names": dataset.names}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def data_provenance(dataset: SegmentationDataset, cfg: DataConfig, fingerprint: str) -> dict[str, Any]:
    return {"root": str(Path(cfg.root).expanduser().resolve()), "format": cfg.format, "split": cfg.split,
            "val_split": cfg.val_split, "samples": len(dataset), "classes": list(dataset.classes),
            "fingerprint": fingerprint}


def val_name(cfg: DataConfig) -> str | None:
    """The key validation scores get in a checkpoint's metrics: "<dataset folder>-<split>"."""
    return f"{Path(cfg.root).expanduser().resolve().name}-{cfg.val_split}" if cfg.val_split else None


def _trunk_owner(model: nn.Module) -> nn.Module | None:
    """The module that knows how to load an ImageNet trunk: the network itself, else its first sub-module with
    `load_imagenet_trunk` (the SPN refiner's guidance network)."""
    return next((m for m in model.modules() if isinstance(m, LoadsImageNetTrunk)), None)


def refiner_arch_args(arch: str, given: dict[str, Any], init_from: str | None) -> dict[str, Any]:
    """A refiner's builder arguments: the arch's defaults, then (fine-tuning a checkpoint of the same arch, `--from`)
    the checkpoint's own, then `given` (`--arch-arg`). A refiner's settings may be more than its tensors' shapes (the
    colour refiner's reach and colour weights): fine-tuning keeps them."""
    recorded: dict[str, Any] = {}
    if init_from:
        ckpt = weights.load_checkpoint(weights.resolve(init_from, download=False))
        if ckpt.arch == arch:
            recorded = dict(ckpt.arch_args)
    return models.arch_args(arch, **{**recorded, **given})


def initialise(model: nn.Module, spec: ModelSpec, *, arch: str, init: str, init_from: str | None,
               emit: EventFn) -> str:
    """`--from` a checkpoint when given (`init_from_checkpoint`), else the ImageNet trunk as `--init` says
    (`init_trunk`). Returns what was done, for the provenance."""
    if init_from:
        return init_from_checkpoint(model, init_from, arch=arch, emit=emit)
    return init_trunk(model, spec, init, emit)


def init_trunk(model: nn.Module, spec: ModelSpec, mode: str, emit: EventFn) -> str:
    """Initialise from the arch's ImageNet trunk as `mode` says ("auto": when it is in the cache; "imagenet":
    required; "scratch": never). Returns what was done, for the provenance; says it with a Note."""
    if mode not in INIT_MODES:
        raise UsageError(f"unknown --init '{mode}'; choose one of {', '.join(INIT_MODES)}")
    if mode == Init.scratch:
        emit(Note("initialisation: from scratch (--init scratch)"))
        return "scratch"
    owner = _trunk_owner(model)
    if spec.trunk is None or owner is None:
        if mode == Init.imagenet:
            raise UsageError("this network has no ImageNet trunk to start from; use --init auto or scratch")
        emit(Note("initialisation: from scratch (this network has no ImageNet trunk)"))
        return "scratch"
    try:
        path = weights.trunk_path(spec.trunk, download=False)
    except WeightsError as exc:
        if mode == Init.imagenet:
            raise
        emit(Note(f"initialisation: from scratch ({exc})"))
        return "scratch"
    state = weights.read_torch_file(path)
    try:
        keys = owner.load_imagenet_trunk(state, preprocess=spec.preprocess)
    except WeightsError as exc:
        if mode == Init.imagenet:
            raise
        emit(Note(f"initialisation: from scratch (the ImageNet {spec.trunk} trunk does not fit: {exc})"))
        return "scratch"
    emit(Note(f"initialisation: ImageNet {spec.trunk} trunk from {path} ({len(keys)} tensors)"))
    return f"imagenet:{path.name}"


def init_from_checkpoint(model: nn.Module, name_or_path: str, *, arch: str, emit: EventFn) -> str:
    """Start from a refine-cli checkpoint: of the same network (every key and shape must match), or of another
    network whose every tensor has a place here, the rest keeping its initialisation (a trained DilatedNet
    front end into the context net, before `--stage context`)."""
    path = weights.resolve(name_or_path, download=False)
    ckpt = weights.load_checkpoint(path)
    own = model.state_dict()
    if ckpt.arch == arch:
        problem = weights.state_dict_mismatch(own, ckpt.state_dict)
        if problem:
            raise WeightsError(f"--from {path} does not fit this '{arch}': {problem}")
        model.load_state_dict(ckpt.state_dict)
        emit(Note(f"initialisation: weights of {path}"))
        return f"checkpoint:{path}"
    homeless = [k for k in ckpt.state_dict if k not in own]
    misfits = [k for k in ckpt.state_dict if k in own and ckpt.state_dict[k].shape != own[k].shape]
    if homeless or misfits:
        detail = "; ".join(part for part in (
            f"{len(homeless)} tensors without a place (first: {homeless[0]})" if homeless else "",
            f"{len(misfits)} of another shape (first: {misfits[0]})" if misfits else "") if part)
        raise WeightsError(f"--from {path} holds a '{ckpt.arch}' network whose weights do not fit '{arch}' "
                           f"({detail}); build both with the same width, channels and classes")
    model.load_state_dict(ckpt.state_dict, strict=False)
    kept = [k for k in own if k not in ckpt.state_dict]
    emit(Note(f"initialisation: {len(ckpt.state_dict)} of {len(own)} tensors from {path} ({ckpt.arch}); "
              f"{len(kept)} keep their initialisation (first: {kept[0] if kept else '-'})"))
    return f"checkpoint:{path}"


def freeze_for_stage(model: nn.Module, stage: str | None, arch: str) -> None:
    """Leave only the stage's parameters trainable. A network with stages says which through
    `trainable_parameters(stage)` (e.g. the dilated context net: stage "context" trains the context module on a
    trained front end's outputs)."""
    if stage is None:
        return
    if not isinstance(model, HasStages):
        raise UsageError(f"--stage {stage}: the network '{arch}' has no training stages; drop --stage")
    chosen = {id(p) for p in model.trainable_parameters(stage)}
    if not chosen:
        raise UsageError(f"--stage {stage} leaves nothing to train in '{arch}'")
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)


class SeededSamples(Dataset):
    """A dataset read through `Draw`s: item (index, seed) -> make(dataset[index], seed)."""

    def __init__(self, dataset: Dataset, make: Callable[[Any, int], Any]) -> None:
        self.dataset, self.make = dataset, make

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: Draw) -> Any:
        return self.make(self.dataset[draw.index], draw.seed)


def stream_loader(samples: SeededSamples, *, n: int, seed: int, global_batch: int, start_step: int,
                  total_steps: int, info: DistInfo, workers: int, collate: Callable[[list[Any]], Any]) -> DataLoader:
    """One batch per step for this process, in the order of `refine_cli.train.order`."""
    sampler = StreamSampler(n, seed=seed, global_batch=global_batch, start_step=start_step, total_steps=total_steps,
                            rank=info.rank, world_size=info.world_size)
    return DataLoader(
        samples, batch_size=sampler.per_rank, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=info.device.type == "cuda",
        # A private generator: creating the iterator must not draw from the global RNG (dropout), or a resumed run
        # would see other random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def per_rank(global_count: int, info: DistInfo, what: str) -> int:
    if global_count < 1 or global_count % info.world_size:
        raise UsageError(f"{what} ({global_count}) must be a positive multiple of the {info.world_size} processes")
    return global_count // info.world_size


def scores_of(cm: ConfusionMatrix, info: DistInfo, **extra: ConfusionMatrix) -> dict[str, float]:
    """mIoU, pixel and mean accuracy of `cm` summed over all processes, plus "<name>_miou" of each `extra`
    matrix (e.g. base=... for the coarse predictions a refiner starts from)."""
    merged = []
    for matrix in (cm, *extra.values()):
        gathered = distributed.all_gather_objects(matrix, info)
        total = ConfusionMatrix(matrix.num_classes, ignore_index=matrix.ignore_index)
        for part in gathered:
            total.merge(part)
        merged.append(total)
    main = merged[0]
    scores = {"miou": main.miou, "pixel_accuracy": main.pixel_accuracy, "mean_accuracy": main.mean_accuracy}
    for name, total in zip(extra, merged[1:]):
        scores[f"{name}_miou"] = total.miou
    return scores


def predict_logits(model: nn.Module, image: torch.Tensor, pre: Preprocess, device: torch.device,
                   autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> torch.Tensor:
    """image (3, H, W) uint8 -> (K, H, W) float32 logits: the network run at the size its resize rule asks
    for (as the inference pipeline runs it) and its output resized back."""
    x = image[None].to(device).float().div_(255)
    size = resized_shape(x.shape[-2], x.shape[-1], pre)
    with autocast():
        logits = model(normalize(resize_images(x, size), pre))
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(image.shape[-2:]):
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return logits[0]
