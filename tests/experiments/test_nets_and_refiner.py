"""experiments/nets_and_refiner.py at minuscule scale: a given base network plus the three it trains (DilatedNet
front end, its context stage, ParseNet), each scored alone and with one refiner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import nets_and_refiner
from refine_cli import weights
from refine_cli.config import (
    BaseAugmentConfig,
    BaseTrainConfig,
    CropConfig,
    DataConfig,
    LoopConfig,
    OptimConfig,
    RefinerTrainConfig,
)
from refine_cli.errors import UsageError
from refine_cli.train import train_base, train_refiner
from tests.experiments.conftest import tiny

LOOP = LoopConfig(steps=2, device="cpu", workers=0, log_every=1, checkpoint_every=2, val_every=0)
ADAM = OptimConfig(optimizer="adam", lr=1e-3, weight_decay=0.0)


@pytest.fixture(scope="module")
def base_and_refiner(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nets")
    base = train_base(BaseTrainConfig(
        arch="deeplab_largefov_vgg16_compact", arch_args={"width": 0.125, "fc_channels": 16},
        data=DataConfig(root=str(world)), batch_size=2, augment=BaseAugmentConfig(crop_size=32), optim=ADAM,
        loop=LOOP), root / "base")
    refiner = train_refiner(RefinerTrainConfig(
        arch="spn_universal_compact", arch_args={"guidance_width": 0.125, "hidden": 4, "mid_channels": 4},
        base=str(base.model_path), data=DataConfig(root=str(world)), images_per_batch=2,
        crop=CropConfig(size=32, crops_per_image=1), probs_dir=str(root / "probs"), optim=ADAM, loop=LOOP),
        root / "refiner")
    return base.model_path, refiner.model_path


@pytest.mark.slow
def test_scores_given_and_trained_nets(world: Path, tmp_path: Path, base_and_refiner: tuple[Path, Path]):
    base, refiner = base_and_refiner
    argv = [*tiny(world, tmp_path, steps=2), "--refiner", str(refiner), "--base", f"tiny_lfov={base}",
            "--context-steps", "1", "--limit", "2"]
    report = nets_and_refiner.main(argv)
    saved = json.loads((tmp_path / "results" / "nets_and_refiner.json").read_text())
    assert saved["table_markdown"] == report["table_markdown"]
    assert saved["settings"]["val_images"] == 2 and saved["settings"]["refiner"] == str(refiner)
    assert saved["settings"]["refiner_trained_on"] == "deeplab_largefov_vgg16_compact"
    nets = {r["label"]: r for r in saved["nets"]}
    assert list(nets) == ["tiny_lfov", "dilated_frontend_compact", "dilated_context_compact", "parsenet_compact"]
    assert [nets[k]["train_steps"] for k in nets] == [2, 2, 3, 2]
    assert nets["tiny_lfov"]["source"] == "given" and nets["parsenet_compact"]["source"] == "trained here"
    for r in nets.values():
        for method in ("base", "spn"):
            assert 0 <= r[method]["miou"] <= 1 and 0 <= r[method]["boundary_f"] <= 1 and r[method]["ms_per_image"] > 0
        assert r["miou_gain"] == pytest.approx(r["spn"]["miou"] - r["base"]["miou"])
        assert r["boundary_f_gain"] == pytest.approx(r["spn"]["boundary_f"] - r["base"]["boundary_f"])
    context = weights.load_checkpoint(Path(nets["dilated_context_compact"]["checkpoint"]))
    front = weights.load_checkpoint(Path(nets["dilated_frontend_compact"]["checkpoint"]))
    # Stage two trained the context module only: the front end is the first stage's, bit for bit.
    assert all(context.state_dict[k].equal(v) for k, v in front.state_dict.items())
    assert context.meta.provenance["stage"] == "context"
    assert saved["claim"]["holds"] == all(r["miou_gain"] > 0 for r in nets.values())
    assert report["table_markdown"].count("\n") == 1 + len(nets)


def test_bad_options_are_refused(world: Path, tmp_path: Path, base_and_refiner: tuple[Path, Path]):
    base, refiner = base_and_refiner
    with pytest.raises(UsageError, match="LABEL=CHECKPOINT"):
        nets_and_refiner.main([*tiny(world, tmp_path), "--refiner", str(refiner), "--base", str(base), "--train", ""])
    with pytest.raises(UsageError, match="unknown fcn"):
        nets_and_refiner.main([*tiny(world, tmp_path), "--refiner", str(refiner), "--train", "fcn"])
