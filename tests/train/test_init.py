"""How a run starts: ImageNet trunk from the cache when there is one (and saying so either way), or the weights of
a refine-cli checkpoint (`--from`); and that data workers change nothing but speed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from refine_cli import weights
from refine_cli.config import OptimConfig
from refine_cli.errors import WeightsError
from refine_cli.train import Note, TrainResult, train_base
from tests.train.conftest import base_config

# Full FCN-8s layout (its spec names the vgg16 trunk) at a width no ImageNet checkpoint fits.
NARROW_FCN = {"arch": "fcn8s_vgg16", "arch_args": {"width": 0.125, "fc_channels": 16}}


def _notes(into: list[str]):
    def keep(event: object) -> None:
        if isinstance(event, Note):
            into.append(event.text)
    return keep


def _one_step(world: Path, **changes):
    config = base_config(world, **NARROW_FCN, **changes)
    return replace(config, augment=replace(config.augment, crop_size=32),
                   loop=replace(config.loop, steps=1, checkpoint_every=1))


def test_trunk_absent_trains_from_scratch_and_says_why(world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("REFINE_CLI_CACHE", str(tmp_path / "cache"))
    notes: list[str] = []
    result = train_base(_one_step(world), tmp_path / "auto", on_event=_notes(notes))
    assert any("from scratch" in n and "weights fetch vgg16_imagenet" in n for n in notes), notes
    assert weights.load_checkpoint(result.model_path).meta.provenance["init"] == "scratch"
    with pytest.raises(WeightsError, match="weights fetch vgg16_imagenet"):
        train_base(_one_step(world, init="imagenet"), tmp_path / "required")


def test_trunk_that_does_not_fit_falls_back_only_in_auto(world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("REFINE_CLI_CACHE", str(tmp_path / "cache"))
    downloads = weights.downloads_dir()
    downloads.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, downloads / "vgg16-397923af.pth")
    notes: list[str] = []
    train_base(_one_step(world), tmp_path / "auto", on_event=_notes(notes))
    assert any("from scratch (the ImageNet vgg16 trunk does not fit" in n for n in notes), notes
    with pytest.raises(WeightsError, match="width"):
        train_base(_one_step(world, init="imagenet"), tmp_path / "required")


def test_from_checkpoint_starts_at_its_weights(world: Path, trained_base: TrainResult, tmp_path: Path):
    start = weights.load_checkpoint(trained_base.model_path)
    config = base_config(world, init_from=str(trained_base.model_path),
                         optim=OptimConfig(optimizer="sgd", lr=1e-12, weight_decay=0.0, grad_clip=0.0))
    result = train_base(replace(config, loop=replace(config.loop, steps=1, checkpoint_every=1)), tmp_path / "run")
    ckpt = weights.load_checkpoint(result.model_path)
    assert ckpt.meta.provenance["init"] == f"checkpoint:{trained_base.model_path}"
    # Parameters stay put at lr 1e-12; BatchNorm's running statistics move with any training step.
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    params = {k: v for k, v in ckpt.state_dict.items() if not k.endswith(statistics)}
    assert len(params) > 0
    assert all(torch.allclose(start.state_dict[k], v, atol=1e-6) for k, v in params.items())
    with pytest.raises(WeightsError, match="holds a 'deeplab_largefov_vgg16_compact' network whose weights do not "
                                           "fit 'fcn8s_vgg16'"):
        train_base(_one_step(world, init_from=str(trained_base.model_path)), tmp_path / "other")


def test_two_stage_dilated_net_trains_the_context_on_a_fixed_front_end(world: Path, tmp_path: Path):
    # DilatedNet (Yu & Koltun): front end first, then only the context module on the trained front end.
    tiny = {"width": 0.125, "fc_channels": 16}
    config = base_config(world, arch="dilated_frontend_vgg16_compact", arch_args=tiny)
    config = replace(config, augment=replace(config.augment, crop_size=32),
                     loop=replace(config.loop, steps=2, checkpoint_every=2))
    front = train_base(config, tmp_path / "front")
    notes: list[str] = []
    context = train_base(replace(config, arch="dilated_context_vgg16_compact", stage="context",
                                 init_from=str(front.model_path)), tmp_path / "context", on_event=_notes(notes))
    assert any("stage 'context': training" in n for n in notes), notes
    before = weights.load_checkpoint(front.model_path).state_dict
    after = weights.load_checkpoint(context.model_path).state_dict
    assert all(torch.equal(before[k], after[k]) for k in before)  # the front end did not move
    assert any(k.startswith("context.") for k in after) and set(before) < set(after)
    state = torch.load(tmp_path / "context" / "last.pt", weights_only=True)
    trained = {p for group in state["optimizer"]["param_groups"] for p in group["params"]}
    assert len(trained) == sum(1 for k in after if k.startswith("context.") and after[k].is_floating_point())


def test_data_workers_do_not_change_the_run(world: Path, tmp_path: Path):
    config = base_config(world)
    config = replace(config, loop=replace(config.loop, steps=2))
    inline = train_base(config, tmp_path / "inline")
    workers = train_base(replace(config, loop=replace(config.loop, workers=2)), tmp_path / "workers")
    a = weights.load_checkpoint(inline.model_path).state_dict
    b = weights.load_checkpoint(workers.model_path).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
