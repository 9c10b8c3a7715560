"""`refine-cli refine` on awkward inputs: an output folder inside the input folder, folders that cannot be read,
links and hidden files, coarse masks with unknown pixels or hundreds of classes, tiny and huge images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from typer.testing import CliRunner

from refine_cli import io
from refine_cli.cli import app

runner = CliRunner()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def refine(nets: dict[str, Path], *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["refine", *args, "--base", str(nets["base"]), "--refiner", str(nets["refiner"]),
                                 "--device", "cpu", "--json", "-"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}


def test_out_inside_input_is_never_read(nets, tmp_path: Path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(4):
        Image.fromarray(_rgb(24, 32, i)).save(root / f"{i}.png")
    out = root / "results"
    runs = [refine(nets, str(root), "--out", str(out), "--save-probs", "--save-coarse") for _ in range(3)]
    assert [(code, s["processed"], s["skipped"]) for code, s in runs] == [(0, 4, 0), (0, 0, 4), (0, 0, 4)]
    assert runs[1][1]["left_out"] == {"output folder": 4}
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{kind}/{i}.{ext}" for i in range(4)
                             for kind, ext in (("masks", "png"), ("overlays", "jpg"), ("probs", "npz"),
                                               ("coarse", "png")))


def test_unreadable_folder_fails_by_name_and_skips_are_counted(nets, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    Image.fromarray(_rgb(24, 32)).save(root / "a.png")
    Image.fromarray(_rgb(24, 32)).save(root / "locked" / "b.png")
    Image.fromarray(_rgb(24, 32)).save(root / ".hidden.png")
    (tmp_path / "elsewhere").mkdir()
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    real = os.scandir

    def scandir(path: object = ".") -> object:  # what a user without read permission meets (root reads anything)
        if Path(os.fspath(path)).resolve() == (root / "locked").resolve():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(io.os, "scandir", scandir)
    code, summary = refine(nets, str(root), "--out", str(tmp_path / "out"))
    assert code == 1 and (summary["processed"], summary["failed"]) == (1, 1)
    assert summary["failures"] == [{"path": str(root / "locked"),
                                    "reason": f"cannot read folder '{root / 'locked'}': permission denied"}]
    assert summary["left_out"] == {"hidden": 1, "symlinked folder": 1}
    table = runner.invoke(app, ["refine", str(root), "--out", str(tmp_path / "out"), "--base", str(nets["base"]),
                                "--refiner", str(nets["refiner"]), "--device", "cpu"])
    assert "left out on purpose" in table.output and "hidden: 1" in table.output
    assert "permission denied" in table.output


def test_masks_with_300_classes_are_refined_and_written_as_16bit_png(nets, tmp_path: Path):
    images, masks = tmp_path / "img", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(_rgb(30, 40, 1)).save(images / "many.png")
    labels = (np.arange(30 * 40).reshape(30, 40) // 4 % 300).astype(np.uint16)  # 300 classes, 255 among them
    Image.fromarray(labels).save(masks / "many.png")
    out = tmp_path / "out"
    code, summary = refine(nets, str(images), "--masks", str(masks), "--out", str(out), "--save-coarse")
    assert code == 0 and summary["processed"] == 1, summary
    with Image.open(out / "masks" / "many.png") as written:
        assert written.mode.startswith("I;16") and written.size == (40, 30)
    refined = io.read_mask(out / "masks" / "many.png")
    assert set(np.unique(refined)) <= set(np.unique(labels))
    np.testing.assert_array_equal(io.read_mask(out / "coarse" / "many.png"), labels)
    assert Image.open(out / "overlays" / "many.jpg").size == (40, 30)


@pytest.mark.parametrize("size", [(1, 1), (1, 100), (100, 1)])
def test_tiny_images_are_refined(nets, tmp_path: Path, size: tuple[int, int]):
    Image.fromarray(_rgb(*size)).save(tmp_path / "tiny.png")
    code, summary = refine(nets, str(tmp_path / "tiny.png"), "--out", str(tmp_path / "out"))
    assert code == 0 and summary["processed"] == 1, summary
    assert Image.open(tmp_path / "out" / "masks" / "tiny.png").size == size[::-1]


def _large(path: Path, width: int, height: int, mode: str = "RGB") -> np.ndarray:
    """A picture of flat regions (compresses to little, decodes to much): the left third dark, the rest bright."""
    pixels = np.full((height, width, 3), (40, 90, 160), np.uint8)
    pixels[:, width // 3 :] = (220, 200, 40)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        image.putalpha(255)
    image.convert(mode).save(path)
    return pixels


@pytest.mark.parametrize("name,mode", [("photo.jpg", "RGB"), ("scan.png", "RGB"), ("cut.png", "RGBA"),
                                       ("paletted.png", "P"), ("deep.tif", "I;16")])
def test_large_images_decode_scaled_down_and_masks_come_back_full_size(nets, tmp_path: Path, name: str, mode: str):
    root = tmp_path / "in"
    root.mkdir()
    _large(root / name, 1000, 700, mode)
    decoded, full, _ = io.read_image_scaled(root / name, 128)
    assert decoded.shape == (90, 128, 3) and full == (700, 1000)
    if mode != "I;16":  # the colours survive the scaled decode (grey 16-bit: their grey level)
        assert np.abs(decoded[45, 10].astype(int) - (40, 90, 160)).max() <= 8
        assert np.abs(decoded[45, 120].astype(int) - (220, 200, 40)).max() <= 8
    code, summary = refine(nets, str(root), "--out", str(tmp_path / "out"), "--max-side", "128", "--save-probs")
    assert code == 0 and summary["processed"] == 1, summary
    stem = Path(name).stem
    assert Image.open(tmp_path / "out" / "masks" / f"{stem}.png").size == (1000, 700)  # the image's full size
    assert Image.open(tmp_path / "out" / "overlays" / f"{stem}.jpg").size == (128, 90)  # the working size
    assert io.read_probs(tmp_path / "out" / "probs" / f"{stem}.npz").shape[1:] == (90, 128)


def test_a_jpeg_is_never_decoded_at_full_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _large(tmp_path / "photo.jpg", 1600, 1200)
    sizes = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        result = load(self)
        sizes.append(self.size)  # what the decoder filled
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    io.read_image_scaled(tmp_path / "photo.jpg", 150)
    assert sizes and max(w for w, _ in sizes) <= 400  # DCT scaling: 1/8 at most, at least the 150 px asked for


# Runs the CLI and prints the process's peak resident memory. VmHWM, not getrusage's ru_maxrss: on Linux the latter
# also counts the parent's peak before the fork (the test process that drew the large image).
_PEAK = """
import runpy, sys
sys.argv = ["refine-cli", *sys.argv[1:]]
try:
    runpy.run_module("refine_cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_KB", peak, "EXIT", code)
