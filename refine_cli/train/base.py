"""Training a base segmenter from the registry (`refine-cli train base`): random rescale / crop / flip of image
and label, cross-entropy over labelled pixels (255 ignored) plus the auxiliary head's loss where the network has
one, validation mIoU at full image size, and the exported checkpoint with the dataset's classes and palette.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from refine_cli import models
from refine_cli.config import BaseAugmentConfig, BaseTrainConfig
from refine_cli.data import Sample
from refine_cli.errors import UsageError
from refine_cli.labels import IGNORE_INDEX
from refine_cli.metrics import ConfusionMatrix
from refine_cli.models.contract import TrainsWithAux
from refine_cli.train.common import (
    SeededSamples,
    data_fingerprint,
    data_provenance,
    freeze_for_stage,
    initialise,
    open_split,
    per_rank,
    predict_logits,
    scores_of,
    stream_loader,
    val_name,
)
from refine_cli.distributed import DistInfo
from refine_cli.train.events import EventFn, Note
from refine_cli.train.loop import LossTerms, TrainResult, TrainTask, run_training
from refine_cli.transforms import Preprocess, normalize
from refine_cli.weights import Checkpoint, CheckpointMeta, checkpoint_from_model


class BaseBatch(NamedTuple):
    images: torch.Tensor  # (N, 3, S, S) uint8 RGB
    labels: torch.Tensor  # (N, S, S) int64, 255 = ignore


def mean_colour(pre: Preprocess) -> tuple[int, int, int]:
    """The RGB uint8 colour that `normalize(., pre)` maps to zero: padding with it is zero padding to the net."""
    rgb = [m / pre.scale for m in pre.mean]
    if pre.color_order == "BGR":
        rgb = rgb[::-1]
    return tuple(int(round(min(1.0, max(0.0, v)) * 255)) for v in rgb)  # type: ignore[return-value]


def scale_crop_flip(
    image: torch.Tensor,
    label: torch.Tensor,
    *,
    rng: torch.Generator,
    augment: BaseAugmentConfig,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """image (3, H, W) uint8 and label (H, W) int64 -> a crop_size square of both: rescaled by a factor uniform in
    [scale_min, scale_max] (image bilinear, antialiased when shrinking; label nearest), padded at the bottom and
    right when smaller than the crop (image `fill`, label 255), a uniform random crop, mirrored with p = 0.5."""
    size = augment.crop_size
    factor = augment.scale_min + (augment.scale_max - augment.scale_min) * float(torch.rand((), generator=rng))
    h, w = label.shape
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    if (nh, nw) != (h, w):
        shrink = nh < h or nw < w
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=shrink)[0].round().clamp(0, 255).to(torch.uint8)
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].long()
    ph, pw = max(0, size - nh), max(0, size - nw)
    if ph or pw:
        colour = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)
        padded = colour.expand(3, nh + ph, nw + pw).clone()
        padded[:, :nh, :nw] = image
        image = padded
        label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
    top = int(torch.randint(0, image.shape[1] - size + 1, (), generator=rng))
    left = int(torch.randint(0, image.shape[2] - size + 1, (), generator=rng))
    image = image[:, top:top + size, left:left + size]
    label = label[top:top + size, left:left + size]
    if augment.flip and float(torch.rand((), generator=rng)) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


class _TrainForward(nn.Module):
    """The network's training forward as a module's forward, so DDP sees the call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net.forward_train(x)
        return out.out, out.aux


def pixel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed softmax cross-entropy over the pixels whose label is not 255 (float32)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


class _Augment:
    """Picklable per-sample transform for DataLoader workers."""

    def __init__(self, augment: BaseAugmentConfig, fill: tuple[int, int, int]) -> None:
        self.augment, self.fill = augment, fill

    def __call__(self, sample: Sample, seed: int) -> BaseBatch:
        rng = torch.Generator().manual_seed(seed)
        image, label = scale_crop_flip(sample.image, sample.label, rng=rng, augment=self.augment, fill=self.fill)
        return BaseBatch(image, label)


def _collate(items: list[BaseBatch]) -> BaseBatch:
    return BaseBatch(torch.stack([i.images for i in items]), torch.stack([i.labels for i in items]))


