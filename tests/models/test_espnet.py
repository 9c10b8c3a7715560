"""ESPNet (sacmehta/ESPNet, train/Model.py): the real CamVid file loads key for key, the ESP module's hierarchical
fusion, logits at the input size for any size, the void output dropped on import without changing the other
eleven, and the imported network's accuracy on CamVid val against the figures measured when it was added."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from refine_cli.data import open_dataset
from refine_cli.evaluation import BASE, evaluate
from refine_cli.labels import CAMVID_CLASSES, CAMVID_PALETTE
from refine_cli.models import registry
from refine_cli.models.espnet import ESPBlock, ESPDown, espnet
from refine_cli.pipeline import Refiner
from refine_cli.transforms import normalize
from refine_cli.weights import build_model, import_checkpoint, save_checkpoint
from refine_cli.weights.importers import ESPNET_CAMVID

FILE = "weights/espnet_p_2_q_8_camvid.pth"
EVERY = 4  # CamVid val[::4]: 26 images from all four val sequences


def released(real_data: Path) -> dict[str, torch.Tensor]:
    return torch.load(real_data / FILE, map_location="cpu", weights_only=True)


def test_real_file_loads_key_for_key(real_data: Path) -> None:
    state = released(real_data)
    model = espnet(num_classes=12)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Every parameter and running statistic of the network comes from the file (only BatchNorm's counters,
    # which the file predates, do not).
    ours = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert ours == set(state) and len(state) == 189


def test_esp_module_fuses_hierarchically() -> None:
    torch.manual_seed(0)
    block = ESPBlock(20, 20).eval()
    x = torch.randn(1, 20, 24, 24)
    reduced = block.c1(x)
    d = {r: getattr(block, f"d{r}")(reduced) for r in (1, 2, 4, 8, 16)}
    expected = torch.cat([d[1], d[2], d[2] + d[4], d[2] + d[4] + d[8], d[2] + d[4] + d[8] + d[16]], 1)
    torch.testing.assert_close(block.pyramid(x), expected)
    torch.testing.assert_close(block(x), block.bn(x + expected))
    # n = 20 // 5 = 4 maps per dilated branch; d1 takes the remainder so the widths sum to cout.
    assert [getattr(block, f"d{r}").conv.out_channels for r in (1, 2, 4, 8, 16)] == [4, 4, 4, 4, 4]
    assert ESPBlock(64, 64).d1.conv.out_channels == 16 and ESPBlock(64, 64).d2.conv.out_channels == 12
    assert ESPDown(19, 64).c1.conv.stride == (2, 2) and ESPDown(19, 64).c1.conv.kernel_size == (3, 3)


@pytest.mark.parametrize("size", [(48, 64), (37, 53), (1, 9)])
def test_logits_at_the_input_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = espnet(num_classes=5, p=1, q=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size) and torch.isfinite(out).all()


def test_odd_sizes_crop_the_upsampled_maps_only() -> None:
    """An odd-sized input gives the top-left part of what the padded, multiple-of-8 input gives, away from the
    padding: the crop aligns the up-sampled maps with the skips, it does not shift them."""
    torch.manual_seed(0)
    model = espnet(num_classes=3, p=1, q=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        part = model(x[..., :61, :59])
    assert part.shape == (1, 3, 61, 59)
    # Receptive fields reach the padding near the cut; far from it both must agree.
    torch.testing.assert_close(part[..., :8, :8], full[..., :8, :8], rtol=1e-4, atol=1e-4)


def test_registry_builds_it_with_the_released_depths() -> None:
    model = registry.build("espnet", num_classes=11, decoder_channels=12)
    assert len(model.encoder.level2) == 2 and len(model.encoder.level3) == 8
    assert model.classifier.out_channels == 11 and model.encoder.classifier.conv.out_channels == 12


@pytest.fixture(scope="module")
def imported(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = import_checkpoint(real_data / FILE, source="espnet", save=False)
    return save_checkpoint(tmp_path_factory.mktemp("espnet") / "espnet_camvid.pt", ckpt)


def test_import_drops_void_and_keeps_the_other_eleven_outputs(real_data: Path) -> None:
    ckpt = import_checkpoint(real_data / FILE, source="espnet", save=False)
    assert ckpt.meta.classes == CAMVID_CLASSES and ckpt.meta.palette == CAMVID_PALETTE
    assert ckpt.meta.preprocess == ESPNET_CAMVID
    assert ckpt.arch_args == {"p": 2, "q": 8, "decoder_channels": 12, "num_classes": 11}
    assert ckpt.meta.provenance["dropped_output_channels"] == [11]
    converted = build_model(ckpt)
    original = espnet(num_classes=12)
    original.load_state_dict(released(real_data))
    original.eval()
    sample = open_dataset(real_data / "camvid", format="camvid", split="val")[0]
    x = normalize(sample.image[None].float() / 255, ckpt.meta.preprocess)
    with torch.no_grad():
        ours, theirs = converted(x), original(x)
    assert ours.shape == (1, 11, 360, 480)
    # The last layer's kept output channels see the same inputs and weights: equal up to summation order.
    torch.testing.assert_close(ours, theirs[:, :11], rtol=1e-5, atol=1e-4)


# Measured once on CamVid val[::4] (26 images) with the imported float32 checkpoint, 1 thread:
# mIoU 69.32, pixel accuracy 93.38 (the full val split: weights/README.md); the same to the last digit with
# ATEN_CPU_CAPABILITY=default and with 2 threads. The wrong colour order or normalisation costs tens of points.
CAMVID_EVERY4 = {"miou": 0.6932, "pixel_accuracy": 0.9338}
TOLERANCE = 0.002


@pytest.mark.slow
def test_camvid_val_accuracy(real_data: Path, imported: Path) -> None:
    data = open_dataset(real_data / "camvid", format="camvid", split="val")
    model = Refiner(base=imported, refiner=None, device="cpu", batch_size=1)
    report = evaluate((data[i] for i in range(0, len(data), EVERY)), model, num_classes=11)
    row = report.row(BASE)
    assert report.images == 26
    assert row.miou == pytest.approx(CAMVID_EVERY4["miou"], abs=TOLERANCE)
    assert row.pixel_accuracy == pytest.approx(CAMVID_EVERY4["pixel_accuracy"], abs=TOLERANCE)


@pytest.mark.slow
def test_rgb_order_is_far_worse(real_data: Path, imported: Path) -> None:
    """The check above can fail: fed RGB instead of BGR, the same network labels 55.82 % of CamVid val's pixels
    right instead of 93.26 % (weights/espnet_inputs.py)."""
    data = open_dataset(real_data / "camvid", format="camvid", split="val")
    model = Refiner(base=imported, refiner=None, device="cpu", batch_size=1)
    base = model.engine.base
    rgb = replace(base.meta.preprocess, color_order="RGB", mean=base.meta.preprocess.mean[::-1],
                  std=base.meta.preprocess.std[::-1])
    model.engine.base = replace(base, meta=replace(base.meta, preprocess=rgb))
    report = evaluate((data[i] for i in range(0, len(data), 4 * EVERY)), model, num_classes=11)
    assert report.row(BASE).pixel_accuracy < 0.8


def test_espnet_forward_train_gives_the_logits() -> None:
    torch.manual_seed(0)
    model = espnet(num_classes=4, p=1, q=1).eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        out = model.forward_train(x)
    assert out.aux is None and torch.equal(out.out, model(x))


def test_few_classes_widen_the_decoder_to_five() -> None:
    model = espnet(num_classes=2, p=1, q=1).eval()
    assert model.classifier.in_channels == 5 and model.classifier.out_channels == 2
    with pytest.raises(ValueError, match="at least 5 channels"):
        espnet(num_classes=2, decoder_channels=4)
