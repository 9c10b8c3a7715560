"""`refine-cli evaluate` on coarse masks made elsewhere: the coarse row is the masks' own score, the SPN row is what
`refine --masks` writes, the CRF row what the dense CRF gives on the same input; mask folders mirrored or flat,
missing masks, soft inputs, and the CRF tuned on another split only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from refine_cli import crf, io
from refine_cli.bench.workload import random_checkpoint
from refine_cli.cli import app
from refine_cli.config import CRFConfig, CRFTuneConfig
from refine_cli.data import open_dataset
from refine_cli.data.cache import load_probs
from refine_cli.errors import InputError, UsageError
from refine_cli.evaluation import (
    COARSE, COARSE_CRF, COARSE_SPN, evaluate, find_coarse, match_coarse, parse_grid, spread, tune_crf,
)
from refine_cli.metrics import BoundaryF, ConfusionMatrix
from refine_cli.pipeline import Refiner

runner = CliRunner()
needs_crf = pytest.mark.skipif(
    not crf.crf_available(), reason='pydensecrf2 not installed (pip install "refine-cli[crf]")'
)
# Two held-out DAVIS sequences ("val") and two others ("train"), 48 x 64 frames.
FRAMES = {"breakdance": ("00000", "00003"), "cows": ("00000",), "goat": ("00000", "00003"), "kite-surf": ("00000",)}
H, W = 48, 64


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of a bright rectangle on a dark textured background, and its 0/1 labels."""
    rng = np.random.default_rng(seed)
    top, left = rng.integers(6, 16), rng.integers(8, 24)
    bottom, right = top + rng.integers(14, 26), left + rng.integers(16, 30)
    labels = np.zeros((H, W), np.int64)
    labels[top:bottom, left:right] = 1
    image = np.where(labels[..., None] == 1, np.array([200, 170, 150]), np.array([50, 70, 60]))
    image = np.clip(image + rng.integers(-20, 21, (H, W, 3)), 0, 255).astype(np.uint8)
    return image, labels