"""


def _peak_kb(nets: dict[str, Path], image: Path, out: Path) -> int:
    """Peak resident memory (KB) of `refine-cli refine IMAGE --max-side 512` in a fresh process."""
    import subprocess
    import sys

    args = ["refine", str(image), "--out", str(out), "--base", str(nets["base"]), "--refiner", str(nets["refiner"]),
            "--device", "cpu", "--max-side", "512", "--json", str(out.with_suffix(".json"))]
    run = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.stdout.split("EXIT")[-1].strip() in ("0", "None"), run.stdout[-2000:] + run.stderr[-2000:]
    return int(run.stdout.split("PEAK_KB")[-1].split()[0])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak from /proc (Linux)")
def test_large_png_refines_in_bounded_memory(nets, tmp_path: Path):
    """A 64 MP PNG of flat regions (a few hundred KB) against a 512 px one, both run at 512 px (--max-side): the
    large one may add the decoder's buffer (4 bytes a pixel) and the full-size labels (1 byte a pixel, refined and
    coarse), under 8 bytes a pixel in all (3.6 measured), never K float maps at full size (before: 96 bytes a pixel,
    6.4 GB)."""
    _large(tmp_path / "huge.png", 8000, 8000)
    _large(tmp_path / "small.png", 512, 512)
    small = _peak_kb(nets, tmp_path / "small.png", tmp_path / "out_small")
    large = _peak_kb(nets, tmp_path / "huge.png", tmp_path / "out_large")
    extra = (large - small) * 1024
    assert extra < 8 * 8000 * 8000, f"{extra / 8000**2:.1f} bytes a pixel more than a 512 px image"
    assert Image.open(tmp_path / "out_large" / "masks" / "huge.png").size == (8000, 8000)
