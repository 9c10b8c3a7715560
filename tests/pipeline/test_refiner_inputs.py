"""What `Refiner.refine` takes and how: one rule for images and one for masks whether they come as files, PIL
images, arrays or tensors; unknown (255) mask pixels; tiny images; clear errors for what cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refine_cli import Refiner, io
from refine_cli.errors import InputError
from refine_cli.pipeline.engine import class_map_at, fill_unknown, masks_to_probs


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def refiner(nets) -> Refiner:
    return Refiner(base=nets["base"], refiner=nets["refiner"], device="cpu")


@pytest.fixture(scope="module")
def masks_only(nets) -> Refiner:
    return Refiner(base=None, refiner=nets["refiner"], device="cpu")


@pytest.fixture(scope="module")
def bundled() -> Refiner:
    """The bundled refiner: it, unlike a random one, follows the image."""
    return Refiner(base=None, refiner="default", device="cpu")


def _two_regions(edge: int, seed: int = 0) -> np.ndarray:
    """96 x 112: dark grey left of column `edge`, red from it on, with a little noise."""
    img = np.full((96, 112, 3), 60.0)
    img[:, edge:] = (200, 50, 50)
    img += np.random.default_rng(seed).normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ unknown (255) pixels


@pytest.mark.parametrize("label", [1, 3, 15])
def test_unknown_255_block_in_background_stays_background(bundled: Refiner, tmp_path: Path, label: int):
    image = _two_regions(60)
    mask = np.zeros((96, 112), np.uint8)
    mask[:, 60:] = label
    mask[30:50, 10:30] = 255  # unknown, in the middle of the background, where the image is background too
    Image.fromarray(mask).save(tmp_path / "m.png")
    for given in (mask, tmp_path / "m.png", Image.fromarray(mask), torch.from_numpy(mask)):
        result = bundled.refine(image, given)
        assert (result.labels[30:50, 10:30] == 0).all(), type(given)
        assert (result.coarse[30:50, 10:30] == 255).all()  # the coarse map is the mask as given


@pytest.mark.parametrize("edge", [48, 56, 64])
def test_unknown_255_band_is_split_where_the_image_changes(bundled: Refiner, edge: int):
    image = _two_regions(edge)
    mask = np.zeros((96, 112), np.uint8)
    mask[:, 70:] = 1
    mask[:, 44:70] = 255  # VOC-style void band between background and object, the image edge somewhere in it
    labels = bundled.refine(image, mask).labels
    boundary = np.argmax((labels[10:86] == 1).mean(0) > 0.5)
    assert abs(int(boundary) - edge) <= 2


def test_fill_unknown_keeps_known_pixels_and_sums_to_one():
    masks = torch.zeros(1, 40, 50, dtype=torch.long)
    masks[:, :, 30:] = 2
    masks[:, 10:20, 5:15] = 255
    masks[:, :, 20:30] = 255
    image = torch.zeros(1, 3, 40, 50)
    image[..., 25:] = 1.0  # the edge in the middle of the unknown band
    for picture in (image, None):
        probs = masks_to_probs(masks, 3, image=picture)
        known = masks != 255
        onehot = torch.nn.functional.one_hot(masks.masked_fill(~known, 0), 3).permute(0, 3, 1, 2).float()
        torch.testing.assert_close(probs[known[:, None].expand_as(probs)], onehot[known[:, None].expand_as(onehot)])
        torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 50))
        assert (probs[0, 0, 10:20, 5:15] > 0.99).all()  # surrounded by class 0
    with_edge = masks_to_probs(masks, 3, image=image).argmax(1)[0]
    assert (with_edge[:, 20:25] == 0).all() and (with_edge[:, 25:30] == 2).all()
    # Nothing known: uniform.
    everything = fill_unknown(torch.zeros(1, 4, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.bool))
    torch.testing.assert_close(everything, torch.full((1, 4, 8, 8), 0.25))



def test_masks_to_probs_gives_one_hot_class_planes():
    masks = torch.tensor([[[0, 2, 1], [2, 2, 0]]])
    probs = masks_to_probs(masks, 4, unknown=None)
    # Contiguous (N, K, H, W): the refiner's per-class passes read each class map as one plane.
    assert probs.shape == (1, 4, 2, 3) and probs.is_contiguous() and probs.dtype == torch.float32
    for k in range(4):
        torch.testing.assert_close(probs[0, k], (masks[0] == k).float())

def test_binary_rule_is_one_for_files_and_arrays(masks_only: Refiner, tmp_path: Path):
    binary = np.zeros((32, 32), np.uint8)
    binary[8:24, 8:20] = 255
    Image.fromarray(binary).save(tmp_path / "b.png")
    for given in (binary, tmp_path / "b.png", Image.fromarray(binary), torch.from_numpy(binary), binary == 255):
        np.testing.assert_array_equal(masks_only.refine(_image(32, 32), given).coarse, binary // 255)
    # With a class count other than 2, the same 0/255 mask is background plus unknown, from a file and an array.
    for given in (binary, tmp_path / "b.png"):
        result = masks_only.refine(_image(32, 32), given, num_classes=3)
        np.testing.assert_array_equal(result.coarse, binary)
        assert set(np.unique(result.labels)) == {0}


# ------------------------------------------------------------------------------------------ one image rule


def test_rgba_refines_the_same_from_file_array_and_pil(refiner: Refiner, tmp_path: Path):
    rgba = np.dstack([_image(40, 48, 1), np.zeros((40, 48), np.uint8)])
    rgba[:, :24, 3] = 255  # left half opaque; right half transparent over arbitrary colours
    rgba[:, 24:32, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "t.png")
    from_file = refiner.refine(tmp_path / "t.png")
    assert (from_file.image[:, 32:] == 255).all()  # composited on white
    for given in (rgba, Image.fromarray(rgba), torch.from_numpy(rgba)):
        result = refiner.refine(given)
        np.testing.assert_array_equal(result.image, from_file.image)
        np.testing.assert_array_equal(result.labels, from_file.labels)


def test_arrays_of_other_types_follow_the_file_rule(refiner: Refiner, tmp_path: Path):
    grey16 = np.random.default_rng(2).integers(0, 65536, (30, 40)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(refiner.refine(grey16).image, refiner.refine(tmp_path / "g16.png").image)
    rgb = _image(30, 40, 3)
    as_float = torch.from_numpy(rgb.astype(np.float32) / 255)  # a float tensor in 0..1, (H, W, 3)
    np.testing.assert_array_equal(refiner.refine(as_float).image, rgb)


# ------------------------------------------------------------------------------------------ tiny images


@pytest.mark.parametrize("size", [(1, 1), (1, 100), (100, 1), (2, 3)])
def test_tiny_images_are_padded_to_the_networks_minimum(refiner: Refiner, masks_only: Refiner, tmp_path: Path,
                                                        size: tuple[int, int]):
    image = _image(*size)
    assert refiner.refine(image).labels.shape == size
    mask = np.zeros(size, np.uint8)
    mask.flat[-1] = 2
    result = masks_only.refine(image, mask)
    assert result.labels.shape == size and set(np.unique(result.labels)) <= {0, 2}
    Image.fromarray(image).save(tmp_path / "tiny.png")
    assert refiner.refine(tmp_path / "tiny.png").labels.shape == size


# ------------------------------------------------------------------------------------------ clear errors


def test_python_api_errors_are_clear_and_in_numpy_order(refiner: Refiner, masks_only: Refiner):
    cases = [
        (lambda: refiner.refine(np.zeros((0, 0, 3), np.uint8)), "empty"),
        (lambda: refiner.refine(torch.zeros(3, 20, 30, dtype=torch.uint8)), r"channels first.*permute\(1, 2, 0\)"),
        (lambda: refiner.refine(np.full((8, 8, 3), 2.0)), "outside 0..1"),
        (lambda: refiner.refine(np.zeros((8, 8, 3), np.int64)), "uint8"),
        (lambda: masks_only.refine(_image(8, 8), np.full((8, 8), -1)), "negative"),
        (lambda: masks_only.refine(_image(8, 8), np.full((8, 8), 0.5)), "fractional"),
        (lambda: masks_only.refine(_image(8, 8), np.zeros((8, 8, 3))), r"\(H, W\)"),
        (lambda: masks_only.refine(_image(8, 8), np.zeros((0, 8))), "empty"),
        (lambda: masks_only.refine(_image(20, 30), np.zeros((30, 20))),
         r"mask is \(30, 20\) but the image is \(20, 30\) \(height, width\)"),
        (lambda: masks_only.refine(_image(8, 8), np.full((8, 8), 70000)), "65535"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message):
            call()
    # Where they obviously fit, tensors and whole-number float masks work as arrays do.
    mask = np.zeros((20, 30), np.int64)
    mask[5:15, 10:20] = 2
    expected = masks_only.refine(_image(20, 30), mask).labels
    for given in (torch.from_numpy(mask), mask.astype(np.float32), torch.from_numpy(mask).float()):
        np.testing.assert_array_equal(masks_only.refine(_image(20, 30), given).labels, expected)
    np.testing.assert_array_equal(refiner.refine(torch.from_numpy(_image(20, 30))).labels,
                                  refiner.refine(_image(20, 30)).labels)


def test_a_stored_size_mask_of_an_exif_turned_file_is_explained(masks_only: Refiner, tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(_image(20, 30)).save(tmp_path / "turned.jpg", exif=exif)  # displayed 20 wide x 30 high
    shown = np.zeros((30, 20), np.int64)
    shown[5:25, 4:12] = 1
    assert masks_only.refine(tmp_path / "turned.jpg", shown).labels.shape == (30, 20)
    with pytest.raises(InputError, match=r"mask is \(20, 30\) but the image is \(30, 20\) .*EXIF orientation"):
        masks_only.refine(tmp_path / "turned.jpg", np.ascontiguousarray(shown.T))
    with pytest.raises(InputError, match=r"have its image's size$"):  # an array has no orientation to blame
        masks_only.refine(_image(30, 20), np.ascontiguousarray(shown.T))


def test_mask_rule_rejects_what_no_file_could_hold():
    with pytest.raises(InputError, match="labels above 65535"):
        io.mask_labels(np.full((4, 4), 1 << 20))
    assert io.mask_labels(np.array([[0, 300]])).dtype == np.uint16


# ------------------------------------------------------------------------------------------ full-size labels


@pytest.mark.parametrize("k,small,size", [(5, (20, 30), (77, 131)), (3, (64, 48), (640, 480)), (8, (7, 9), (7, 9)),
                                          (2, (1, 5), (3, 40)), (300, (6, 8), (50, 70))])
def test_full_size_labels_are_the_argmax_of_the_resized_probabilities(k: int, small: tuple[int, int],
                                                                     size: tuple[int, int]):
    g = torch.Generator().manual_seed(k)
    coarse = torch.randn(1, k, max(1, small[0] // 4), max(1, small[1] // 4), generator=g) * 3
    probs = torch.nn.functional.interpolate(coarse, size=small, mode="bilinear")[0].softmax(0)
    got = class_map_at(probs, size, band_pixels=1000)  # many bands
    resized = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    best = resized.topk(2, 0).values
    clear = (best[0] - best[1] > 1e-5).numpy()  # pixels whose best class does not hang on rounding
    assert got.dtype == (np.uint8 if k <= 256 else np.uint16) and got.shape == size
    np.testing.assert_array_equal(got[clear], resized.argmax(0).numpy()[clear])