def _shifted(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(labels, (dy, dx), axis=(0, 1))


@pytest.fixture()
def davis(tmp_path: Path) -> Path:
    """A DAVIS-layout dataset: images/<seq>/<frame>.png, masks/<seq>/<frame>.png (0/255 grey)."""
    root = tmp_path / "davis"
    seed = 0
    for seq, frames in FRAMES.items():
        for frame in frames:
            image, labels = _scene(seed)
            seed += 1
            for sub in ("images", "masks"):
                (root / sub / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / seq / f"{frame}.png")
            io.write_binary_mask(root / "masks" / seq / f"{frame}.png", labels)
    return root


def _write_coarse(davis: Path, out: Path, *, flat: bool = False) -> dict[str, np.ndarray]:
    """Coarse masks (each frame's labels shifted by a few pixels) for every frame, mirrored or flat; returns them
    by sample name."""
    coarse = {}
    for i, mask in enumerate(sorted((davis / "masks").rglob("*.png"))):
        labels = io.read_mask(mask, num_classes=2)
        shifted = _shifted(labels, 2 + i % 3, -3 + i % 4)
        name = f"{mask.parent.name}_{mask.stem}"
        target = out / f"{name}.png" if flat else out / mask.parent.name / mask.name
        io.write_binary_mask(target, shifted)
        coarse[name] = shifted
    return coarse


@pytest.fixture(scope="module")
def spn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint("spn_universal_compact", tmp_path_factory.mktemp("nets"), hidden=4, mid_channels=4)


def _evaluate(*args: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["evaluate", *args, "--json", "-"])
    out = result.stdout.strip()
    return result.exit_code, json.loads(out[out.index("{"):]) if "{" in out else {}, result.output


def _direct(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int = 2) -> tuple[ConfusionMatrix, float]:
    cm, bf = ConfusionMatrix(num_classes), BoundaryF(tolerance_px=2.0)
    for p, g in zip(preds, gts):
        cm.update(p, g)
        bf.update(p, g)
    return cm, bf.score().f


def _val_labels(davis: Path) -> dict[str, np.ndarray]:
    val = open_dataset(davis, format="davis", split="val")
    return {p.name: val.read_label(p) for p in val.pairs}


def _assert_row(row: dict, cm: ConfusionMatrix, f: float) -> None:
    assert row["pixel_accuracy"] == cm.pixel_accuracy
    assert row["mean_accuracy"] == cm.mean_accuracy
    assert row["miou"] == cm.miou
    assert list(row["iou"].values()) == [float(v) for v in cm.iou]
    assert row["foreground_iou"] == float(cm.iou[1])
    assert row["boundary_f"] == f


def test_masks_as_given_score_what_a_confusion_matrix_gives(davis: Path, tmp_path: Path):
    coarse = _write_coarse(davis, tmp_path / "coarse")
    code, report, output = _evaluate("--data", str(davis), "--format", "davis", "--split", "val", "--masks",
                                     str(tmp_path / "coarse"), "--refiner", "none", "--device", "cpu")
    assert code == 0, output
    gts = _val_labels(davis)
    cm, f = _direct([coarse[n] for n in gts], list(gts.values()))
    assert report["images"] == 3 and report["coarse"] == "masks" and report["base"] is None
    assert [m["method"] for m in report["methods"]] == [COARSE]
    _assert_row(report["methods"][0], cm, f)
    assert report["methods"][0]["ms_per_image"] is None and report["skipped"] == []
    assert cm.miou < 0.95  # the shifted masks are visibly off: the test would notice a row scored on the truth


def test_mirrored_and_flat_mask_folders_match_alike(davis: Path, tmp_path: Path, spn: Path):
    _write_coarse(davis, tmp_path / "mirrored")
    _write_coarse(davis, tmp_path / "flat", flat=True)
    assert (tmp_path / "mirrored" / "cows" / "00000.png").is_file() and (tmp_path / "flat" / "cows_00000.png").is_file()
    reports = []
    for folder in ("mirrored", "flat"):
        code, report, output = _evaluate("--data", str(davis), "--format", "davis", "--split", "val", "--masks",
                                         str(tmp_path / folder), "--refiner", str(spn), "--device", "cpu")
        assert code == 0, output
        reports.append([{k: v for k, v in row.items() if k != "ms_per_image"} for row in report["methods"]])
    assert reports[0] == reports[1]
    val = open_dataset(davis, format="davis", split="val")
    pair = val.pairs[0]
    assert find_coarse(tmp_path / "mirrored", val.relative_path(pair), pair.name) == (
        tmp_path / "mirrored" / "breakdance" / "00000.png")
    assert find_coarse(tmp_path / "flat", val.relative_path(pair), pair.name) == (
        tmp_path / "flat" / "breakdance_00000.png")


@pytest.mark.parametrize("side", [None, "32"])
def test_spn_row_is_what_refine_masks_writes(davis: Path, tmp_path: Path, spn: Path, side: str | None):
    _write_coarse(davis, tmp_path / "coarse")
    side_args = ["--refiner-side", side] if side else []
    code, report, output = _evaluate("--data", str(davis), "--format", "davis", "--split", "val", "--masks",
                                     str(tmp_path / "coarse"), "--refiner", str(spn), "--device", "cpu", *side_args)
    assert code == 0, output
    # The same masks through `refine --masks` (the dataset's class count given, as evaluate reads masks with it).
    result = runner.invoke(app, ["refine", str(davis / "images"), "--masks", str(tmp_path / "coarse"), "--num-classes",
                                 "2", "--refiner", str(spn), "--out", str(tmp_path / "refined"), "--no-overlay",
                                 "--device", "cpu", *side_args])
    assert result.exit_code == 0, result.output
    gts = _val_labels(davis)
    refined = [io.read_mask(tmp_path / "refined" / "masks" / Path(*n.split("_", 1)).with_suffix(".png"))
               for n in gts]
    cm, f = _direct(refined, list(gts.values()))
    spn_row = report["methods"][1]
    assert spn_row["method"] == COARSE_SPN and spn_row["ms_per_image"] > 0
    _assert_row(spn_row, cm, f)
    assert report["methods"][1] != report["methods"][0]  # the refiner changed something


def test_unknown_pixels_count_as_wrong_in_the_coarse_row(davis: Path, tmp_path: Path):
    gts = _val_labels(davis)
    masks = tmp_path / "coarse"
    preds = {}
    for name, gt in gts.items():
        seq, frame = name.split("_", 1)
        pred = _shifted(gt, 1, 2)
        pred[10:20, :] = 255  # unknown band: a grey mask of 0, 1 and 255 keeps 255 as "unknown"
        (masks / seq).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred.astype(np.uint8)).save(masks / seq / f"{frame}.png")
        preds[name] = pred
    code, report, output = _evaluate("--data", str(davis), "--format", "davis", "--split", "val", "--masks",
                                     str(masks), "--refiner", "none", "--device", "cpu")
    assert code == 0, output
    p = np.concatenate([preds[n].ravel() for n in gts])
    g = np.concatenate([gts[n].ravel() for n in gts])
    row = report["methods"][0]
    assert report["unknown_pixels"] == int((p == 255).sum()) > 0
    assert row["pixel_accuracy"] == pytest.approx(float((p == g).mean()), abs=1e-12)
    for c in (0, 1):
        tp, fp, fn = ((p == c) & (g == c)).sum(), ((p == c) & (g != c)).sum(), ((p != c) & (g == c)).sum()
        assert row["iou"][("background", "object")[c]] == pytest.approx(tp / (tp + fp + fn), abs=1e-12)


