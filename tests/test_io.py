"""Listing inputs, reading images in every mode, masks in every encoding, atomic writers."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from refine_cli import io
from refine_cli.errors import InputError, UsageError
from refine_cli.labels import voc_palette

RNG = np.random.default_rng(0)


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------- listing


def _touch_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(4, 4)).save(path)
    return path


def test_a_folder_gives_every_format_read_image_reads(tmp_path: Path) -> None:
    """A GIF (first frame of an animation) or WebP in a folder is an image to refine, as it is when named directly;
    only files of other suffixes are left out as not images."""
    frames = [Image.fromarray(_rgb(6, 5)), Image.fromarray(_rgb(6, 5)[::-1])]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "photo.webp")
    (tmp_path / "notes.txt").write_text("x")
    listing = io.list_inputs([tmp_path])
    assert [it.relative for it in listing.items] == [PurePosixPath("anim.gif"), PurePosixPath("photo.webp")]
    assert listing.left_out == {"not an image": 1}
    assert io.read_image(tmp_path / "anim.gif").shape == (6, 5, 3)


def test_list_inputs_files_folders_globs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    a = _touch_png(root / "a.png")
    b = _touch_png(root / "sub" / "b.PNG")
    _touch_png(root / ".hidden" / "c.png")
    _touch_png(root / ".d.png")
    (root / "notes.txt").write_text("x")
    single = _touch_png(tmp_path / "single.png")

    listing = io.list_inputs([root])
    assert [it.relative for it in listing.items] == [PurePosixPath("a.png"), PurePosixPath("sub/b.PNG")]
    assert [it.path for it in listing.items] == [a, b]
    assert listing.left_out == {"hidden": 2, "not an image": 1} and listing.unreadable == ()

    assert [it.relative for it in io.list_inputs([root], recursive=False).items] == [PurePosixPath("a.png")]

    # A glob mirrors paths from its fixed root; a file named directly is just its name; duplicates go.
    # (glob matching is case-sensitive like the shell's: '*.png' does not take 'b.PNG')
    items = io.list_inputs([str(root / "**" / "*.png"), single, str(root / "a.png")]).items
    assert [(str(it.relative), it.path) for it in items] == [("a.png", a), ("single.png", single)]
    globbed = io.list_inputs([str(tmp_path / "*" / "sub" / "*.PNG")]).items
    assert [it.relative for it in globbed] == [PurePosixPath("data/sub/b.PNG")]
    # A folder matched by a glob is walked like a named one; a hidden part named in the pattern is taken.
    assert [str(it.relative) for it in io.list_inputs([str(tmp_path / "d*")]).items] == ["data/a.png", "data/sub/b.PNG"]
    assert [str(it.relative) for it in io.list_inputs([str(root / ".hid*" / "*.png")]).items] == [".hidden/c.png"]


def test_list_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing.png' does not exist"):
        io.list_inputs([tmp_path / "missing.png"])
    if hasattr(os, "mkfifo"):  # named as an input, a pipe is refused by what it is: reading it could wait forever
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(UsageError, match=r"pipe.png' is not a regular file \(a pipe, socket or device\)"):
            io.list_inputs([tmp_path / "pipe.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no images"):
        io.list_inputs([tmp_path / "empty"])
    with pytest.raises(UsageError, match="no images match"):
        io.list_inputs([str(tmp_path / "*.jpg")])
    # Two files that would write the same output name.
    _touch_png(tmp_path / "x" / "same.png")
    _touch_png(tmp_path / "y" / "same.png")
    with pytest.raises(UsageError, match="same output"):
        io.list_inputs([tmp_path / "x" / "same.png", tmp_path / "y" / "same.png"])


def test_out_inside_input_is_never_read(tmp_path: Path) -> None:
    root = tmp_path / "in"
    a = _touch_png(root / "a.png")
    out = root / "results"
    for kind in ("masks", "overlays", "probs", "coarse"):
        _touch_png(out / kind / "a.png")  # what an earlier run wrote
    exclude = {out / kind: "output folder" for kind in ("masks", "overlays", "probs", "coarse")}
    for inputs in ([root], [str(root / "**" / "*.png")], [str(root / "*")]):
        listing = io.list_inputs(inputs, exclude=exclude)
        assert [it.path for it in listing.items] == [a], inputs
        assert listing.left_out == {"output folder": 4}, inputs
    # Named directly, or as the folder walked: still left out, and an input of nothing else is a usage error.
    listing = io.list_inputs([a, out / "masks" / "a.png"], exclude=exclude)
    assert [it.path for it in listing.items] == [a] and listing.left_out == {"output folder": 1}
    with pytest.raises(UsageError, match="output folder: 1"):
        io.list_inputs([out / "masks"], exclude=exclude)


def _refuse_to_scan(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """os.scandir fails on `folder` as it does for a user without read permission (root reads any folder, so a
    chmod alone would not show it here)."""
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(os.fspath(path)).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(io.os, "scandir", scandir)


def test_unreadable_folder_is_reported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "in"
    a = _touch_png(root / "a.png")
    _touch_png(root / "locked" / "b.png")
    _refuse_to_scan(monkeypatch, root / "locked")
    for inputs in ([root], [str(root / "**" / "*.png")], [str(tmp_path / "i*")]):
        listing = io.list_inputs(inputs)
        assert [it.path for it in listing.items] == [a], inputs
        assert listing.unreadable == ((root / "locked", "permission denied"),), inputs
        assert len(listing) == 2  # one outcome each: a refined, locked failed
    # A folder holding nothing readable is a failure to report, not "no images".
    only = io.list_inputs([root / "locked"])
    assert only.items == () and only.unreadable == ((root / "locked", "permission denied"),)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder; the monkeypatched test above covers it")
def test_unreadable_folder_is_reported_by_name_chmod(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _touch_png(root / "a.png")
    _touch_png(root / "locked" / "b.png")
    (root / "locked").chmod(0)
    try:
        assert io.list_inputs([root]).unreadable == ((root / "locked", "permission denied"),)
    finally:
        (root / "locked").chmod(0o755)


def test_symlinked_folders_and_hidden_files_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "in"
    a = _touch_png(root / "a.png")
    _touch_png(root / ".thumb.png")
    _touch_png(root / ".cache" / "c.png")
    elsewhere = _touch_png(tmp_path / "elsewhere" / "e.png").parent
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "up").symlink_to(root, target_is_directory=True)  # a loop, never entered
    (root / "notes.txt").write_text("x")
    listing = io.list_inputs([root])
    assert [it.path for it in listing.items] == [a]
    assert listing.left_out == {"hidden": 2, "not an image": 1, "symlinked folder": 2}
    # Named directly, a linked folder is walked.
    assert [str(it.relative) for it in io.list_inputs([root / "linked"]).items] == ["e.png"]


def test_safe_output_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert io.safe_output_path(out, PurePosixPath("sub/img.jpg"), ".png") == out / "sub" / "img.png"
    assert io.safe_output_path(out, PurePosixPath("img.jpg"), "_overlay.jpg") == out / "img_overlay.jpg"
    for bad in ("../img.jpg", "a/../../img.jpg", "/etc/passwd"):
        with pytest.raises(UsageError):
            io.safe_output_path(out, PurePosixPath(bad), ".png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, out / "link")
    with pytest.raises(UsageError, match="outside"):
        io.safe_output_path(out, PurePosixPath("link/img.jpg"), ".png")


# ----------------------------------------------------------------------------------------- images


def test_read_rgb_png_and_jpeg(tmp_path: Path) -> None:
    img = _rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = io.read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)

    smooth = np.zeros((24, 32, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 2] = np.linspace(0, 255, 32, dtype=np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    out = io.read_image(tmp_path / "a.jpg")
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 3


def test_read_grey_rgba_cmyk(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = io.read_image(tmp_path / "g.png")
    assert out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # pure red ...
    rgba[:2, :, 3] = 255  # ... opaque in the top half, fully transparent below
    Image.fromarray(rgba).save(tmp_path / "t.png")
    out = io.read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])  # composited on white, not the hidden red
    out = io.read_image(tmp_path / "t.png", background=(0, 0, 0))
    np.testing.assert_array_equal(out[3, 3], [0, 0, 0])

    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    Image.fromarray(flat).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as stored:
        assert stored.mode == "CMYK"
    out = io.read_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - flat).max() <= 6


def test_read_16bit_scales(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as stored:
        assert stored.mode.startswith("I")
    out = io.read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])  # scaled, not clipped to 255


def test_read_exif_rotation(tmp_path: Path) -> None:
    # Stored 8 wide x 4 high, red mark at the stored top-left corner; orientation 6 means "rotate 90
    # degrees clockwise to display", so the mark must land at the displayed top-right corner.
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[:2, :2] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = io.read_image(tmp_path / "r.jpg")
    assert out.shape == (8, 4, 3)
    assert out[0, 3, 0] > 200 and out[0, 3, 1] < 60
    assert out[0, 0, 0] < 60 and out[7, 3, 0] < 60


@pytest.mark.parametrize("kind", ["empty", "truncated_jpeg", "truncated_png", "text", "missing"])
def test_read_bad_files_name_the_file(tmp_path: Path, kind: str) -> None:
    if kind == "empty":
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        path = tmp_path / "cut.jpg"
        Image.fromarray(_rgb(64, 64)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated_png":
        path = tmp_path / "cut.png"
        Image.fromarray(_rgb(64, 64)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("this is not an image\n")
    else:
        path = tmp_path / "nowhere.png"
    with pytest.raises(InputError) as info:
        io.read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if kind.startswith("truncated"):
        assert "truncated" in message


def test_read_pixel_limit(tmp_path: Path) -> None:
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="decompression bombs"):
        io.read_image(tmp_path / "big.png", max_pixels=399)
    assert io.read_image(tmp_path / "big.png", max_pixels=400).shape == (20, 20, 3)


# ----------------------------------------------------------------------------------------- masks


def test_read_palette_mask_keeps_indices(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 15], [255, 20, 0]], np.uint8)
    img = Image.fromarray(labels)
    img.putpalette([v for c in voc_palette(256) for v in c])
    img.save(tmp_path / "p.png")
    out = io.read_mask(tmp_path / "p.png", num_classes=21)
    assert out.dtype == np.uint8 and out.flags.writeable  # the smallest type that holds the labels
    np.testing.assert_array_equal(out, labels)
    with pytest.raises(InputError, match="20"):
        io.read_mask(tmp_path / "p.png", num_classes=5)


def test_read_grey_index_and_binary_masks(tmp_path: Path) -> None:
    labels = np.array([[0, 3, 7], [2, 2, 255]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "g.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "g.png"), labels)

    binary = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    Image.fromarray(binary).save(tmp_path / "b.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "b.png"), binary // 255)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "b.png", num_classes=2), binary // 255)
    # With 21 classes, {0, 255} is background plus ignore.
    np.testing.assert_array_equal(io.read_mask(tmp_path / "b.png", num_classes=21), binary)

    # A binary mask saved as (grey) JPEG is thresholded, since compression moves the values.
    big = np.zeros((32, 32), np.uint8)
    big[8:24, 8:24] = 255
    Image.fromarray(big).save(tmp_path / "b.jpg", quality=75)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "b.jpg"), big // 255)
    with pytest.raises(InputError, match="PNG"):
        io.read_mask(tmp_path / "b.jpg", num_classes=21)


def test_read_voc_colour_mask(tmp_path: Path) -> None:
    pal = voc_palette(256)
    labels = np.array([[0, 1, 2], [15, 255, 20]], np.int64)
    rgb = np.array([[pal[v] for v in row] for row in labels], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "c.png", num_classes=21), labels)

    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"bad\.png.*\(1, 2, 3\)"):
        io.read_mask(tmp_path / "bad.png")


def test_write_mask_round_trip(tmp_path: Path) -> None:
    labels = RNG.integers(0, 4, (9, 11))
    labels[0, 0] = 255
    palette = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200)]
    path = tmp_path / "sub" / "m.png"
    io.write_mask(path, labels, palette)
    with Image.open(path) as img:
        assert img.mode == "P"
        stored = img.getpalette()
    assert stored[:12] == [v for c in palette for v in c]
    assert len(stored) == 768
    assert tuple(stored[765:768]) == (224, 224, 192)  # padding keeps VOC's ignore colour at 255
    np.testing.assert_array_equal(io.read_mask(path, num_classes=4), labels)
    assert io.mask_palette_from_file(path)[:4] == palette
    assert io.mask_palette_from_file(tmp_path / "sub" / "m.png") is not None
    with pytest.raises(UsageError, match="0..65535"):
        io.write_mask(tmp_path / "x.png", np.full((2, 2), 70000), palette)
    assert not (tmp_path / "x.png").exists()


def test_masks_with_300_classes_are_written_as_16bit_png(tmp_path: Path) -> None:
    labels = np.arange(300 * 4).reshape(30, 40) % 300
    io.write_mask(tmp_path / "deep.png", labels, [(0, 0, 0)])
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I;16")
    back = io.read_mask(tmp_path / "deep.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)  # 255 is class 255 here, not unknown
    np.testing.assert_array_equal(io.read_mask(tmp_path / "deep.png", num_classes=300), labels)
    colours = io.colorize(labels, [(0, 0, 0)])
    assert colours.shape == (30, 40, 3) and len(np.unique(colours.reshape(-1, 3), axis=0)) == 300


def test_overlay_leaves_unknown_pixels_as_the_image_and_takes_16_bit_labels(tmp_path: Path) -> None:
    image = np.zeros((24, 24, 3), np.uint8)
    image[..., 1] = 120
    labels = np.full((24, 24), 255, np.int64)
    labels[:, 16:] = 300  # a class beyond the palette and beyond 8 bits
    io.write_overlay(tmp_path / "o.jpg", image, labels, [(0, 0, 0)], alpha=0.5, boundaries=False, quality=100)
    with Image.open(tmp_path / "o.jpg") as stored:
        out = np.asarray(stored.convert("RGB")).astype(int)
    np.testing.assert_allclose(out[:, :12], image[:, :12], atol=3)  # 255: unknown, left as the image
    assert abs(out[:, 19:, 1].mean() - 120) > 20  # class 300 blended with its (VOC colour map) colour


def test_write_overlay_and_probs(tmp_path: Path) -> None:
    image = np.full((16, 16, 3), 100, np.uint8)
    labels = np.zeros((16, 16), np.int64)
    labels[:, 8:] = 1
    palette = [(0, 0, 0), (255, 0, 0)]
    io.write_overlay(tmp_path / "o.jpg", image, labels, palette, alpha=0.5, quality=100)
    with Image.open(tmp_path / "o.jpg") as stored:
        out = np.asarray(stored.convert("RGB")).astype(int)
    assert out.shape == (16, 16, 3)
    assert abs(out[4, 2, 0] - 50) <= 4  # background blended with black
    assert abs(out[4, 13, 0] - 178) <= 4 and abs(out[4, 13, 1] - 50) <= 4  # red blend
    assert out[4, 7].min() >= 230  # white contour on the label change
    with pytest.raises(UsageError):
        io.write_overlay(tmp_path / "bad.jpg", image, labels[:8], palette)

    probs = RNG.random((3, 5, 7)).astype(np.float32)
    io.write_probs(tmp_path / "p.npz", probs)
    back = io.read_probs(tmp_path / "p.npz")
    assert back.dtype == np.float32 and back.shape == (3, 5, 7)
    np.testing.assert_allclose(back, probs, atol=1e-3)
    with np.load(tmp_path / "p.npz") as data:
        assert data["probs"].dtype == np.float16
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.npz"):
        io.read_probs(tmp_path / "junk.npz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.bin"

    def failing(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        io.atomic_write(target, failing)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []

    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"new but unfinished")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]

    io.atomic_write(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("stem", ["x" * 251, "é" * 125, "plain"])
def test_atomic_write_of_a_name_near_the_length_limit(tmp_path: Path, stem: str) -> None:
    """A file whose own name fits (255 bytes) is written, though its temporary name with the token and '.part'
    would not fit unshortened; the temporary name is still recognised as one (stale ones are removed)."""
    target = tmp_path / f"{stem}.png"
    assert len(os.fsencode(target.name)) <= io.NAME_MAX
    with io.atomic_path(target) as tmp:
        assert len(os.fsencode(tmp.name)) <= io.NAME_MAX and io.is_temp_name(tmp.name)
        assert tmp.suffix == ".png" and tmp.name.startswith("." + stem[:8])
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
