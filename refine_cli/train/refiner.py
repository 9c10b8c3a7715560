"""Training an SPN refiner (`refine-cli train refiner`) as released (Liu et al. 2017): coarse probabilities of a
base checkpoint (cached once, or live), one joint random affine of image, label and probabilities per image, then
random crops redrawn while they hold fewer than 2 labels; the refiner sees the image normalised its own way plus
the probabilities, and learns with cross-entropy on its logits (255 ignored). Validation scores the refined and
the coarse predictions on full images.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli import models
from refine_cli.config import AugmentConfig, CropConfig, CropsMode, ProbsMode, RefinerTrainConfig
from refine_cli.data import ProbsCache, Sample, refiner_crops
from refine_cli.data.augment import CropBatch
from refine_cli.errors import UsageError
from refine_cli.labels import IGNORE_INDEX
from refine_cli.metrics import ConfusionMatrix
from refine_cli.models.spn import suppress_absent_classes
from refine_cli.train.base import pixel_loss
from refine_cli.train.common import (
    SeededSamples,
    data_fingerprint,
    data_provenance,
    initialise,
    open_split,
    per_rank,
    refiner_arch_args,
    scores_of,
    stream_loader,
    val_name,
)
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn
from refine_cli.train.loop import LossTerms, TrainResult, TrainTask, autocast_dtype, run_training
from refine_cli.train.probs import BaseNet, cache_dir, coarse_probs, ensure_cache, load_base
from refine_cli.train.working import WorkingRefinerTask, loss_band_of, refiner_loss
from refine_cli.transforms import normalize
from refine_cli.weights import Checkpoint, CheckpointMeta, checkpoint_from_model

PROBS_MODES = tuple(p.value for p in ProbsMode)
CROP_MODES = tuple(c.value for c in CropsMode)


class _Crops:
    """Picklable per-sample transform: one image's crops (cached probabilities travel with the sample)."""

    def __init__(self, augment: AugmentConfig | None, crop: CropConfig) -> None:
        self.augment, self.crop = augment, crop

    def __call__(self, sample: Sample, seed: int) -> CropBatch:
        return crops_of(sample.image, sample.label, sample.probs, seed=seed, augment=self.augment, crop=self.crop)


def crops_of(image: torch.Tensor, label: torch.Tensor, probs: torch.Tensor, *, seed: int,
             augment: AugmentConfig | None, crop: CropConfig) -> CropBatch:
    """One image's share of a batch, drawn from its own seed (so where it is computed does not matter)."""
    return refiner_crops(image, label, probs, rng=torch.Generator().manual_seed(seed), augment=augment, crop=crop)


def _raw(sample: Sample, seed: int) -> tuple[Sample, int]:
    return sample, seed


def _collate_crops(items: list[CropBatch]) -> CropBatch:
    return CropBatch(torch.cat([c.images for c in items]), torch.cat([c.labels for c in items]),
                     torch.cat([c.probs for c in items]))


def _collate_raw(items: list[tuple[Sample, int]]) -> list[tuple[Sample, int]]:
    return items


