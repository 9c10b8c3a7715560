"""`refine-cli weights ...` through Typer's CliRunner on temporary folders: exit codes (0 ok, 1 failure,
2 usage), one-line errors, no tracebacks. Downloads come from a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from refine_cli.cli import app
from refine_cli.cli import weights as weights_cli
from refine_cli.labels import VOC_CLASSES
from refine_cli.models import registry
from refine_cli.models.espnet import espnet
from refine_cli.transforms import IMAGENET
from refine_cli.weights import TORCHVISION_SEG, catalog, list_weights
from refine_cli.weights.catalog import RemoteFile

runner = CliRunner()


class TinyTV(nn.Module):
    def __init__(self, *, num_classes: int = 21, aux_loss: bool = True):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.classifier = nn.Conv2d(4, num_classes, 1)
        self.aux_classifier = nn.Conv2d(4, num_classes, 1) if aux_loss else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes, H, W) logits."""
        return self.classifier(self.backbone(x))


def tiny_tv(*, num_classes: int = 21, aux_loss: bool = True) -> nn.Module:
    return TinyTV(num_classes=num_classes, aux_loss=aux_loss)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Cache and bundled folder in tmp_path, a tiny registered net, and a catalog served from 127.0.0.1."""
    monkeypatch.setenv("REFINE_CLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REFINE_CLI_BUNDLED", str(tmp_path / "bundled"))
    models = {**registry.MODELS, "tiny_tv": registry.ModelSpec(tiny_tv, "base", IMAGENET, "tiny net", aux_head=True)}
    monkeypatch.setattr(registry, "MODELS", MappingProxyType(models))

    served = tmp_path / "served"
    served.mkdir()
    torch.manual_seed(0)
    torch.save(tiny_tv().state_dict(), served / "tiny_tv_coco-abc.pth")
    data = (served / "tiny_tv_coco-abc.pth").read_bytes()
    (served / "broken-abc.pth").write_bytes(data[::-1])
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    good_hash = hashlib.sha256(data).hexdigest()[:8]
    seg = RemoteFile(name="tiny_tv_coco", file_name="tiny_tv_coco-abc.pth", url=url + "tiny_tv_coco-abc.pth",
                     sha256=good_hash, kind="base", description="tiny", arch="tiny_tv", classes=VOC_CLASSES,
                     preprocess=TORCHVISION_SEG)
    broken = RemoteFile(name="broken", file_name="broken-abc.pth", url=url + "broken-abc.pth", sha256=good_hash,
                        kind="trunk", description="served with the wrong bytes", source_format="raw", trunk="x")
    monkeypatch.setattr(catalog, "REMOTE_FILES", MappingProxyType({seg.name: seg, broken.name: broken}))
    yield tmp_path
    srv.shutdown()
    srv.server_close()


def run(*args: str):
    result = runner.invoke(app, ["weights", *args])
    assert "Traceback" not in result.output, result.output
    return result


def one_line_error(result) -> str:
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_fetch_converts_then_list_verify_info(env):
    r = run("fetch", "tiny_tv_coco")
    assert r.exit_code == 0, r.output
    assert "converted" in r.stdout
    assert (env / "cache" / "checkpoints" / "tiny_tv_coco.pt").is_file()

    r = run("list", "--json")
    assert r.exit_code == 0
    rows = {(row["name"], row["where"]): row for row in json.loads(r.stdout)}
    assert rows["tiny_tv_coco", "cache"]["status"] == "present" and rows["tiny_tv_coco", "cache"]["arch"] == "tiny_tv"
    assert rows["tiny_tv_coco", "remote"]["status"] == "downloaded"
    assert rows["broken", "remote"]["status"] == "not downloaded"
    assert run("list").exit_code == 0

    r = run("verify", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert len(results) == 2 and all(x["ok"] for x in results)  # the raw download and the converted file

    r = run("info", "tiny_tv_coco", "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["arch"] == "tiny_tv" and info["classes"] == list(VOC_CLASSES)
    assert info["preprocess"]["size"] == 520 and info["provenance"]["url"].endswith("tiny_tv_coco-abc.pth")
    assert "tiny_tv" in run("info", "tiny_tv_coco").stdout


def test_fetch_failures(env):
    r = run("fetch", "broken")
    assert r.exit_code == 1
    assert "does not match" in one_line_error(r)
    assert list((env / "cache" / "downloads").iterdir()) == []
    r = run("fetch", "nope")
    assert r.exit_code == 2
    assert "tiny_tv_coco" in one_line_error(r)


def test_import_info_and_errors(env):
    f = env / "mine.pth"
    torch.save(tiny_tv(num_classes=3, aux_loss=False).state_dict(), f)
    classes = env / "classes.txt"
    classes.write_text("bg\ncat\ndog\n")
    r = run("import", str(f), "--from", "torchvision", "--arch", "tiny_tv", "--name", "pets",
            "--classes", str(classes))
    assert r.exit_code == 0, r.output
    assert "pets" in r.stdout
    info = json.loads(run("info", "pets", "--json").stdout)
    assert info["classes"] == ["bg", "cat", "dog"] and info["arch_args"] == {"num_classes": 3, "aux_loss": False}

    r = run("import", str(f), "--from", "torchvision", "--arch", "tiny_tv", "--name", "voc")  # 21 != 3 classes
    assert r.exit_code == 1
    assert "classifier.weight" in one_line_error(r)
    assert not (env / "cache" / "checkpoints" / "voc.pt").exists()
    r = run("import", str(f), "--from", "torchvision", "--arch", "no_such_arch")
    assert r.exit_code == 2 and "unknown model" in one_line_error(r)
    r = run("import", str(f), "--from", "caffe", "--arch", "tiny_tv")
    assert r.exit_code == 2 and "fcn-caffe-port" in one_line_error(r)
    r = run("import", str(env / "missing.pth"), "--from", "torchvision", "--arch", "tiny_tv")
    assert r.exit_code == 2 and "no such file" in one_line_error(r)  # a path in the command: a usage error


def test_verify_and_info_failures(env):
    f = env / "mine.pth"
    torch.save(tiny_tv().state_dict(), f)
    assert run("import", str(f), "--from", "torchvision", "--arch", "tiny_tv").exit_code == 0
    saved = env / "cache" / "checkpoints" / "mine.pt"
    saved.write_bytes(saved.read_bytes()[:-100])
    r = run("verify")
    assert r.exit_code == 1
    assert "FAILED" in r.stdout
    r = run("verify", "--json", "mine", "nothing_here")
    assert r.exit_code == 2  # a name that names nothing is a usage error; every target is still reported
    results = {x["name"]: x for x in json.loads(r.stdout)}
    assert not results["mine"]["ok"] and "sha256" in results["mine"]["detail"] and results["mine"]["known"]
    assert not results["nothing_here"]["ok"] and "no checkpoint called" in results["nothing_here"]["detail"]
    assert not results["nothing_here"]["known"]
    assert run("verify", "mine").exit_code == 1

    r = run("info", "nothing_here")
    assert r.exit_code == 2 and "tiny_tv_coco" in one_line_error(r)
    r = run("info", "broken")  # in the catalog, not downloaded: described without a download
    assert r.exit_code == 0 and "served with the wrong bytes" in r.stdout and "not downloaded" in r.stdout
    r = run("info", str(f))
    assert r.exit_code == 1 and "weights import" in one_line_error(r)
    assert run("verify", "--help").exit_code == 0
    r = run()  # no_args_is_help: the usage text, exit 2
    assert r.exit_code == 2 and "fetch" in r.output


def test_verify_reports_non_finite_weights(env):
    f = env / "mine.pth"
    torch.save(tiny_tv().state_dict(), f)
    assert run("import", str(f), "--from", "torchvision", "--arch", "tiny_tv").exit_code == 0
    saved = env / "cache" / "checkpoints" / "mine.pt"
    d = torch.load(saved, weights_only=True)
    d["state_dict"]["classifier.weight"] = torch.full_like(d["state_dict"]["classifier.weight"], float("nan"))
    nan_file = env / "nan.pt"
    torch.save(d, nan_file)  # what a diverged run or a damaged copy could leave
    r = run("verify", "--json", str(nan_file))
    assert r.exit_code == 1
    [result] = json.loads(r.stdout)
    assert not result["ok"] and "NaN or infinite" in result["detail"] and "classifier.weight" in result["detail"]
    torch.save({"classifier.weight": torch.full((21, 4, 1, 1), float("inf"))}, f)
    r = run("import", str(f), "--from", "torchvision", "--arch", "tiny_tv", "--name", "inf")
    assert r.exit_code == 1 and "NaN or infinite" in one_line_error(r)


@pytest.mark.parametrize("width", [80, 200])
def test_weights_list_at_80_columns_cuts_no_column(tmp_path, monkeypatch, width):
    monkeypatch.setenv("REFINE_CLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_cli, "console", Console(width=width))
    r = run("list")
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout and max(len(line) for line in r.stdout.splitlines()) <= width
    rows = [line.split() for line in r.stdout.splitlines()]
    for entry in list_weights():
        row = next(row for row in rows if row and row[0] == entry.name)  # every name whole, at the row's start
        assert entry.where in row and (entry.kind or "-") in row
        assert (entry.arch in row[1:]) == (width == 200)  # a narrow terminal leaves the arch to `weights info`
    assert {"present", "not"} <= {word for row in rows for word in row}
def test_import_espnet_without_arch(env):
    torch.manual_seed(0)
    f = env / "espnet_street.pth"
    torch.save(espnet(num_classes=6, p=1, q=1).state_dict(), f)
    classes = env / "classes.txt"
    classes.write_text("road\ncar\nsky\nbuilding\nperson\n")
    r = run("import", str(f), "--from", "espnet", "--classes", str(classes))
    assert r.exit_code == 0, r.output
    assert "espnet_street (espnet, 5 classes)" in r.stdout
    info = json.loads(run("info", "espnet_street", "--json").stdout)
    assert info["arch_args"] == {"p": 1, "q": 1, "decoder_channels": 6, "num_classes": 5}
    assert info["provenance"]["dropped_output_channels"] == [5] and info["preprocess"]["color_order"] == "BGR"
    r = run("import", str(f), "--from", "espnet", "--name", "no_names")  # 5 outputs are not CamVid's 11
    assert r.exit_code == 2 and "--classes" in one_line_error(r)
    r = run("import", str(f), "--from", "torchvision")
    assert r.exit_code == 2 and "needs --arch" in one_line_error(r)
