"""Training a universal refiner the way it runs (`refine-cli train refiner --crops working`): crops at the pipeline's
working resolution (`refine_cli.data.working_crops`), from one or more datasets sampled equally often, with coarse
inputs from base networks' cached probabilities and from ground truth made coarse (`refine_cli.data.perturb`), hard
and soft. Validation refines each val image through the pipeline's own `Engine` (scaled to the working side, the
correction applied to the full-size coarse map) and scores mIoU and boundary F at full size against the coarse
input, per dataset and coarse source.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from refine_cli import models
from refine_cli.config import CoarseMode, PerturbConfig, RefinerTrainConfig
from refine_cli.data import ProbsCache, SegmentationDataset
from refine_cli.data.perturb import perturb
from refine_cli.data.working_crops import WorkingCrop, working_crop
from refine_cli.errors import UsageError
from refine_cli.labels import IGNORE_INDEX
from refine_cli.metrics import BoundaryF, ConfusionMatrix
from refine_cli.models.contract import Refines, TrainsNearBoundaries
from refine_cli.ops.class_map import class_map
from refine_cli import distributed
from refine_cli.train.common import (
    data_fingerprint,
    data_provenance,
    initialise,
    open_split,
    per_rank,
    refiner_arch_args,
    stream_loader,
)
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn, Note
from refine_cli.train.loop import LossTerms, TrainTask, autocast_dtype
from refine_cli.train.probs import BaseNet, cache_dir, ensure_cache, load_base
from refine_cli.transforms import normalize
from refine_cli.weights import Checkpoint, CheckpointMeta, checkpoint_from_model

COARSE_MODES = tuple(c.value for c in CoarseMode)

PERTURBED = "perturbed"  # the name of the ground-truth-made-coarse source in scores and provenance
_VAL_SEED = 20_171_204  # perturbed val masks are drawn from this and the sample name: the same for every run


class WorkingBatch(NamedTuple):
    images: torch.Tensor  # (N, 3, c, c) uint8
    labels: torch.Tensor  # (N, c, c) int64, 255 ignored
    probs: torch.Tensor  # (N, M, c, c) float32


@dataclass
class _Source:
    """One training dataset and the probability caches of the base networks that fit its classes."""

    dataset: SegmentationDataset
    caches: list[ProbsCache]
    name: str = ""  # the dataset folder's name
    cache_names: tuple[str, ...] = ()  # each cache's base network, by file stem


class _WorkingSamples(Dataset):
    """Picklable: draw (index, seed) -> one image's crops. Index i names dataset i // per_dataset and its sample
    (i % per_dataset) % len(dataset), so every dataset is drawn equally often whatever its size."""

    def __init__(self, sources: list[_Source], per_dataset: int, crops: int, config: RefinerTrainConfig) -> None:
        self.sources, self.per_dataset, self.crops = sources, per_dataset, crops
        self.working, self.perturb = config.working, config.perturb
        self.coarse, self.perturb_share, self.hard_p = config.coarse, config.perturb_share, config.hard_p
        self.perturb_base_p = config.perturb_base_p

    def __len__(self) -> int:
        return self.per_dataset * len(self.sources)

    def __getitem__(self, draw: Any) -> list[WorkingCrop]:
        source = self.sources[draw.index // self.per_dataset]
        dataset = source.dataset
        item = (draw.index % self.per_dataset) % len(dataset)
        rng = torch.Generator().manual_seed(draw.seed)
        sample = dataset[item]
        caches = source.caches if self.coarse != CoarseMode.perturb else []
        use_base = bool(caches) and (self.coarse == CoarseMode.base or float(torch.rand((), generator=rng)) >= self.perturb_share)
        probs = None
        if use_base:
            cache = caches[int(torch.randint(len(caches), (), generator=rng))]
            probs = cache.load(sample.name, size=tuple(sample.label.shape), num_classes=dataset.num_classes)
        return [working_crop(sample.image, sample.label, dataset.num_classes, rng=rng, probs=probs,
                             hard_p=self.hard_p, perturb_base_p=self.perturb_base_p, perturb_config=self.perturb,
                             config=self.working)
                for _ in range(self.crops)]


def _collate(items: list[list[WorkingCrop]]) -> WorkingBatch:
    crops = [c for item in items for c in item]
    return WorkingBatch(torch.stack([c.image for c in crops]), torch.stack([c.label for c in crops]),
                        torch.stack([c.probs for c in crops]))


def boundary_weights(labels: torch.Tensor, weight: float, radius: int = 2) -> torch.Tensor:
    """(N, H, W) labels -> (N, H, W) float pixel weights: 1 + `weight` within `radius` pixels of a label change
    (255 borders included), 1 elsewhere, 0 on ignored pixels."""
    valid = labels != IGNORE_INDEX
    x = labels.float()[:, None]
    size = 2 * radius + 1
    edge = (F.max_pool2d(x, size, 1, radius) != -F.max_pool2d(-x, size, 1, radius))[:, 0]
    return (1 + weight * edge.float()) * valid


def band_pixels(coarse: torch.Tensor, band: int) -> torch.Tensor:
    """(N, K, H, W) coarse probabilities -> (N, H, W) bool: the pixels within `band` px (a square) of a change of
    their argmax, marked on the pixel right of or below it."""
    labels = class_map(coarse)
    edges = torch.zeros_like(labels, dtype=torch.bool)
    edges[..., 1:] |= labels[..., 1:] != labels[..., :-1]
    edges[..., 1:, :] |= labels[..., 1:, :] != labels[..., :-1, :]
    return F.max_pool2d(edges[:, None].float(), 2 * band + 1, 1, band)[:, 0] > 0


def loss_band_of(model: nn.Module, config: RefinerTrainConfig) -> tuple[int, float]:
    """(band, clip) of `refiner_loss`: `config.loss_band` / `loss_clip` where given, else the refiner's own
    (`TrainsNearBoundaries`), else every pixel, unclipped (0, 0)."""
    band, clip = model.training_loss_band() if isinstance(model, TrainsNearBoundaries) else (0, 0.0)
    return (band if config.loss_band is None else config.loss_band,
            clip if config.loss_clip is None else config.loss_clip)


def refiner_loss(logits: torch.Tensor, labels: torch.Tensor, coarse: torch.Tensor, *, boundary_weight: float = 0.0,
                 band: int = 0, clip: float = 0.0) -> LossTerms:
    """A working refiner's loss: cross-entropy of (N, K, H, W) logits against (N, H, W) labels (255 ignored), each
    pixel's clipped at `clip` (0: not), weighted by `boundary_weights` and, with `band`, counted only within that
    many px of the (N, K, H, W) coarse map's boundaries (`band_pixels`)."""
    pixels = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    if clip:
        pixels = pixels.clamp_max(clip)
    weights = boundary_weights(labels, boundary_weight)
    if band:
        weights = weights * band_pixels(coarse, band)
    return LossTerms((pixels * weights).sum(), weights.sum())