class RefinerTask(TrainTask):
    kind = "refiner"

    def __init__(self, config: RefinerTrainConfig, info: DistInfo, emit: EventFn) -> None:
        self.config, self.info, self.emit = config, info, emit
        self.spec = models.trainable_spec(config.arch, "refiner")
        if config.probs not in PROBS_MODES:
            raise UsageError(f"unknown --probs '{config.probs}'; choose one of {', '.join(PROBS_MODES)}")
        crop = config.crop
        if crop.size < 2 or crop.crops_per_image < 1 or crop.max_tries < 1 or crop.min_labels < 0:
            raise UsageError("--crop-size must be >= 2, --crops-per-image and --max-tries >= 1")
        self.per_rank = per_rank(config.images_per_batch, info, "--images-per-batch")
        self.amp = autocast_dtype(config.loop.amp, info.device)

        self.train_set = open_split(config.data, config.data.split, emit)
        self.val_set = open_split(config.data, config.data.val_split, emit) if config.data.val_split else None
        self.val_name = val_name(config.data)
        self.classes = self.train_set.classes
        self.base: BaseNet | None = load_base(config.base, info.device)
        if self.base.classes and len(self.base.classes) != len(self.classes):
            raise UsageError(f"the base network {self.base.path.name} predicts {len(self.base.classes)} classes but "
                             f"the dataset has {len(self.classes)}; train a base on this label set first")

        self.arch = config.arch
        self.arch_args = refiner_arch_args(config.arch, config.arch_args, config.init_from)
        # A joint refiner (the released VOC form) takes exactly the dataset's classes; the universal one any number.
        self.joint = self.spec.fixed_classes
        if self.joint:
            given = self.arch_args.setdefault("classes", len(self.classes))
            if given != len(self.classes):
                raise UsageError(f"{config.arch} built for {given} classes cannot train on {len(self.classes)}")
        model = models.build(config.arch, **self.arch_args)
        init = initialise(model, self.spec, arch=config.arch, init=config.init, init_from=config.init_from, emit=emit)
        self.loss_band, self.loss_clip = loss_band_of(model, config)
        self.model = model.to(info.device)
        self.pre = self.spec.preprocess
        self.images_per_step = config.images_per_batch
        self.dataset_size = len(self.train_set)
        self.data_fingerprint = data_fingerprint(self.train_set, config.data, config.data.split)
        self.provenance = {"dataset": data_provenance(self.train_set, config.data, self.data_fingerprint),
                           "init": init, "base": self.base.provenance(), "coarse_probs": config.probs}
        if config.probs == ProbsMode.cache:
            self.train_set = self._cached(self.train_set, config.data.split)
            if self.val_set is not None:
                self.val_set = self._cached(self.val_set, config.data.val_split or "val")
            self.base = None  # every probability map now comes from disk: free the network

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if self.amp is None else torch.autocast(self.info.device.type, dtype=self.amp)

    def _cached(self, dataset: Any, split: str) -> Any:
        assert self.base is not None
        fingerprint = data_fingerprint(dataset, self.config.data, split)
        directory = cache_dir(base_sha256=self.base.sha256, fingerprint=fingerprint, probs_dir=self.config.probs_dir)
        self.cache_report = ensure_cache(self.base, dataset, directory=directory, split=split, fingerprint=fingerprint,
                                         info=self.info, autocast=self._autocast, emit=self.emit)
        cached = copy.copy(dataset)
        cached.probs_cache = ProbsCache(directory)
        return cached

    # ----------------------------------------------------------------------------------------------- steps

    def batches(self, *, start_step: int, total_steps: int) -> Iterable[CropBatch]:
        cfg = self.config
        live = cfg.probs == ProbsMode.live
        samples = SeededSamples(self.train_set, _raw if live else _Crops(cfg.augment, cfg.crop))
        loader = stream_loader(samples, n=self.dataset_size, seed=cfg.loop.seed, global_batch=cfg.images_per_batch,
                               start_step=start_step, total_steps=total_steps, info=self.info,
                               workers=cfg.loop.workers, collate=_collate_raw if live else _collate_crops)
        return self._live(loader) if live else loader

    def _live(self, loader: Iterable[list[tuple[Sample, int]]]) -> Iterator[CropBatch]:
        """Coarse probabilities computed by the base network for each step's images, then cropped alike."""
        assert self.base is not None
        for items in loader:
            crops = []
            for sample, seed in items:
                probs = coarse_probs(self.base, sample.image, self.info.device, self._autocast).cpu()
                crops.append(crops_of(sample.image, sample.label, probs, seed=seed, augment=self.config.augment,
                                      crop=self.config.crop))
            yield _collate_crops(crops)

    def loss_terms(self, module: nn.Module, batch: CropBatch) -> LossTerms:
        device = self.info.device
        images = batch.images.to(device, non_blocking=True).float().div_(255)
        probs = batch.probs.to(device, non_blocking=True).float()
        labels = batch.labels.to(device, non_blocking=True)
        logits = module(normalize(images, self.pre), probs)
        if self.loss_band or self.loss_clip:
            return refiner_loss(logits, labels, probs, band=self.loss_band, clip=self.loss_clip)
        return LossTerms(pixel_loss(logits, labels), (labels != IGNORE_INDEX).sum())

    # ---------------------------------------------------------------------------------------- validation

    def evaluate(self, autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> dict[str, float] | None:
        if self.val_set is None:
            return None
        k = len(self.classes)
        refined, coarse = ConfusionMatrix(k), ConfusionMatrix(k)
        device = self.info.device
        with torch.inference_mode():
            for i in range(self.info.rank, len(self.val_set), self.info.world_size):
                sample = self.val_set[i]
                if sample.probs is not None:
                    probs = sample.probs.to(device)
                else:
                    assert self.base is not None
                    probs = coarse_probs(self.base, sample.image, device, autocast)
                x = normalize(sample.image[None].to(device).float().div_(255), self.pre)
                logits = self._refine(x, probs[None], autocast)[0]
                label = sample.label.to(device)
                refined.update(logits.argmax(0), label)
                coarse.update(probs.argmax(0), label)
        return scores_of(refined, self.info, base=coarse)

    def _refine(self, x: torch.Tensor, probs: torch.Tensor,
                autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> torch.Tensor:
        """Refined logits (1, K, H, W); with `suppress_absent`, classes absent from the coarse argmax get -inf (the
        released test-time rule). The universal refiner treats every class map alone, so only the present ones
        need propagating: the result is the same as propagating all and suppressing."""
        if not self.config.suppress_absent:
            with autocast():
                return self.model(x, probs).float()
        k = probs.shape[1]
        if self.joint:
            with autocast():
                return suppress_absent_classes(self.model(x, probs).float(), probs)
        present = F.one_hot(probs.argmax(1), k).flatten(0, 2).amax(0).nonzero().flatten()
        with autocast():
            sub = self.model(x, probs[:, present]).float()
        logits = torch.full_like(probs, float("-inf"))
        logits[:, present] = sub
        return logits

    def export(self, *, provenance: dict[str, Any], metrics: dict[str, Any]) -> Checkpoint:
        # The universal refiner is class-agnostic: its checkpoint names no classes. The joint one outputs the
        # dataset's classes in order.
        classes = self.classes if self.joint else ()
        palette = self.train_set.palette if self.joint else ()
        meta = CheckpointMeta(classes=classes, palette=palette, preprocess=self.pre, provenance=provenance,
                              metrics=metrics)
        return checkpoint_from_model(self.model, arch=self.arch, arch_args=self.arch_args, meta=meta, kind="refiner")


def train_refiner(
    config: RefinerTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: EventFn | None = None,
) -> TrainResult:
    """Train an SPN refiner on `config.base`'s coarse probabilities (`config.crops` "released"), or the way the
    pipeline runs it (`config.crops` "working", `refine_cli.train.working`); files go to `run_dir` (see
    `run_training`)."""
    if config.crops not in CROP_MODES:
        raise UsageError(f"unknown --crops '{config.crops}'; choose one of {', '.join(CROP_MODES)}")
    task = RefinerTask if config.crops == CropsMode.released else WorkingRefinerTask
    return run_training(config=config, run_dir=run_dir, resume=resume, overwrite=overwrite, on_event=on_event,
                        build_task=lambda info, emit: task(config, info, emit))