class BaseTask(TrainTask):
    kind = "base"

    def __init__(self, config: BaseTrainConfig, info: DistInfo, emit: EventFn) -> None:
        self.config, self.info, self.emit = config, info, emit
        aug = config.augment
        if aug.crop_size < 1 or not 0 < aug.scale_min <= aug.scale_max:
            raise UsageError("--crop-size must be >= 1 and 0 < --scale-min <= --scale-max")
        self.spec = models.trainable_spec(config.arch, "base")
        self.per_rank = per_rank(config.batch_size, info, "--batch-size")
        self.train_set = open_split(config.data, config.data.split, emit)
        self.val_set = open_split(config.data, config.data.val_split, emit) if config.data.val_split else None
        self.val_name = val_name(config.data)
        self.classes, self.palette = self.train_set.classes, self.train_set.palette
        self.arch = config.arch
        self.arch_args = models.arch_args(config.arch, num_classes=len(self.classes), **config.arch_args)
        model = models.build(config.arch, **self.arch_args)
        if not isinstance(model, TrainsWithAux):
            raise UsageError(f"'{config.arch}' has no training forward (forward_train)")
        init = initialise(model, self.spec, arch=config.arch, init=config.init, init_from=config.init_from, emit=emit)
        freeze_for_stage(model, config.stage, config.arch)
        self.model = model.to(info.device)
        self.forward = _TrainForward(self.model)
        self.images_per_step = config.batch_size
        self.dataset_size = len(self.train_set)
        self.data_fingerprint = data_fingerprint(self.train_set, config.data, config.data.split)
        self.provenance = {"dataset": data_provenance(self.train_set, config.data, self.data_fingerprint),
                           "init": init, "stage": config.stage}
        self.pre = self.spec.preprocess
        if config.stage:
            emit(Note(f"stage '{config.stage}': training {sum(p.numel() for p in self.trainable_parameters())} "
                      f"of {sum(p.numel() for p in model.parameters())} parameters"))

    def train_module(self) -> nn.Module:
        return self.forward

    def batches(self, *, start_step: int, total_steps: int) -> Iterable[BaseBatch]:
        samples = SeededSamples(self.train_set, _Augment(self.config.augment, mean_colour(self.pre)))
        return stream_loader(samples, n=self.dataset_size, seed=self.config.loop.seed,
                             global_batch=self.config.batch_size, start_step=start_step, total_steps=total_steps,
                             info=self.info, workers=self.config.loop.workers, collate=_collate)

    def loss_terms(self, module: nn.Module, batch: BaseBatch) -> LossTerms:
        device = self.info.device
        images = batch.images.to(device, non_blocking=True).float().div_(255)
        labels = batch.labels.to(device, non_blocking=True)
        out, aux = module(normalize(images, self.pre))
        total = pixel_loss(out, labels)
        if aux is not None:
            total = total + self.config.aux_weight * pixel_loss(aux, labels)
        return LossTerms(total, (labels != IGNORE_INDEX).sum())

    def evaluate(self, autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> dict[str, float] | None:
        if self.val_set is None:
            return None
        cm = ConfusionMatrix(len(self.classes))
        with torch.inference_mode():
            for i in range(self.info.rank, len(self.val_set), self.info.world_size):
                sample = self.val_set[i]
                logits = predict_logits(self.model, sample.image, self.pre, self.info.device, autocast)
                cm.update(logits.argmax(0), sample.label.to(logits.device))
        return scores_of(cm, self.info)

    def export(self, *, provenance: dict[str, Any], metrics: dict[str, Any]) -> Checkpoint:
        meta = CheckpointMeta(classes=self.classes, palette=self.palette, preprocess=self.pre,
                              provenance=provenance, metrics=metrics)
        return checkpoint_from_model(self.model, arch=self.arch, arch_args=self.arch_args, meta=meta, kind="base")


def train_base(
    config: BaseTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: EventFn | None = None,
) -> TrainResult:
    """Train a base segmenter as `config` says; checkpoints, metrics and the exported `model.pt` go to `run_dir`.
    Works alike in one process and under torchrun (one process per GPU, or gloo on CPUs)."""
    return run_training(config=config, run_dir=run_dir, resume=resume, overwrite=overwrite, on_event=on_event,
                        build_task=lambda info, emit: BaseTask(config, info, emit))
