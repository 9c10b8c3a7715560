"""The `Refiner` API: single images, streams of files, batching, memory fallback, the released absent-class rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refine_cli import Refiner
from refine_cli.errors import DeviceError, InputError, UsageError
from refine_cli.pipeline import Failure, RefineResult


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def refiner(nets) -> Refiner:
    return Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu")


def test_refine_one_array_pil_or_path(refiner: Refiner, tmp_path: Path):
    img = _image(37, 53)
    result = refiner.refine(img, return_probs=True)
    assert result.labels.shape == (37, 53) and result.labels.dtype == np.uint8
    assert result.coarse.shape == (37, 53)
    assert result.probs.shape == (8, 37, 53)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probs.argmax(0))
    np.testing.assert_array_equal(refiner.refine(Image.fromarray(img)).labels, result.labels)
    Image.fromarray(img).save(tmp_path / "x.png")
    np.testing.assert_array_equal(refiner.refine(tmp_path / "x.png").labels, result.labels)


def test_refined_labels_only_use_classes_the_coarse_map_votes_for(refiner: Refiner):
    for seed in range(3):
        result = refiner.refine(_image(48, 48, seed))
        assert set(np.unique(result.labels)) <= set(np.unique(result.coarse))


def test_given_mask_replaces_the_base_network(nets):
    masks_only = Refiner(base=None, refiner=nets["refiner"], device="cpu")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:20] = 255  # a binary 0/255 mask
    result = masks_only.refine(_image(40, 40), mask=mask)
    np.testing.assert_array_equal(result.coarse, mask // 255)
    assert set(np.unique(result.labels)) <= {0, 1}
    with pytest.raises(InputError, match=r"mask is \(40, 40\) but the image is \(40, 41\) \(height, width\)"):
        masks_only.refine(_image(40, 41), mask=mask)


def test_no_refiner_returns_the_base_output(nets):
    base_only = Refiner(base=nets["base"], refiner=None, device="cpu")
    result = base_only.refine(_image(32, 32))
    np.testing.assert_array_equal(result.labels, result.coarse)


def test_batches_give_what_single_images_give(nets, tmp_path: Path):
    paths = []
    for i, (h, w) in enumerate([(32, 40), (32, 40), (48, 32), (32, 40), (48, 32)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_image(h, w, i)).save(paths[-1])
    runs = []
    for batch_size in (1, 4):
        model = Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", batch_size=batch_size)
        runs.append({r.path.name: r.probs for r in model.refine_paths(paths, return_probs=True)})
    assert sorted(runs[0]) == sorted(runs[1]) == sorted(p.name for p in paths)
    for name, probs in runs[0].items():
        # No padding: a batch differs from single images only by convolution rounding.
        np.testing.assert_allclose(runs[1][name], probs, atol=1e-4)


def test_unreadable_files_come_back_as_failures(refiner: Refiner, tmp_path: Path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.fromarray(_image(32, 32)).save(good)
    bad.write_bytes(b"not an image at all")
    outcomes = {o.path.name: o for o in refiner.refine_paths([good, bad])}
    assert isinstance(outcomes["good.png"], RefineResult)
    assert isinstance(outcomes["bad.jpg"], Failure) and "bad.jpg" in outcomes["bad.jpg"].reason


def test_out_of_memory_halves_the_batch(nets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", batch_size=4)
    run = model.engine.run
    sizes = []

    def flaky(images, *args, **kwargs):
        sizes.append(images.shape[0])
        if images.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated")
        return run(images, *args, **kwargs)

    monkeypatch.setattr(model.engine, "run", flaky)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_image(32, 32, i)).save(paths[-1])
    outcomes = list(model.refine_paths(paths))
    assert all(isinstance(o, RefineResult) for o in outcomes)
    assert sorted(o.path.name for o in outcomes) == [p.name for p in paths]  # nothing lost on the way down
    assert sizes == [4, 2, 1, 1, 1, 1]  # later batches stay at the size that fit


def test_large_images_run_scaled_down_and_come_back_full_size(nets):
    small_side = Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", max_side=64)
    seen = []
    base_probs = small_side.engine.base_probs
    small_side.engine.base_probs = lambda x: seen.append(tuple(x.shape[-2:])) or base_probs(x)
    result = small_side.refine(_image(100, 200))
    assert seen == [(32, 64)]
    assert result.labels.shape == (100, 200)


def test_a_gpu_that_is_not_there_is_an_error(nets):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        Refiner(base=nets["base"], refiner=nets["refiner"], device="cuda")


def test_fp16_on_the_cpu_is_refused(nets):
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", precision="fp16")


def test_bf16_autocast_runs_on_the_cpu(nets):
    model = Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", precision="bf16")
    assert model.refine(_image(32, 32)).labels.shape == (32, 32)


def test_refiner_side_runs_the_refiner_on_a_scaled_down_copy(nets):
    import torch.nn.functional as F

    from refine_cli.config import PipelineConfig
    from refine_cli.transforms import resize_images

    full = Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", refiner_side=None)
    small = Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", refiner_side=32)
    assert Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu").engine.refiner_side == (
        PipelineConfig().cpu_refiner_side)
    for refiner in (full, small):  # a refiner that corrects something (the residual one starts as the identity)
        torch.nn.init.normal_(refiner.engine.refiner.module.decode_out.weight, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
        coarse = full.engine.base_probs(x)
        coarse[:, 1] = 0  # one class no pixel votes for: it must stay suppressed
        coarse /= coarse.sum(1, keepdim=True)
        got = small.engine.refine_logits(x, coarse)
        at_32 = full.engine.refine_logits(resize_images(x, (24, 32)), resize_images(coarse, (24, 32)))
    assert got.shape == coarse.shape
    absent = ~F.one_hot(coarse.argmax(1), coarse.shape[1]).flatten(1, 2).amax(1).bool()[0]
    assert absent[1] and torch.isinf(got[0, absent]).all() and torch.isfinite(got[0, ~absent]).all()
    # a residual refiner: its correction at 32 px, upsampled, on top of the full-size coarse map
    from refine_cli.models.spn import RESIDUAL_EPS

    correction = at_32.clamp_min(-1e4) - resize_images(coarse, (24, 32)).clamp_min(RESIDUAL_EPS).log()
    expected = coarse.clamp_min(RESIDUAL_EPS).log() + F.interpolate(correction, size=(48, 64), mode="bilinear",
                                                                    align_corners=False)
    torch.testing.assert_close(got[0, ~absent], expected[0, ~absent])
    assert correction[0, ~absent].abs().amax() > 1e-4  # the random refiner does correct something
    with torch.inference_mode():  # an image within the side runs as it is
        x, coarse = x[..., :24, :30], coarse[..., :24, :30]
        torch.testing.assert_close(small.engine.refine_logits(x, coarse), full.engine.refine_logits(x, coarse))
    labels = small.refine(_image(48, 64)).labels
    assert labels.shape == (48, 64)
    with pytest.raises(UsageError, match="at least 16"):
        Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu", refiner_side=8)


def test_a_refiner_that_corrects_nothing_keeps_the_full_size_mask(tmp_path: Path):
    """A residual refiner run on a scaled-down copy adds its upsampled correction to the full-size coarse map: an
    untrained one (last layer zero, the identity) returns a fine mask exactly, detail below its working size kept."""
    from refine_cli import models
    from refine_cli.weights import CheckpointMeta, checkpoint_from_model, save_checkpoint

    model = models.build("spn_universal_compact", hidden=4, mid_channels=4)
    meta = CheckpointMeta(preprocess=models.spec("spn_universal_compact").preprocess)
    path = save_checkpoint(tmp_path / "identity.pt", checkpoint_from_model(
        model, arch="spn_universal_compact", arch_args=models.arch_args("spn_universal_compact", hidden=4,
                                                                          mid_channels=4), meta=meta))
    mask = np.zeros((96, 128), np.uint8)
    mask[::3, ::5] = 1  # single-pixel dots: nothing of them survives 128 -> 32 px
    mask[40:60, 30:90] = 2
    small = Refiner(base=None, refiner=path, device="cpu", refiner_side=32)
    np.testing.assert_array_equal(small.refine(_image(96, 128), mask=mask).labels, mask)
def test_given_probabilities_run_like_the_masks_they_encode(nets):
    from refine_cli.pipeline.engine import masks_to_probs, stack_images

    masks_only = Refiner(base=None, refiner=nets["refiner"], device="cpu")
    mask = np.zeros((1, 40, 44), np.int64)
    mask[0, 8:30, 5:25] = 1
    mask[0, 20:36, 18:40] = 2
    images = stack_images([_image(40, 44, 3)], pin=False)
    by_mask = masks_only.engine.run(images, torch.from_numpy(mask), num_classes=3)
    by_probs = masks_only.engine.run(images, coarse_probs=masks_to_probs(torch.from_numpy(mask), 3))
    np.testing.assert_array_equal(by_probs.labels[0], by_mask.labels[0])
    np.testing.assert_array_equal(by_probs.coarse[0], mask[0])
    with pytest.raises(UsageError, match="not both"):
        masks_only.engine.run(images, torch.from_numpy(mask), coarse_probs=masks_to_probs(torch.from_numpy(mask), 3))
    with pytest.raises(UsageError, match=r"\(N, K, H, W\)"):
        masks_only.engine.run(images, coarse_probs=torch.full((1, 3, 40, 43), 1 / 3))


def test_masks_holding_few_of_many_labels_are_refined_over_those_alone(nets, monkeypatch):
    """A 16-bit mask of instance ids (0, 700, 60000) is refined over its three labels, not 60001 class maps, and gives
    what the same mask numbered 0, 1, 2 gives; probabilities asked for still cover every class, 0 where absent."""
    from refine_cli.pipeline import engine as engine_module
    from refine_cli.pipeline.engine import stack_images

    masks_only = Refiner(base=None, refiner=nets["refiner"], device="cpu")
    small = np.zeros((1, 40, 44), np.int64)
    small[0, 8:30, 5:25] = 1
    small[0, 20:36, 18:40] = 2
    ids = np.array([0, 700, 60000])[small]
    images = stack_images([_image(40, 44, 3)], pin=False)
    planes, real = [], engine_module.masks_to_probs
    monkeypatch.setattr(engine_module, "masks_to_probs", lambda m, k, **kw: planes.append(k) or real(m, k, **kw))
    by_ids = masks_only.engine.run(images, torch.from_numpy(ids))
    by_small = masks_only.engine.run(images, torch.from_numpy(small))
    assert planes == [3, 3]
    np.testing.assert_array_equal(by_ids.labels[0], np.array([0, 700, 60000])[by_small.labels[0]])
    np.testing.assert_array_equal(by_ids.coarse[0], ids[0])

    two_of_four = masks_only.engine.run(images, torch.from_numpy(2 * (small > 0)), num_classes=4, want_probs=True)
    two = masks_only.engine.run(images, torch.from_numpy((small > 0).astype(np.int64)), want_probs=True)
    np.testing.assert_array_equal(two_of_four.labels[0], 2 * two.labels[0])
    probs = two_of_four.probs[0]
    assert probs.shape[0] == 4 and not probs[1].any() and not probs[3].any()
    np.testing.assert_array_equal(probs[[0, 2]], two.probs[0])


def test_present_labels_renumbers_the_known_ones_and_keeps_unknown_apart():
    from refine_cli.pipeline.engine import present_labels

    masks = torch.tensor([[[0, 255], [7, 7]]])
    present, renumbered, unknown = present_labels(masks, 8, 255)
    assert present.tolist() == [0, 7] and renumbered.tolist() == [[[0, 2], [1, 1]]] and unknown == 2
    assert present_labels(torch.tensor([[[0, 1], [2, 1]]]), 3, 255)[0] is None  # every class present: as given
    present, renumbered, unknown = present_labels(torch.tensor([[[300, 5]]]), 301, None)
    assert present.tolist() == [5, 300] and renumbered.tolist() == [[[1, 0]]] and unknown is None
    # Two maps at least, as for masks given whole: one label among many keeps a second, absent one beside it.
    assert present_labels(torch.tensor([[[60000, 60000]]]), 60001, None)[0].tolist() == [0, 60000]
    assert present_labels(torch.tensor([[[255, 255]]]), 2, 255)[0] is None  # nothing known: the two classes as given
