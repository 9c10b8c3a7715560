"""`refine-cli refine` / `segment` on temporary folders: good and bad files, output layout, palettes, resume after
a kill, exit codes, coarse masks given as binary and multi-class PNGs, outputs checked before any work, one run at a
time on an --out folder, stale temporary files, Ctrl-C at every stage."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from refine_cli import pipeline as pipeline_module
from refine_cli.cli import app
from refine_cli.labels import voc_palette
from refine_cli.pipeline import folder as folder_module

runner = CliRunner()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif_rotated(path: Path) -> None:
    """A 20x30 (w x h stored 30x20) JPEG whose EXIF says 'rotate 90 CW': viewers show it 20 wide, 30 high."""
    img = Image.fromarray(_rgb(20, 30, 7))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif)


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(32, 40, 1)).save(root / "rgb.jpg")
    Image.fromarray(_rgb(32, 40, 2)[:, :, 0], mode="L").save(root / "grey.png")
    Image.fromarray(np.dstack([_rgb(24, 24, 3), np.full((24, 24), 128, np.uint8)]), mode="RGBA").save(
        root / "sub" / "rgba.png")
    Image.fromarray(_rgb(24, 32, 4)).convert("CMYK").save(root / "sub" / "cmyk.jpg")
    Image.fromarray((np.random.default_rng(5).integers(0, 65535, (24, 24))).astype(np.uint16)).save(
        root / "deep16.png")
    _exif_rotated(root / "rotated.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_bytes(b"this is text, not a picture")
    good = (root / "rgb.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


GOOD = {"rgb.jpg", "grey.png", "sub/rgba.png", "sub/cmyk.jpg", "deep16.png", "rotated.jpg"}
BAD = {"empty.jpg", "notes.png", "truncated.jpg"}


def refine(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["refine", *args, "--json", "-"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}


def test_good_files_refined_bad_ones_reported_exit_1(nets, inputs: Path, tmp_path: Path):
    out = tmp_path / "out"
    code, summary = refine(str(inputs), "--out", str(out), "--base", str(nets["base"]), "--refiner",
                           str(nets["refiner"]), "--device", "cpu")
    assert code == 1
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (len(GOOD), 0, len(BAD))
    failed = {Path(f["path"]).name: f["reason"] for f in summary["failures"]}
    assert set(failed) == {Path(b).name for b in BAD}
    for name, reason in failed.items():
        assert name in reason and "\n" not in reason
    # Layout: masks/<rel>.png and overlays/<rel>.jpg mirror the input tree; nothing else, no temp files.
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    stems = {g.rsplit(".", 1)[0] for g in GOOD}
    assert written == {f"masks/{s}.png" for s in stems} | {f"overlays/{s}.jpg" for s in stems}


def test_masks_are_palette_pngs_at_the_image_size(nets, inputs: Path, tmp_path: Path):
    out = tmp_path / "out"
    refine(str(inputs), "--out", str(out), "--base", str(nets["base"]), "--refiner", str(nets["refiner"]))
    for rel, size in {"rgb": (40, 32), "rotated": (20, 30), "sub/cmyk": (32, 24)}.items():
        mask = Image.open(out / "masks" / f"{rel}.png")
        assert mask.mode == "P" and mask.size == size
        palette = np.array(mask.getpalette()[: 256 * 3]).reshape(256, 3)
        np.testing.assert_array_equal(palette[:8], np.array(voc_palette(8)))  # the synthetic classes' colours
        assert np.asarray(mask).max() < 8
        assert Image.open(out / "overlays" / f"{rel}.jpg").size == size


def test_existing_outputs_are_skipped_unless_overwrite(nets, inputs: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = [str(inputs / "rgb.jpg"), str(inputs / "grey.png"), "--out", str(out), "--base", str(nets["base"]),
            "--refiner", str(nets["refiner"])]
    assert refine(*args)[0] == 0
    before = (out / "masks" / "rgb.png").stat().st_mtime_ns
    code, summary = refine(*args)
    assert code == 0 and (summary["processed"], summary["skipped"]) == (0, 2)
    assert (out / "masks" / "rgb.png").stat().st_mtime_ns == before
    code, summary = refine(*args, "--overwrite")
    assert code == 0 and (summary["processed"], summary["skipped"]) == (2, 0)


def test_coarse_masks_binary_and_multiclass(nets, tmp_path: Path):
    images, masks = tmp_path / "img", tmp_path / "masks"
    (images / "a").mkdir(parents=True)
    (masks / "a").mkdir(parents=True)
    Image.fromarray(_rgb(32, 32, 1)).save(images / "a" / "bin.jpg")
    binary = np.zeros((32, 32), np.uint8)
    binary[8:24, 8:20] = 255
    Image.fromarray(binary, mode="L").save(masks / "a" / "bin.png")
    Image.fromarray(_rgb(32, 32, 2)).save(images / "multi.jpg")
    multi = np.zeros((32, 32), np.uint8)
    multi[:, 16:] = 2
    multi[4:12, 4:12] = 1
    pm = Image.fromarray(multi, mode="P")
    pm.putpalette([v for rgb in voc_palette() for v in rgb])
    pm.save(masks / "multi.png")
    Image.fromarray(_rgb(32, 32, 3)).save(images / "orphan.jpg")  # no mask for this one
    out = tmp_path / "out"
    code, summary = refine(str(images), "--masks", str(masks), "--out", str(out), "--refiner", str(nets["refiner"]),
                           "--save-coarse")
    assert code == 1 and summary["processed"] == 2 and summary["failed"] == 1
    assert "no coarse mask" in summary["failures"][0]["reason"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coarse" / "a" / "bin.png")), binary // 255)
    assert set(np.unique(np.asarray(Image.open(out / "masks" / "a" / "bin.png")))) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coarse" / "multi.png")), multi)
    assert set(np.unique(np.asarray(Image.open(out / "masks" / "multi.png")))) <= {0, 1, 2}


def test_a_mask_of_an_exif_turned_photo_is_taken_as_displayed_and_a_stored_size_mask_is_explained(nets, tmp_path: Path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("shown", "stored"):
        _exif_rotated(images / f"{name}.jpg")  # stored 30 wide x 20 high, displayed 20 wide x 30 high
    Image.fromarray(_rgb(30, 20, 8)).save(images / "plain.jpg")  # 20 wide x 30 high, no orientation
    shown = np.zeros((30, 20), np.uint8)
    shown[5:25, 4:12] = 1
    Image.fromarray(shown).save(masks / "shown.png")
    Image.fromarray(np.ascontiguousarray(shown.T)).save(masks / "stored.png")  # the stored pixels' size
    Image.fromarray(np.ascontiguousarray(shown.T)).save(masks / "plain.png")  # transposed, but no EXIF to blame
    code, summary = refine(str(images), "--masks", str(masks), "--out", str(tmp_path / "out"), "--refiner",
                           str(nets["refiner"]), "--num-classes", "2")
    assert code == 1 and summary["processed"] == 1 and summary["failed"] == 2, summary
    assert Image.open(tmp_path / "out" / "masks" / "shown.png").size == (20, 30)
    reasons = {Path(f["path"]).stem: f["reason"] for f in summary["failures"]}
    assert "mask is 30x20 (width x height) but its image stored.jpg is 20x30" in reasons["stored"]
    assert "EXIF orientation turns it a quarter" in reasons["stored"] and "\n" not in reasons["stored"]
    assert "mask is 30x20" in reasons["plain"] and "EXIF" not in reasons["plain"]


@pytest.mark.parametrize("inside", ["masks", "masks/sub", "coarse"])
def test_coarse_masks_inside_an_output_folder_are_refused_and_kept(nets, tmp_path: Path, inside: str):
    images, out = tmp_path / "images", tmp_path / "out"
    masks = out / inside
    images.mkdir()
    masks.mkdir(parents=True)
    Image.fromarray(_rgb(24, 32, 1)).save(images / "a.jpg")
    coarse = np.zeros((24, 32), np.uint8)
    coarse[4:20, 6:20] = 1
    Image.fromarray(coarse).save(masks / "a.png")
    before = (masks / "a.png").read_bytes()
    for extra in ((), ("--overwrite", "--save-coarse")):
        result = runner.invoke(app, ["refine", str(images), "--masks", str(masks), "--out", str(out), "--refiner",
                                     str(nets["refiner"]), "--num-classes", "2", *extra])
        assert result.exit_code == 2, result.output
        assert "would overwrite the coarse masks it reads" in result.output and "choose another --out" in result.output
        assert (masks / "a.png").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [inside.split("/")[0]]  # nothing written, nothing else made


def test_usage_errors_exit_2(nets, tmp_path: Path):
    missing = runner.invoke(app, ["refine", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "x.png")
    bad_net = runner.invoke(app, ["refine", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--base",
                                  "no_such_network"])
    assert bad_net.exit_code == 2 and "no checkpoint called 'no_such_network'" in bad_net.output
    bad_precision = runner.invoke(app, ["refine", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--base",
                                        str(nets["base"]), "--refiner", str(nets["refiner"]), "--precision", "fp8"])
    assert bad_precision.exit_code == 2 and "Invalid value for '--precision'" in bad_precision.output
    bad_side = runner.invoke(app, ["refine", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--base",
                                   str(nets["base"]), "--refiner", str(nets["refiner"]), "--refiner-side", "8"])
    assert bad_side.exit_code == 2 and "at least 16 pixels" in bad_side.output
    for result in (missing, bad_net, bad_precision, bad_side):
        assert "Traceback" not in result.output


def test_segment_writes_the_base_output(nets, inputs: Path, tmp_path: Path):
    out = tmp_path / "seg"
    result = runner.invoke(app, ["segment", str(inputs / "rgb.jpg"), "--out", str(out), "--base", str(nets["base"]),
                                 "--save-probs", "--json", "-"])
    assert result.exit_code == 0, result.output
    probs = np.load(out / "probs" / "rgb.npz")["probs"].astype(np.float32)
    assert probs.shape == (8, 32, 40)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)
    top2 = np.sort(probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-2  # away from near-ties that float16 storage may flip
    mask = np.asarray(Image.open(out / "masks" / "rgb.png"))
    np.testing.assert_array_equal(mask[clear], probs.argmax(0)[clear])


@pytest.mark.slow
def test_a_killed_run_resumes_without_corrupt_outputs(nets, tmp_path: Path):
    images = tmp_path / "many"
    images.mkdir()
    for i in range(40):
        Image.fromarray(_rgb(48, 48, i)).save(images / f"{i:02d}.jpg")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "refine_cli", "refine", str(images), "--out", str(out), "--base", str(nets["base"]),
           "--refiner", str(nets["refiner"]), "--device", "cpu", "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    def finished_masks() -> list[Path]:  # under their final names: a write in flight is a hidden .part.png
        return [p for p in (out / "masks").glob("*.png") if not p.name.startswith(".")]

    while time.monotonic() < deadline and len(finished_masks()) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    done_before = {p.name for p in finished_masks()}
    assert 3 <= len(done_before) < 40, "the run should have been killed part-way"
    for p in finished_masks():  # every file that exists under its final name is complete
        Image.open(p).load()
    result = subprocess.run(cmd + ["--json", "-"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["processed"] + summary["skipped"] == 40 and summary["failed"] == 0
    assert summary["skipped"] >= len(done_before) - 1  # a mask written just before the kill may lack its overlay
    finals = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(finals) == 80  # 40 masks + 40 overlays
    for p in finals:
        Image.open(p).load()  # complete files only; a killed write can leave only a hidden .part temp file


def test_failure_table_shows_names_with_brackets_verbatim(nets, tmp_path: Path):
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(_rgb(16, 16)).save(root / "ok.png")
    (root / "[draft] b.jpg").write_bytes(b"")
    result = runner.invoke(app, ["refine", str(root), "--out", str(tmp_path / "out"), "--base", str(nets["base"]),
                                 "--refiner", str(nets["refiner"]), "--device", "cpu", "--no-overlay"])
    assert result.exit_code == 1
    assert "[draft]b.jpg" in "".join(result.output.split())  # the table may fold a long path over lines


def _one_image(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray(_rgb(16, 16)).save(path)
    return path


def _nets(nets) -> list[str]:
    return ["--base", str(nets["base"]), "--refiner", str(nets["refiner"]), "--device", "cpu"]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody can create files in: read-only permissions, or for root (whom permissions do not stop) a
    place in sysfs, which takes no new files from anyone."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder if os.geteuid() != 0 else Path("/sys/refine-cli-test")


def _no_networks(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("networks were loaded: the problem was not found up front")

    monkeypatch.setattr(pipeline_module, "Refiner", refuse)


def test_json_to_a_directory_is_a_usage_error(nets, tmp_path: Path, monkeypatch):
    _no_networks(monkeypatch)
    image, out = _one_image(tmp_path), tmp_path / "out"
    (tmp_path / "a-file").write_text("x")
    targets = {tmp_path: "is a folder", tmp_path / "a-file" / "s.json": "a part of the path is a file",
               _unwritable_folder(tmp_path) / "s.json": "permission denied or a read-only file system"}
    for target, said in targets.items():
        result = runner.invoke(app, ["refine", str(image), "--out", str(out), *_nets(nets), "--json", str(target)])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error:") and said in result.stderr and str(target) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()  # checked before any work


def test_an_unwritable_out_is_refused_before_any_work(nets, tmp_path: Path, monkeypatch):
    _no_networks(monkeypatch)
    image = _one_image(tmp_path)
    (tmp_path / "a-file").write_text("x")
    for out, said in ((tmp_path / "a-file" / "out", "a part of the path is a file"),
                      (_unwritable_folder(tmp_path) / "out", "permission denied or a read-only file system")):
        result = runner.invoke(app, ["refine", str(image), "--out", str(out), *_nets(nets)])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: cannot write into --out {out}: {said}")
        assert "Traceback" not in result.output


def test_a_missing_checkpoint_path_is_a_usage_error(tmp_path: Path):
    image = _one_image(tmp_path)
    for name in (str(tmp_path / "nope.pt"), "no_such_network"):
        result = runner.invoke(app, ["refine", str(image), "--out", str(tmp_path / "o"), "--base", name])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error:") and "Traceback" not in result.output


def test_non_finite_weights_are_refused_not_turned_into_zero_masks(nets, tmp_path: Path):
    d = torch.load(nets["base"], weights_only=True)
    d["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                       for k, v in d["state_dict"].items()}
    nan_base = tmp_path / "nan_base.pt"
    torch.save(d, nan_base)
    out = tmp_path / "out"
    result = runner.invoke(app, ["refine", str(_one_image(tmp_path)), "--out", str(out), "--base", str(nan_base),
                                 "--refiner", str(nets["refiner"]), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "nan_base.pt is unusable" in result.stderr and "NaN or infinite" in result.stderr
    assert not (out / "masks").exists()


def test_ctrl_c_during_start_up_prints_no_traceback():
    # Ctrl-C while the heavy modules import, made deterministic: the import of the Typer app raises it.
    script = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def cut(name, *args, **kwargs):\n"
        "    if name == 'refine_cli.cli.root':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = cut\n"
        "from refine_cli.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == "interrupted"


def test_ctrl_c_during_model_loading_still_writes_the_summary_and_json(nets, tmp_path: Path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises while the checkpoints load

    monkeypatch.setattr(pipeline_module, "Refiner", interrupted)
    summary = tmp_path / "summary.json"
    result = runner.invoke(app, ["refine", str(_one_image(tmp_path)), "--out", str(tmp_path / "out"),
                                 *_nets(nets), "--json", str(summary)])
    assert result.exit_code == 130, result.output
    assert "Interrupted: summary so far" in result.stdout
    assert json.loads(summary.read_text())["interrupted"] is True


@pytest.mark.slow
def test_ctrl_c_mid_run_counts_every_file_on_disk(nets, tmp_path: Path, monkeypatch):
    images = tmp_path / "many"
    images.mkdir()
    for i in range(24):
        Image.fromarray(_rgb(24, 24, i)).save(images / f"{i:02d}.png")
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    real_write, real_stream = folder_module.write_outputs, pipeline_module.Refiner._stream

    def slow_write(*args, **kwargs):  # several writes are under way when Ctrl-C comes
        time.sleep(0.2)
        real_write(*args, **kwargs)

    def masks() -> list[Path]:
        return [p for p in (out / "masks").glob("*.png") if not p.name.startswith(".")]

    def stream_then_ctrl_c(self, *args, **kwargs):
        # Ctrl-C lands in the main thread while it runs the networks, once three files are on disk: raised here
        # rather than sent as a signal, whose delivery a loaded machine can delay past the end of the run.
        for count, outcome in enumerate(real_stream(self, *args, **kwargs), 1):
            yield outcome
            if count >= 8:
                deadline = time.monotonic() + 60
                while len(masks()) < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                raise KeyboardInterrupt

    monkeypatch.setattr(folder_module, "write_outputs", slow_write)
    monkeypatch.setattr(pipeline_module.Refiner, "_stream", stream_then_ctrl_c)

    result = runner.invoke(app, ["refine", str(images), "--out", str(out), *_nets(nets), "--batch-size", "1",
                                 "--no-overlay", "--json", str(summary)])
    assert result.exit_code == 130, result.output
    report = json.loads(summary.read_text())
    assert 3 <= report["processed"] < 24 and report["failed"] == 0
    assert report["processed"] == len(masks())
    assert report["interrupted"] is True
    assert not [p for p in out.rglob(".*") if p.name != ".refine-cli.lock"]


def test_a_full_disk_stops_the_run_and_the_next_run_goes_on(nets, tmp_path: Path, monkeypatch):
    """Once a write finds no room, every later one would too: the run stops instead of refining the rest, says
    why in one line, and the same command, given room, finishes the files not yet written."""
    images = tmp_path / "many"
    images.mkdir()
    for i in range(16):
        Image.fromarray(_rgb(16, 16, i)).save(images / f"{i:02d}.png")
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    real_write, calls = folder_module.write_outputs, []

    def fills_up(result, outputs, *args, **kwargs):
        calls.append(outputs.mask)
        if len(calls) > 3:
            try:  # the way the disk says it: an OSError under the write's own error
                raise OSError(errno.ENOSPC, "No space left on device", str(outputs.mask))
            except OSError as exc:
                raise folder_module.RefineError(f"cannot write {outputs.mask}") from exc
        real_write(result, outputs, *args, **kwargs)

    monkeypatch.setattr(folder_module, "write_outputs", fills_up)
    args = ["refine", str(images), "--out", str(out), *_nets(nets), "--batch-size", "1", "--no-overlay"]
    result = runner.invoke(app, [*args, "--json", str(summary)])
    assert result.exit_code == 1, result.output
    assert "Stopped: summary so far" in result.stdout
    assert "takes no more files (No space left on device)" in result.output and "Traceback" not in result.output
    report = json.loads(summary.read_text())
    assert report["processed"] == 3 == len(list((out / "masks").glob("*.png")))
    assert 1 <= report["failed"] and report["processed"] + report["failed"] == len(calls) < 16
    assert "run the same command again" in report["stopped"]

    monkeypatch.setattr(folder_module, "write_outputs", real_write)
    again = runner.invoke(app, [*args, "--json", str(summary)])
    assert again.exit_code == 0, again.output
    report = json.loads(summary.read_text())
    assert (report["skipped"], report["processed"], report["stopped"]) == (3, 13, "")


def test_stale_temps_of_killed_runs_are_removed(nets, tmp_path: Path):
    out = tmp_path / "out"
    stale = [out / "probs" / ".x.0123456789ab.part.npz", out / "masks" / "sub" / ".y.abcdef012345.part.png"]
    for path in stale:  # 0-byte temps, as kill -9 leaves them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    mine = out / "masks" / "notes.part.txt"  # not a temp name: not ours to delete
    mine.write_text("keep")
    result = runner.invoke(app, ["refine", str(_one_image(tmp_path)), "--out", str(out), *_nets(nets),
                                 "--save-probs"])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and mine.read_text() == "keep"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "masks/notes.part.txt", "masks/x.png", "overlays/x.jpg", "probs/x.npz"]


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused(nets, tmp_path: Path):
    out = tmp_path / "out"
    live_temp = out / "masks" / ".x.0123456789ab.part.png"  # a write of the run that holds the folder
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom refine_cli.pipeline.folder import claim_output_folder\n"
         f"with claim_output_folder({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        live_temp.parent.mkdir(parents=True)
        live_temp.touch()
        result = runner.invoke(app, ["refine", str(_one_image(tmp_path)), "--out", str(out), *_nets(nets)])
        assert result.exit_code == 2, result.output
        assert f"another refine-cli run (pid {holder.pid} on " in result.stderr
        assert live_temp.exists() and not (out / "masks" / "x.png").exists()
    finally:
        holder.kill()  # kill -9: the lock goes with the process
        holder.wait()
    result = runner.invoke(app, ["refine", str(_one_image(tmp_path)), "--out", str(out), *_nets(nets)])
    assert result.exit_code == 0, result.output
    assert (out / "masks" / "x.png").is_file() and not live_temp.exists()  # its owner is gone: a stale temp now
    assert not (out / ".refine-cli.lock").exists()


def test_the_pixel_guard_is_a_flag(nets, tmp_path: Path):
    # A 40x40 file is 0.0016 MP: refused by name under a limit of 0.001 MP, refined under the default.
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(_rgb(40, 40)).save(images / "a.png")
    summary = tmp_path / "summary.json"
    result = runner.invoke(app, ["refine", str(images), "--out", str(tmp_path / "small"), *_nets(nets),
                                 "--max-megapixels", "0.001", "--json", str(summary)])
    assert result.exit_code == 1, result.output
    (failure,) = json.loads(summary.read_text())["failures"]
    assert failure["path"].endswith("a.png") and "--max-megapixels" in failure["reason"]
    result = runner.invoke(app, ["refine", str(images), "--out", str(tmp_path / "default"), *_nets(nets)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "default" / "masks" / "a.png").is_file()