def test_missing_mask_is_named_or_skipped_and_counted(davis: Path, tmp_path: Path):
    _write_coarse(davis, tmp_path / "coarse")
    (tmp_path / "coarse" / "cows" / "00000.png").unlink()
    args = ["--data", str(davis), "--format", "davis", "--split", "val", "--masks", str(tmp_path / "coarse"),
            "--refiner", "none", "--device", "cpu"]
    code, _, output = _evaluate(*args)
    assert code == 1
    assert "cows_00000" in output and "--skip-missing" in output and "Traceback" not in output
    code, report, output = _evaluate(*args, "--skip-missing")
    assert code == 0, output
    assert report["images"] == 2 and report["skipped"] == ["cows_00000"]


def test_soft_inputs_score_their_argmax_and_feed_the_crf(davis: Path, tmp_path: Path):
    rng = np.random.default_rng(3)
    probs_dir = tmp_path / "probs"
    val = open_dataset(davis, format="davis", split="val")
    for pair in val.pairs:
        labels = val.read_label(pair)
        logits = 3.0 * _shifted(labels, 2, 1)[::2, ::2] + rng.normal(0, 1.0, (H // 2, W // 2))  # half resolution
        fg = 1.0 / (1.0 + np.exp(-(logits - 1.5)))
        io.write_probs(probs_dir / f"{pair.name}.npz", np.stack([1.0 - fg, fg]))
    coarse = match_coarse(val, range(len(val)), probs_dir)
    assert coarse.kind == "probabilities"
    config = CRFConfig(iterations=3, bilateral_sxy=10.0)
    report = evaluate((val[i] for i in range(len(val))), Refiner(base=None, refiner=None, device="cpu"),
                      num_classes=2, coarse=coarse, crf=config)
    loaded = [load_probs(probs_dir / f"{p.name}.npz", size=(H, W), num_classes=2).numpy() for p in val.pairs]
    gts = [val.read_label(p) for p in val.pairs]
    cm, f = _direct([p.argmax(0) for p in loaded], gts)
    row = report.row(COARSE)
    assert (row.pixel_accuracy, row.miou, row.boundary_f) == (cm.pixel_accuracy, cm.miou, f)
    images = [val[i].image.permute(1, 2, 0).numpy() for i in range(len(val))]
    if crf.crf_available():
        cm, f = _direct([crf.dense_crf(im, p, config=config).argmax(0) for im, p in zip(images, loaded)], gts)
        row = report.row(COARSE_CRF)
        assert (row.pixel_accuracy, row.miou, row.boundary_f) == (cm.pixel_accuracy, cm.miou, f)


def test_masks_and_probabilities_in_one_folder_are_refused(davis: Path, tmp_path: Path):
    _write_coarse(davis, tmp_path / "coarse")
    (tmp_path / "coarse" / "cows" / "00000.png").unlink()
    io.write_probs(tmp_path / "coarse" / "cows" / "00000.npz", np.full((2, H, W), 0.5, np.float32))
    code, _, output = _evaluate("--data", str(davis), "--format", "davis", "--split", "val", "--masks",
                                str(tmp_path / "coarse"), "--refiner", "none", "--device", "cpu")
    assert code == 2 and "masks for some samples and probabilities for others" in output


def test_masks_with_base_is_a_usage_error(davis: Path, tmp_path: Path):
    _write_coarse(davis, tmp_path / "coarse")
    code, _, output = _evaluate("--data", str(davis), "--format", "davis", "--masks", str(tmp_path / "coarse"),
                                "--base", "default", "--device", "cpu")
    assert code == 2 and "drop --base" in output
    code, _, output = _evaluate("--data", str(davis), "--format", "davis", "--skip-missing", "--device", "cpu")
    assert code == 2 and "goes with --masks" in output


def test_spread_covers_the_split_evenly():
    assert spread(10, 3) == [0, 4, 9] or spread(10, 3) == [0, 5, 9]
    assert spread(4, 8) == [0, 1, 2, 3]
    assert spread(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert len(set(spread(9, 8))) == 8


# --------------------------------------------------------------------------------------------- CRF tuning


def _edge_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two flat colours meeting at a vertical edge (column 24..40), with light noise, and the labels."""
    rng = np.random.default_rng(seed)
    edge = int(rng.integers(24, 40))
    labels = np.zeros((H, W), np.int64)
    labels[:, edge:] = 1
    image = np.where(labels[..., None] == 1, np.array([220, 190, 170]), np.array([40, 60, 50]))
    return np.clip(image + rng.integers(-8, 9, (H, W, 3)), 0, 255).astype(np.uint8), labels


@pytest.fixture()
def edges(tmp_path: Path) -> tuple[Path, Path]:
    """A folders-layout dataset of edge scenes and coarse masks whose edge sits 6 px too far right."""
    root, coarse = tmp_path / "edges", tmp_path / "edges_coarse"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nobject\n")
    for i in range(3):
        image, labels = _edge_scene(i)
        Image.fromarray(image).save(root / "images" / f"e{i}.png")
        io.write_binary_mask(root / "masks" / f"e{i}.png", labels)
        io.write_binary_mask(coarse / f"e{i}.png", labels & _shifted(labels, 0, 6))
    return root, coarse


@needs_crf
def test_tuning_picks_the_best_of_the_grid(edges: tuple[Path, Path]):
    root, coarse_dir = edges
    data = open_dataset(root, format="folders", split="train")
    coarse = match_coarse(data, range(len(data)), coarse_dir)
    # The coarse edge is 6 px off. Moving it onto the colour edge takes a bilateral kernel that reaches that far
    # (sxy 20, not 5), a weight that counts (3, not 0.01) and a given label held weakly (0.6, not 0.95): one grid
    # point of the eight has all three, and it alone gets the edge right.
    grid = CRFTuneConfig(bilateral_sxy=(5.0, 20.0), bilateral_srgb=(5.0,), bilateral_compat=(0.01, 3.0),
                         label_confidence=(0.95, 0.6), criterion="miou+boundary_f")
    model = Refiner(base=None, refiner=None, device="cpu")
    base = CRFConfig(iterations=5)
    samples = lambda: (data[i] for i in range(len(data)))  # noqa: E731
    tuned = tune_crf(samples(), model, num_classes=2, base=base, grid=grid, coarse=coarse, split="train")
    assert tuned.chosen == {"bilateral_sxy": 20.0, "bilateral_srgb": 5.0, "bilateral_compat": 3.0,
                            "label_confidence": 0.6, "iterations": 5}
    assert len(tuned.results) == 8 and tuned.score == max(r["score"] for r in tuned.results)
    assert tuned.at_grid_edge == ("bilateral_sxy", "bilateral_compat", "label_confidence")  # srgb: one value
    # The coarse masks' own scores on these images: the misplaced edge, as the grid's do-nothing points leave it.
    cm, f = _direct([np.asarray(Image.open(coarse_dir / f"e{i}.png")) // 255 for i in range(3)],
                    [data.read_label(p) for p in data.pairs])
    assert tuned.coarse == {"miou": cm.miou, "boundary_f": f, "score": cm.miou + f}
    others = [r["score"] for r in tuned.results if r["score"] != tuned.score]
    assert len(others) == 7 and tuned.score > max(others) + 0.5
    # Every grid point's score is what `evaluate` gives with that setting: tuning measures what scoring measures.
    for r in tuned.results:
        config = replace(base, bilateral_sxy=r["bilateral_sxy"], bilateral_compat=r["bilateral_compat"],
                         label_confidence=r["label_confidence"])
        row = evaluate(samples(), model, num_classes=2, coarse=coarse, crf=config).row(COARSE_CRF)
        assert (row.miou, row.boundary_f) == (r["miou"], r["boundary_f"])
    # Equal scores go to the first setting in grid order.
    for compats in ((3.0, 10.0), (10.0, 3.0)):
        tie = replace(grid, bilateral_sxy=(20.0,), bilateral_compat=compats, label_confidence=(0.6,))
        tuned = tune_crf(samples(), model, num_classes=2, base=base, grid=tie, coarse=coarse)
        assert tuned.results[0]["score"] == tuned.results[1]["score"]
        assert tuned.config.bilateral_compat == compats[0]


@needs_crf
def test_tuning_on_the_scored_split_is_refused(davis: Path, tmp_path: Path):
    _write_coarse(davis, tmp_path / "coarse")
    args = ["--data", str(davis), "--format", "davis", "--split", "val", "--masks", str(tmp_path / "coarse"),
            "--refiner", "none", "--device", "cpu"]
    code, _, output = _evaluate(*args, "--crf-tune-split", "val")
    assert code == 2 and "is the split being scored" in output
    code, _, output = _evaluate(*args, "--crf-tune-split", "all")  # holds the val sequences too
    assert code == 2 and "shares 3 images" in output
    code, _, output = _evaluate(*args, "--crf-tune-split", "train", "--crf-bilateral-sxy", "20")
    assert code == 2 and "drop --crf-bilateral-sxy" in output


@needs_crf
def test_tuned_parameters_are_used_and_recorded(davis: Path, tmp_path: Path):
    _write_coarse(davis, tmp_path / "coarse")
    code, report, output = _evaluate("--data", str(davis), "--format", "davis", "--split", "val", "--masks",
                                     str(tmp_path / "coarse"), "--refiner", "none", "--device", "cpu",
                                     "--crf-tune-split", "train", "--crf-tune-limit", "2", "--crf-iterations", "2",
                                     "--crf-tune-grid", "sxy=10,20 srgb=5 compat=3,10")
    assert code == 0, output
    tuning = report["crf_tuning"]
    assert tuning["split"] == "train" and tuning["images"] == ["goat_00000", "kite-surf_00000"]
    grid = CRFTuneConfig()
    assert len(tuning["results"]) == 2 * 1 * 2 * len(grid.label_confidence)
    assert tuning["grid"]["bilateral_sxy"] == [10.0, 20.0] and tuning["grid"]["label_confidence"] == list(
        grid.label_confidence)
    best = max(tuning["results"], key=lambda r: r["score"])
    assert tuning["score"] == best["score"]
    chosen = tuning["chosen"]
    assert chosen["iterations"] == 2
    for key in ("bilateral_sxy", "bilateral_srgb", "bilateral_compat", "label_confidence"):
        assert report["crf"][key] == chosen[key] == best[key]
    assert [m["method"] for m in report["methods"]] == [COARSE, COARSE_CRF]
    assert f"bilateral_sxy {chosen['bilateral_sxy']:g}" in output


def test_grid_text_replaces_the_named_values_only():
    grid = parse_grid("sxy=5,10;confidence=0.6 compat=3")
    default = CRFTuneConfig()
    assert (grid.bilateral_sxy, grid.label_confidence, grid.bilateral_compat) == ((5.0, 10.0), (0.6,), (3.0,))
    assert grid.bilateral_srgb == default.bilateral_srgb and grid.images == default.images
    for bad in ("sxy", "size=3", "sxy=a", "confidence=0.5,1", "srgb=0"):
        with pytest.raises(UsageError):
            parse_grid(bad)


def test_match_coarse_errors_name_the_sample(davis: Path, tmp_path: Path):
    val = open_dataset(davis, format="davis", split="val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="breakdance_00000"):
        match_coarse(val, range(len(val)), tmp_path / "empty")
    with pytest.raises(InputError, match="none of the 3 samples"):
        match_coarse(val, range(len(val)), tmp_path / "empty", skip_missing=True)
    _write_coarse(davis, tmp_path / "both")
    io.write_probs(tmp_path / "both" / "cows" / "00000.npz", np.full((2, H, W), 0.5, np.float32))
    with pytest.raises(UsageError, match="separate folders"):
        match_coarse(val, range(len(val)), tmp_path / "both")


# --------------------------------------------------------------------------------------------- real frames


@pytest.mark.slow
@needs_crf
def test_real_davis_frames_coarsened_score_as_computed_directly(real_data: Path, tmp_path: Path):
    from refine_cli.data.coarsen import coarsen_labels

    root = real_data / "davis"
    val = open_dataset(root, format="davis", split="val")
    pairs = val.pairs[:2]
    gts, coarse = [], []
    for pair in pairs:
        gts.append(val.read_label(pair))
        coarse.append(coarsen_labels(gts[-1], 2, 16))
        io.write_binary_mask(tmp_path / "coarse" / val.relative_path(pair).with_suffix(".png"), coarse[-1])
    code, report, output = _evaluate("--data", str(root), "--format", "davis", "--split", "val", "--limit", "2",
                                     "--masks", str(tmp_path / "coarse"), "--crf", "--crf-bilateral-sxy", "20",
                                     "--crf-bilateral-compat", "10", "--device", "cpu")
    assert code == 0, output
    assert report["images"] == 2 and report["refiner"].endswith("spn_colour.pt")
    coarse_row, spn_row, crf_row = report["methods"]
    _assert_row(coarse_row, *_direct(coarse, gts))
    # The SPN row: the bundled refiner on the same masks through the file pipeline, as `refine --masks` runs it.
    model = Refiner(base=None, device="cpu")
    paths = [p.image for p in pairs]
    results = {r.path: r.labels for r in model.refine_paths(
        paths, [tmp_path / "coarse" / val.relative_path(p).with_suffix(".png") for p in pairs], num_classes=2)}
    _assert_row(spn_row, *_direct([results[p] for p in paths], gts))
    # The CRF row: the hard masks at label confidence 0.7 through the dense CRF.
    config = CRFConfig(iterations=5, bilateral_sxy=20.0, bilateral_compat=10.0, label_confidence=0.7)
    images = [io.read_image(p) for p in paths]
    _assert_row(crf_row, *_direct(
        [crf.dense_crf(im, crf.label_probs(c, 2, 0.7), config=config).argmax(0) for im, c in zip(images, coarse)], gts))
    assert report["crf"]["bilateral_sxy"] == 20.0 and report["crf"]["label_confidence"] == 0.7
