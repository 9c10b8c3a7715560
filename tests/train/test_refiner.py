"""Refiner training on a trained tiny base: the coarse-probability cache is computed once and reused, live
probabilities give the same batches, validation scores the refined and the coarse maps, and the exported
universal refiner is class-agnostic."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refine_cli import models, weights
from refine_cli.config import DataConfig, PerturbConfig, SynthConfig, WorkingCropConfig
from refine_cli.data import generate
from refine_cli.errors import UsageError, WeightsError
from refine_cli.train import Note, TrainResult, train_refiner
from refine_cli.train import probs as probs_module
from refine_cli.train.metrics_log import read_records
from refine_cli.train.working import loss_band_of
from tests.train.conftest import TINY_REFINER_ARCH, TINY_REFINER_ARGS, refiner_config


def _counting(monkeypatch) -> dict[str, int]:
    calls = {"n": 0}
    real = probs_module.coarse_probs

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(probs_module, "coarse_probs", counted)
    return calls


def test_cache_is_computed_once_then_reused(world: Path, trained_base: TrainResult, tmp_path: Path, monkeypatch):
    calls = _counting(monkeypatch)
    notes: list[str] = []

    def keep_notes(event: object) -> None:
        if isinstance(event, Note):
            notes.append(event.text)

    config = refiner_config(world, trained_base.model_path, tmp_path / "probs",
                            data=DataConfig(root=str(world), val_split="val"))
    first = train_refiner(config, tmp_path / "one", on_event=keep_notes)
    assert calls["n"] == 10  # 8 training + 2 validation images, once each
    folders = sorted(p for p in (tmp_path / "probs").iterdir())
    assert len(folders) == 2  # one per split, keyed by base sha256 and file list
    sha = weights.file_sha256(trained_base.model_path)
    assert all(p.name.startswith(sha[:16] + "-") for p in folders)
    marker = json.loads((folders[0] / "cache.json").read_text())
    assert marker["base_sha256"] == sha and marker["samples"] in (8, 2)
    assert sum(len(list(p.glob("*.npz"))) for p in folders) == 10
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "probs").rglob("*.npz")}
    assert any("computing 8 coarse probability maps" in n for n in notes)

    notes.clear()
    calls["n"] = 0
    second = train_refiner(config, tmp_path / "two", on_event=keep_notes)
    assert calls["n"] == 0  # nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "probs").rglob("*.npz")} == mtimes
    assert any("reusing 8 cached" in n for n in notes) and any("reusing 2 cached" in n for n in notes)
    # Same seed, same data, same cache: the same run.
    a = weights.load_checkpoint(first.model_path).state_dict
    b = weights.load_checkpoint(second.model_path).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)

    val = first.val
    assert val is not None and {"miou", "base_miou", "pixel_accuracy", "mean_accuracy"} <= set(val)
    assert 0 <= val["miou"] <= 1 and 0 <= val["base_miou"] <= 1
    assert [r["step"] for r in read_records(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "val"] == [3]

    ckpt = weights.load_checkpoint(first.model_path)
    assert ckpt.kind == "refiner" and ckpt.arch == TINY_REFINER_ARCH
    assert ckpt.meta.classes == ()  # universal: any label set
    assert ckpt.meta.provenance["base"]["sha256"] == sha and ckpt.meta.provenance["coarse_probs"] == "cache"
    refiner = weights.build_model(ckpt)
    out = refiner(torch.randn(1, 3, 24, 24), torch.softmax(torch.randn(1, 5, 24, 24), 1))
    assert out.shape == (1, 5, 24, 24)


def test_live_probabilities_give_the_batches_of_the_cache(world: Path, trained_base: TrainResult, tmp_path: Path):
    config = refiner_config(world, trained_base.model_path, tmp_path / "probs", loop=replace(
        refiner_config(world, trained_base.model_path, tmp_path).loop, steps=2))
    cached = train_refiner(config, tmp_path / "cached")
    live = train_refiner(replace(config, probs="live"), tmp_path / "live")
    first = [read_records(tmp_path / run / "metrics.jsonl")[0]["loss"] for run in ("cached", "live")]
    # Identical crops and augmentation; the cache only rounds the probabilities to float16.
    assert first[0] == pytest.approx(first[1], rel=1e-2)
    assert weights.load_checkpoint(live.model_path).meta.provenance["coarse_probs"] == "live"
    assert cached.final_loss is not None and live.final_loss is not None


def _saved(tmp_path: Path, name: str, arch: str, classes: tuple[str, ...], **args) -> Path:
    model = models.build(arch, **args)
    meta = weights.CheckpointMeta(classes=classes)
    ckpt = weights.checkpoint_from_model(model, arch=arch, arch_args=models.arch_args(arch, **args), meta=meta)
    return weights.save_checkpoint(tmp_path / f"{name}.pt", ckpt)


def test_refiner_requests_that_cannot_work(world: Path, trained_base: TrainResult, tmp_path: Path):
    config = refiner_config(world, trained_base.model_path, tmp_path / "probs")
    with pytest.raises(UsageError, match="is a base network"):
        train_refiner(replace(config, arch="fcn8s_vgg16_compact"), tmp_path / "a")
    with pytest.raises(UsageError, match="has no weights to learn.*guidance=12"):
        train_refiner(replace(config, arch="spn_colour", arch_args={}, crops="working"), tmp_path / "a")
    not_a_base = _saved(tmp_path, "refiner", TINY_REFINER_ARCH, (), **TINY_REFINER_ARGS)
    with pytest.raises(UsageError, match="give a base segmenter checkpoint"):
        train_refiner(replace(config, base=str(not_a_base)), tmp_path / "b")
    three = _saved(tmp_path, "three", "deeplab_largefov_vgg16_compact", ("a", "b", "c"), num_classes=3, width=0.125,
                   fc_channels=16)
    with pytest.raises(UsageError, match="predicts 3 classes but the dataset has 8"):
        train_refiner(replace(config, base=str(three)), tmp_path / "c")
    with pytest.raises(UsageError, match="unknown --probs"):
        train_refiner(replace(config, probs="disk"), tmp_path / "d")
    with pytest.raises(UsageError, match="--images-per-batch"):
        train_refiner(replace(config, images_per_batch=0), tmp_path / "e")


def test_bf16_autocast_trains(world: Path, trained_base: TrainResult, tmp_path: Path):
    # The CUDA default (bf16 autocast) through the same code on the CPU: gates, scans and loss stay finite.
    config = refiner_config(world, trained_base.model_path, tmp_path / "probs")
    result = train_refiner(replace(config, loop=replace(config.loop, steps=2, amp="bf16")), tmp_path / "run")
    assert result.final_loss is not None and 0 < result.final_loss < 10
    state = weights.load_checkpoint(result.model_path).state_dict
    floats = [t for t in state.values() if t.is_floating_point()]  # BatchNorm also keeps an integer step count
    assert floats and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)


def test_from_a_trained_refiner_starts_at_its_weights(world: Path, trained_base: TrainResult, tmp_path: Path):
    with_val = DataConfig(root=str(world), val_split="val")
    first = train_refiner(refiner_config(world, trained_base.model_path, tmp_path / "probs", data=with_val),
                          tmp_path / "first")
    start = weights.load_checkpoint(first.model_path).state_dict
    still = replace(refiner_config(world, trained_base.model_path, tmp_path / "probs").optim, optimizer="sgd",
                    lr=1e-12, momentum=0.0, weight_decay=0.0)
    tuned = train_refiner(refiner_config(world, trained_base.model_path, tmp_path / "probs", optim=still,
                                         data=with_val, init_from=str(first.model_path)), tmp_path / "tuned")
    # Validated before its first step: the --from weights' own scores, the ones the first run ended with.
    assert first.val_start is None and tuned.val_start is not None
    assert tuned.val_start == pytest.approx(first.val, abs=1e-6)
    assert [r["step"] for r in read_records(tuned.run_dir / "metrics.jsonl") if r["kind"] == "val"] == [0, 3]
    ckpt = weights.load_checkpoint(tuned.model_path)
    assert ckpt.meta.provenance["init"] == f"checkpoint:{first.model_path}"
    assert set(ckpt.state_dict) == set(start)
    assert all(torch.allclose(start[k].float(), v.float(), atol=1e-6) for k, v in ckpt.state_dict.items())
    # The same run without --from stays at its seed's initialisation: the weights above came from the checkpoint.
    fresh = train_refiner(refiner_config(world, trained_base.model_path, tmp_path / "probs", optim=still),
                          tmp_path / "fresh")
    other = weights.load_checkpoint(fresh.model_path).state_dict
    assert not all(torch.allclose(start[k].float(), v.float(), atol=1e-6) for k, v in other.items())
    wider = dict(TINY_REFINER_ARGS, hidden=16)
    with pytest.raises(WeightsError, match="does not fit"):
        train_refiner(refiner_config(world, trained_base.model_path, tmp_path / "probs", arch_args=wider,
                                     init_from=str(first.model_path)), tmp_path / "wider")


def test_working_crops_train_on_several_datasets_and_coarse_sources(world, trained_base, tmp_path):
    """--crops working: two datasets of different class counts drawn together, coarse maps from a base network
    (for the dataset of its classes) and from perturbed ground truth; validation scores each pair at full size."""
    two_class = tmp_path / "binary"
    generate(two_class, SynthConfig(n=6, seed=9, height=48, width=80, val_fraction=0.34))
    (two_class / "classes.txt").write_text("background\nobject\n")
    for mask in (two_class / "SegmentationClass").glob("*.png"):  # any shape is "object"
        label = np.asarray(Image.open(mask))
        Image.fromarray(np.where(label == 255, 255, (label > 0)).astype(np.uint8)).save(mask)
    config = refiner_config(
        world, trained_base.model_path, tmp_path / "probs", crops="working", coarse="mixed",
        data=DataConfig(root=str(world), val_split="val"),
        more_data=(DataConfig(root=str(two_class), val_split="val"),),
        arch_args={**TINY_REFINER_ARGS, "residual": True, "keep_gate": True},
        working=WorkingCropConfig(size=32, side=48, max_classes=3), perturb=PerturbConfig(hard_p=0.5),
        boundary_weight=1.0, loop=replace(refiner_config(world, trained_base.model_path, tmp_path).loop, steps=4,
                                          val_every=4),
    )
    result = train_refiner(config, tmp_path / "run")
    assert result.steps == 4 and result.final_loss is not None and result.final_loss > 0
    keys = set(result.val)
    assert {"world/perturbed/miou", "world/base:model/miou", "binary/perturbed/miou", "miou", "bf"} <= keys
    assert "binary/base:model/miou" not in keys  # the 8-class base serves only the 8-class world
    ckpt = weights.load_checkpoint(result.model_path)
    assert ckpt.meta.provenance["crops"] == "working" and len(ckpt.meta.provenance["datasets"]) == 2


def test_working_crops_refuse_a_base_mode_without_a_base(world, tmp_path):
    config = replace(refiner_config(world, Path("unused"), tmp_path), base="", crops="working", coarse="base")
    with pytest.raises(UsageError, match="--coarse perturb"):
        train_refiner(config, tmp_path / "run")


def test_the_colour_refiner_trains_its_guidance_at_full_size_near_the_coarse_boundaries(world, trained_base, tmp_path):
    """`train refiner --arch spn_colour --from CHECKPOINT`: the checkpoint's settings come with its weights, crops are
    taken at the images' own size, the loss is its own (within 8 px of the coarse boundaries, clipped at 3), and
    only the guidance learns."""
    settings = {"spatial_sigma": 12.0, "range_sigma": 0.3, "colour_weight": 0.5, "guidance": 2}
    start = _saved(tmp_path, "colour", "spn_colour", (), **settings)
    notes: list[str] = []
    config = refiner_config(
        world, trained_base.model_path, tmp_path / "probs", arch="spn_colour", arch_args={}, crops="working",
        coarse="mixed", init_from=str(start), data=DataConfig(root=str(world), val_split="val"),
        working=WorkingCropConfig(size=32, side=48, max_classes=3),
        optim=replace(refiner_config(world, trained_base.model_path, tmp_path).optim, lr=0.05),
        loop=replace(refiner_config(world, trained_base.model_path, tmp_path).loop, steps=3, val_every=3),
    )
    result = train_refiner(config, tmp_path / "run", on_event=lambda e: notes.append(getattr(e, "text", "")))
    assert any("runs at full resolution" in n for n in notes)
    ckpt = weights.load_checkpoint(result.model_path)
    assert ckpt.arch == "spn_colour" and {k: ckpt.arch_args[k] for k in settings} == settings
    before = weights.load_checkpoint(start).state_dict
    assert set(ckpt.state_dict) == set(before) and all(k.startswith("guidance.") for k in before)
    assert not torch.equal(ckpt.state_dict["guidance.out.weight"], before["guidance.out.weight"])
    assert result.val is not None and 0 <= result.val["world/perturbed/miou"] <= 1
    # Given another band and clip on the command line, those are used instead.
    model = weights.build_model(ckpt)
    assert loss_band_of(model, config) == (8, 3.0)
    assert loss_band_of(model, replace(config, loss_band=0, loss_clip=1.5)) == (0, 1.5)
    assert loss_band_of(models.build(TINY_REFINER_ARCH, **TINY_REFINER_ARGS), config) == (0, 0.0)