def perturbed_val_mask(label: torch.Tensor, num_classes: int, name: str, config: PerturbConfig) -> torch.Tensor:
    """The hard coarse mask a val sample is scored from: its ground truth perturbed with a seed drawn from its name
    alone, so every run and every process sees the same masks."""
    rng = torch.Generator().manual_seed(_VAL_SEED ^ zlib.crc32(name.encode()))
    return perturb(label, num_classes, rng=rng, config=replace(config, hard_p=1.0))


class WorkingRefinerTask(TrainTask):
    kind = "refiner"

    def __init__(self, config: RefinerTrainConfig, info: DistInfo, emit: EventFn) -> None:
        self.config, self.info, self.emit = config, info, emit
        self.spec = models.trainable_spec(config.arch, "refiner")
        self.arch = config.arch
        self.arch_args = refiner_arch_args(config.arch, config.arch_args, config.init_from)
        model = models.build(config.arch, **self.arch_args)
        if not (isinstance(model, Refines) and model.per_class):
            raise UsageError(f"--crops working trains universal refiners (class-agnostic); '{config.arch}' takes a "
                             "fixed class count: use --crops released")
        if config.coarse not in COARSE_MODES:
            raise UsageError(f"unknown --coarse '{config.coarse}'; choose {', '.join(COARSE_MODES[:-1])} or "
                             f"{COARSE_MODES[-1]}")
        if config.coarse != CoarseMode.perturb and not config.bases:
            raise UsageError(f"--coarse {config.coarse} needs --base; without a base network use --coarse perturb")
        self.per_rank = per_rank(config.images_per_batch, info, "--images-per-batch")
        self.amp = autocast_dtype(config.loop.amp, info.device)
        datasets = (config.data, *config.more_data)
        self.train_sets = [open_split(d, d.split, emit) for d in datasets]
        self.val_sets = [open_split(d, d.val_split, emit) if d.val_split else None for d in datasets]
        self.val_name = "-".join(Path(d.root).expanduser().resolve().name for d in datasets) + (
            f"-{config.data.val_split}" if config.data.val_split else "")
        bases = [load_base(b, info.device) for b in config.bases]
        for base in bases:
            if not any(len(base.classes) == s.num_classes for s in self.train_sets):
                raise UsageError(f"the base network {base.path.name} predicts {len(base.classes)} classes, which "
                                 "no --data dataset has")
        init = initialise(model, self.spec, arch=config.arch, init=config.init, init_from=config.init_from, emit=emit)
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError(f"this '{config.arch}' has no weights to learn: build it with some (e.g. --arch-arg "
                             "guidance=12 for the colour refiner's learnt guidance) or fine-tune a checkpoint that "
                             "has them (--from)")
        self.model = model.to(info.device)
        self.pre = self.spec.preprocess
        self.loss_band, self.loss_clip = loss_band_of(model, config)
        if model.full_resolution and config.working.side is not None:
            # The pipeline runs it on the full-size image: it learns at that size.
            config = self.config = replace(config, working=replace(config.working, side=None))
            emit(Note(f"'{config.arch}' runs at full resolution: crops at the images' own size (times the zoom), "
                      "not scaled to --working-side"))
        self.images_per_step = config.images_per_batch
        self.per_dataset = max(len(s) for s in self.train_sets)
        self.dataset_size = self.per_dataset * len(self.train_sets)
        prints = [data_fingerprint(s, d, d.split) for s, d in zip(self.train_sets, datasets)]
        self.data_fingerprint = prints[0] if len(prints) == 1 else data_fingerprint_of(prints)
        self.provenance = {
            "datasets": [data_provenance(s, d, f) for s, d, f in zip(self.train_sets, datasets, prints)],
            "init": init, "bases": [b.provenance() for b in bases], "coarse": config.coarse,
            "crops": "working",
        }
        self.sources = [self._source(bases, s, d, d.split) for s, d in zip(self.train_sets, datasets)]
        self.val_sources = [None if v is None else self._source(bases, v, d, d.val_split or "val")
                            for v, d in zip(self.val_sets, datasets)]
        for source in self.sources:
            if config.coarse == CoarseMode.base and not source.caches:
                raise UsageError(f"--coarse base: no --base network predicts the {source.dataset.num_classes} "
                                 f"classes of {source.dataset.classes[:3]}...; add one or use --coarse mixed")

    def _source(self, bases: list[BaseNet], dataset: SegmentationDataset, data: Any, split: str) -> _Source:
        """The dataset with the cached probabilities of every base network that predicts its classes."""
        caches, names = [], []
        for base in bases:
            if len(base.classes) != dataset.num_classes:
                continue
            fingerprint = data_fingerprint(dataset, data, split)
            directory = cache_dir(base_sha256=base.sha256, fingerprint=fingerprint, probs_dir=self.config.probs_dir)
            ensure_cache(base, dataset, directory=directory, split=split, fingerprint=fingerprint, info=self.info,
                         autocast=self._autocast, emit=self.emit)
            caches.append(ProbsCache(directory))
            names.append(base.path.stem)
        return _Source(dataset, caches, Path(data.root).expanduser().resolve().name, tuple(names))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if self.amp is None else torch.autocast(self.info.device.type, dtype=self.amp)

    # ----------------------------------------------------------------------------------------------- steps

    def batches(self, *, start_step: int, total_steps: int) -> Iterable[WorkingBatch]:
        cfg = self.config
        samples = _WorkingSamples(self.sources, self.per_dataset, cfg.crop.crops_per_image, cfg)
        return stream_loader(samples, n=self.dataset_size, seed=cfg.loop.seed,
                             global_batch=cfg.images_per_batch, start_step=start_step, total_steps=total_steps,
                             info=self.info, workers=cfg.loop.workers, collate=_collate)

    def loss_terms(self, module: nn.Module, batch: WorkingBatch) -> LossTerms:
        device = self.info.device
        images = batch.images.to(device, non_blocking=True).float().div_(255)
        probs = batch.probs.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        logits = module(normalize(images, self.pre), probs)
        return refiner_loss(logits, labels, probs, boundary_weight=self.config.boundary_weight, band=self.loss_band,
                            clip=self.loss_clip)

    # ---------------------------------------------------------------------------------------- validation

    def evaluate(self, autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> dict[str, float] | None:
        """mIoU and boundary F (2 px) at full size of the refined and the coarse masks, per dataset and coarse
        source ("<dataset>/<source>/miou", ".../coarse_miou", ".../bf", ".../coarse_bf"), and their means over all
        datasets and sources: "miou", "bf" (refined) and "base_miou", "base_bf" (coarse)."""
        from refine_cli.pipeline.engine import Engine, Network

        if not any(self.val_sources):
            return None
        engine = Engine(base=None, refiner=Network(self.model, CheckpointMeta(preprocess=self.pre), self.arch,
                                                   Path(self.arch)),
                        device=self.info.device, refiner_side=self.config.working.side)
        scores: dict[str, float] = {}
        refined_all, coarse_all = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            for source in self.val_sources:
                if source is None:
                    continue
                dataset = source.dataset
                k = dataset.num_classes
                kinds = [PERTURBED] + [f"base:{n}" for n in source.cache_names]
                counts = {kind: [ConfusionMatrix(k), ConfusionMatrix(k), BoundaryF(), BoundaryF()] for kind in kinds}
                limit = len(dataset) if self.config.val_limit is None else min(self.config.val_limit, len(dataset))
                for i in range(self.info.rank, limit, self.info.world_size):
                    sample = dataset[i]
                    x = sample.image[None].to(self.info.device).float().div_(255)
                    label = sample.label.numpy()
                    inputs = {PERTURBED: perturbed_val_mask(sample.label, k, sample.name, self.config.perturb)}
                    for cache, kind in zip(source.caches, kinds[1:]):
                        inputs[kind] = cache.load(sample.name, size=tuple(sample.label.shape), num_classes=k)
                    for kind, coarse in inputs.items():
                        coarse = coarse[None].to(self.info.device)
                        with torch.inference_mode(), autocast():
                            refined = class_map(engine.refine_logits(x, coarse))[0].cpu().numpy()
                        rough = class_map(coarse)[0].cpu().numpy()
                        cm_r, cm_c, bf_r, bf_c = counts[kind]
                        cm_r.update(refined, label)
                        cm_c.update(rough, label)
                        bf_r.update(refined, label)
                        bf_c.update(rough, label)
                for kind, (cm_r, cm_c, bf_r, bf_c) in counts.items():
                    merged = [_merged(m, self.info) for m in (cm_r, cm_c)]
                    bfs = [_merged_bf(b, self.info) for b in (bf_r, bf_c)]
                    key = f"{source.name}/{kind}"
                    scores[f"{key}/miou"], scores[f"{key}/coarse_miou"] = merged[0].miou, merged[1].miou
                    scores[f"{key}/bf"], scores[f"{key}/coarse_bf"] = bfs[0], bfs[1]
                    refined_all.append((merged[0].miou, bfs[0]))
                    coarse_all.append((merged[1].miou, bfs[1]))
        finally:
            self.model.train(was_training)
        scores["miou"] = sum(m for m, _ in refined_all) / len(refined_all)
        scores["bf"] = sum(b for _, b in refined_all) / len(refined_all)
        scores["base_miou"] = sum(m for m, _ in coarse_all) / len(coarse_all)
        scores["base_bf"] = sum(b for _, b in coarse_all) / len(coarse_all)
        return scores

    def export(self, *, provenance: dict[str, Any], metrics: dict[str, Any]) -> Checkpoint:
        meta = CheckpointMeta(preprocess=self.pre, provenance=provenance, metrics=metrics)
        return checkpoint_from_model(self.model, arch=self.arch, arch_args=self.arch_args, meta=meta, kind="refiner")


def data_fingerprint_of(prints: list[str]) -> str:
    """One fingerprint for several datasets' (in order)."""
    return hashlib.sha256("\n".join(prints).encode()).hexdigest()


def _merged(matrix: ConfusionMatrix, info: DistInfo) -> ConfusionMatrix:
    total = ConfusionMatrix(matrix.num_classes, ignore_index=matrix.ignore_index)
    for part in distributed.all_gather_objects(matrix, info):
        total.merge(part)
    return total


def _merged_bf(bf: BoundaryF, info: DistInfo) -> float:
    total = BoundaryF(tolerance_px=bf.tolerance_px, ignore_index=bf.ignore_index)
    for part in distributed.all_gather_objects(bf, info):
        total.merge(part)
    return total.score().f
