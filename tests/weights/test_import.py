"""Importers (torchvision layout, the Caffe FCN port) checked key by key before writing, and the store:
resolving names, listing, verifying against recorded sha256 sums. Tiny nets stand in for the big ones."""

from __future__ import annotations

import hashlib
import json
from types import MappingProxyType

import pytest
import torch
from torch import nn

from refine_cli.errors import UsageError, WeightsError
from refine_cli.labels import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, voc_palette
from refine_cli.models import registry
from refine_cli.models.espnet import espnet
from refine_cli.models.espnetv2 import espnetv2
from refine_cli.transforms import CAFFE_FCN, IMAGENET
from refine_cli.weights import (
    TORCHVISION_SEG,
    ArchNotAvailableError,
    build_model,
    catalog,
    convert_remote,
    import_checkpoint,
    imported_path,
    list_weights,
    load_checkpoint,
    read_class_names,
    record_file,
    resolve,
    save_checkpoint,
    trunk_path,
    verify,
)
from refine_cli.weights.catalog import RemoteFile
from refine_cli.weights.importers import ESPNET_CAMVID, ESPNETV2_VOC


class TinyTV(nn.Module):
    """torchvision's segmentation layout in miniature: backbone, classifier, optional aux_classifier."""

    def __init__(self, *, num_classes: int = 21, aux_loss: bool = True):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Conv2d(4, num_classes, 1)
        self.aux_classifier = nn.Conv2d(4, num_classes, 1) if aux_loss else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes, H, W) logits."""
        return self.classifier(self.backbone(x))


class TinyFCN(nn.Module):
    """The Caffe FCN port's flat key layout in miniature (transposed conv without bias)."""

    def __init__(self, *, num_classes: int = 21):
        super().__init__()
        self.conv1_1 = nn.Conv2d(3, 4, 3, padding=1)
        self.score_fr = nn.Conv2d(4, num_classes, 1)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) Caffe-normalised BGR -> (N, num_classes, 2H+2, 2W+2) logits."""
        return self.upscore(self.score_fr(torch.relu(self.conv1_1(x))))


def tiny_tv(*, num_classes: int = 21, aux_loss: bool = True) -> nn.Module:
    return TinyTV(num_classes=num_classes, aux_loss=aux_loss)


def tiny_fcn(*, num_classes: int = 21) -> nn.Module:
    return TinyFCN(num_classes=num_classes)


def unavailable(**kwargs):
    raise NotImplementedError


def tiny_data_init(*, num_classes: int = 21) -> nn.Module:
    """A builder whose initialisation reads tensor values, which the meta device cannot do."""
    model = tiny_fcn(num_classes=num_classes)
    assert float(model.conv1_1.weight.detach().abs().sum()) > 0
    return model


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """Cache and bundled folder in tmp_path; the registry plus tiny nets; a catalog of tiny remote files."""
    monkeypatch.setenv("REFINE_CLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REFINE_CLI_BUNDLED", str(tmp_path / "bundled"))
    models = {
        **registry.MODELS,
        "tiny_tv": registry.ModelSpec(tiny_tv, "base", IMAGENET, "tiny torchvision-layout net", aux_head=True),
        "tiny_fcn": registry.ModelSpec(tiny_fcn, "base", CAFFE_FCN, "tiny Caffe-FCN-layout net"),
        "tiny_later": registry.ModelSpec(unavailable, "base", IMAGENET, "not built yet"),
        "tiny_data_init": registry.ModelSpec(tiny_data_init, "base", CAFFE_FCN, "needs real tensors to build"),
    }
    monkeypatch.setattr(registry, "MODELS", MappingProxyType(models))
    seg = RemoteFile(name="tiny_tv_coco", file_name="tiny_tv_coco-00000000.pth", url="http://127.0.0.1:9/unused",
                     sha256="0" * 8, kind="base", description="tiny", arch="tiny_tv", classes=VOC_CLASSES,
                     preprocess=TORCHVISION_SEG, metrics={"coco": {"miou": 1.0, "reported_by": "nobody"}})
    trunk = RemoteFile(name="tiny_imagenet", file_name="tiny-00000000.pth", url="http://127.0.0.1:9/unused",
                       sha256="0" * 8, kind="trunk", description="tiny trunk", source_format="raw", trunk="tiny")
    monkeypatch.setattr(catalog, "REMOTE_FILES", MappingProxyType({seg.name: seg, trunk.name: trunk}))
    return tmp_path


def tv_file(tmp_path, *, num_classes=21, aux=True, seed=0, name="tv.pth"):
    torch.manual_seed(seed)
    model = tiny_tv(num_classes=num_classes, aux_loss=aux)
    model.backbone[1].running_var.uniform_(0.5, 2.0)
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_import_torchvision_round_trip(env):
    path, ref = tv_file(env)
    ckpt = import_checkpoint(path, source="torchvision", arch="tiny_tv")
    out = imported_path("tv")
    assert out == env / "cache" / "checkpoints" / "tv.pt" and out.is_file()
    back = load_checkpoint(out)
    assert back.arch_args == {"num_classes": 21} and back.kind == "base"
    assert back.meta.classes == VOC_CLASSES and back.meta.preprocess == TORCHVISION_SEG
    prov = back.meta.provenance
    assert prov["source_format"] == "torchvision" and prov["source_file"] == "tv.pth"
    assert prov["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    model = build_model(back)
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))
    assert json.loads((out.parent / "manifest.json").read_text())["files"]["tv.pt"]["sha256"]
    assert set(ckpt.state_dict) == set(ref.state_dict())


def test_import_without_aux_head_switches_aux_loss(env):
    path, _ = tv_file(env, aux=False)
    ckpt = import_checkpoint(path, source="torchvision", arch="tiny_tv", save=False)
    assert ckpt.arch_args == {"num_classes": 21, "aux_loss": False}
    assert not any(k.startswith("aux_classifier.") for k in build_model(ckpt).state_dict())


def test_import_classes_set_num_classes_and_mismatch_writes_nothing(env):
    path, _ = tv_file(env, num_classes=3)
    ckpt = import_checkpoint(path, source="torchvision", arch="tiny_tv", classes=["bg", "cat", "dog"], name="pets")
    assert ckpt.arch_args["num_classes"] == 3 and ckpt.meta.classes == ("bg", "cat", "dog")
    with pytest.raises(WeightsError) as info:
        import_checkpoint(path, source="torchvision", arch="tiny_tv", name="wrong")  # 21 VOC classes
    assert "classifier.weight (file (3, 4, 1, 1) vs model (21, 4, 1, 1))" in str(info.value)
    assert not imported_path("wrong").exists()


def test_import_fcn_caffe_port_plain_and_wrapped(env):
    torch.manual_seed(0)
    ref = tiny_fcn()
    plain = env / "fcn8s_from_caffe.pth"
    torch.save(ref.state_dict(), plain)
    ckpt = import_checkpoint(plain, source="fcn-caffe-port", arch="tiny_fcn")
    assert ckpt.meta.preprocess == CAFFE_FCN and imported_path("fcn8s_from_caffe").is_file()
    wrapped = env / "model_best.pth.tar"
    torch.save({"epoch": 3, "iteration": 100, "arch": "FCN8s", "model_state_dict": ref.state_dict(),
                "best_mean_iu": 0.6}, wrapped)
    ckpt2 = import_checkpoint(wrapped, source="fcn-caffe-port", arch="tiny_fcn", name="fcn_wrapped")
    for k, v in ref.state_dict().items():
        assert torch.equal(ckpt2.state_dict[k], v)
    ckpt3 = import_checkpoint(plain, source="fcn-caffe-port", arch="tiny_data_init", save=False)
    assert set(ckpt3.state_dict) == set(ref.state_dict())  # checked on a real build when meta cannot build it
    with pytest.raises(UsageError, match="fits the Caffe FCN networks \\(.*tiny_fcn"):
        import_checkpoint(plain, source="fcn-caffe-port", arch="tiny_tv")


def test_import_rejects_bad_inputs(env):
    path, _ = tv_file(env)
    with pytest.raises(UsageError, match="unknown model 'nope'"):
        import_checkpoint(path, source="torchvision", arch="nope")
    with pytest.raises(UsageError, match="unknown source"):
        import_checkpoint(path, source="caffe", arch="tiny_tv")
    with pytest.raises(UsageError, match="cannot name"):
        import_checkpoint(path, source="torchvision", arch="tiny_tv", name="../evil")
    (env / "bundled").mkdir()
    ckpt = import_checkpoint(path, source="torchvision", arch="tiny_tv", save=False)
    save_checkpoint(env / "bundled" / "taken.pt", ckpt)
    with pytest.raises(UsageError, match="bundled"):
        import_checkpoint(path, source="torchvision", arch="tiny_tv", name="taken")
    notes = env / "notes.pth"
    torch.save({"lr": 0.1, "layers": [1, 2]}, notes)
    with pytest.raises(WeightsError, match="entry 'lr' is a float, not a tensor"):
        import_checkpoint(notes, source="torchvision", arch="tiny_tv")
    with pytest.raises(ArchNotAvailableError):
        import_checkpoint(path, source="torchvision", arch="tiny_later")
    assert not imported_path("tv").exists()


def test_read_class_names(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nbackground\n\nhair  # second\nskin\n")
    assert read_class_names(f) == ("background", "hair", "skin")
    f.write_text("a\nb\na\n")
    with pytest.raises(UsageError, match="repeats class names: a"):
        read_class_names(f)
    with pytest.raises(UsageError, match="cannot read"):
        read_class_names(tmp_path / "missing.txt")


def test_resolve_order_and_errors(env):
    path, _ = tv_file(env)
    ckpt = import_checkpoint(path, source="torchvision", arch="tiny_tv", name="dup")
    assert resolve("dup") == imported_path("dup")
    bundled = save_checkpoint(env / "bundled" / "dup.pt", ckpt)
    assert resolve("dup") == bundled  # bundled first
    assert resolve(str(bundled)) == bundled
    with pytest.raises(WeightsError, match="no such checkpoint file"):
        resolve(str(env / "nowhere.pt"))
    with pytest.raises(UsageError) as info:
        resolve("unknown_thing")
    msg = str(info.value)
    assert "bundled: dup" in msg and "cache: dup" in msg and "remote: tiny_tv_coco" in msg
    with pytest.raises(UsageError, match="trunk"):
        resolve("tiny_imagenet")
    with pytest.raises(WeightsError, match="weights fetch tiny_tv_coco"):
        resolve("tiny_tv_coco", download=False)


def test_remote_name_is_converted_on_demand(env):
    downloads = env / "cache" / "downloads"
    downloads.mkdir(parents=True)
    tv_file(downloads, name="tiny_tv_coco-00000000.pth")
    path = resolve("tiny_tv_coco", download=False)  # already downloaded: converted without the network
    assert path == imported_path("tiny_tv_coco")
    ckpt = load_checkpoint(path)
    assert ckpt.meta.metrics == {"coco": {"miou": 1.0, "reported_by": "nobody"}}
    assert ckpt.meta.provenance["url"] == "http://127.0.0.1:9/unused"
    inode = path.stat().st_ino
    assert convert_remote("tiny_tv_coco") == path and path.stat().st_ino == inode  # kept
    assert convert_remote("tiny_tv_coco", force=True) == path and path.stat().st_ino != inode  # rewritten
    with pytest.raises(UsageError, match="trunk"):
        convert_remote("tiny_imagenet")
    with pytest.raises(WeightsError, match="not downloaded"):
        trunk_path("tiny", download=False)


def test_list_weights_statuses(env):
    path, _ = tv_file(env)
    import_checkpoint(path, source="torchvision", arch="tiny_tv", name="mine")
    (env / "bundled").mkdir()
    (env / "bundled" / "broken.pt").write_bytes(b"not a checkpoint")
    dl = env / "cache" / "downloads"
    dl.mkdir()
    (dl / "tiny-00000000.pth.part").write_bytes(b"1234")
    rows = {(e.name, e.where): e for e in list_weights()}
    assert rows["broken", "bundled"].status.startswith("unreadable: ")
    mine = rows["mine", "cache"]
    assert (mine.status, mine.arch, mine.kind, mine.num_classes) == ("present", "tiny_tv", "base", 21)
    assert mine.size == imported_path("mine").stat().st_size
    assert rows["tiny_imagenet", "remote"].status == "partial" and rows["tiny_imagenet", "remote"].size == 4
    assert rows["tiny_tv_coco", "remote"].status == "not downloaded"


def test_verify_detects_tampering_and_missing(env):
    path, _ = tv_file(env)
    import_checkpoint(path, source="torchvision", arch="tiny_tv", name="good")
    import_checkpoint(path, source="torchvision", arch="tiny_tv", name="bad")
    bad = imported_path("bad")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: torch.load may still read it, the hash may not
    bad.write_bytes(bytes(data))
    results = {r.name: r for r in verify()}
    assert results["good"].ok and "sha256 ok" in results["good"].detail and "builds" in results["good"].detail
    assert not results["bad"].ok and "sha256" in results["bad"].detail
    [missing] = verify(["tiny_tv_coco"])
    assert not missing.ok and "weights fetch tiny_tv_coco" in missing.detail

    trunk = env / "cache" / "downloads" / "tiny-00000000.pth"
    trunk.parent.mkdir()
    torch.save(tiny_fcn().state_dict(), trunk)
    [r] = verify(["tiny_imagenet"])
    assert not r.ok and "sha256" in r.detail  # no manifest entry: the catalog prefix 00000000 is checked
    record_file(trunk)
    [r] = verify(["tiny_imagenet"])
    assert r.ok and r.detail == "sha256 ok; 5 tensors"


def test_verify_notes_unbuilt_arch(env):
    path, _ = tv_file(env)
    ckpt = import_checkpoint(path, source="torchvision", arch="tiny_tv", save=False)
    later = type(ckpt)(arch="tiny_later", arch_args={}, kind="base", state_dict=ckpt.state_dict, meta=ckpt.meta)
    f = save_checkpoint(env / "later.pt", later)
    [r] = verify([str(f)])
    assert r.ok and "not built" in r.detail and "no recorded sha256" in r.detail


@pytest.mark.slow
def test_torchvision_state_dict_imports_into_our_network(env, tv):
    """A torchvision DeepLabV3-MobileNetV3 state dict (random weights, no download) goes through the
    importer into our registry network and gives torchvision's output."""
    torch.manual_seed(0)
    ref = tv.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    ).eval()
    path = env / "deeplabv3_mobilenet_v3_large-tv.pth"
    torch.save(ref.state_dict(), path)
    try:
        ckpt = import_checkpoint(path, source="torchvision", arch="deeplabv3_mobilenet_v3_large", name="mnv3")
    except ArchNotAvailableError:
        pytest.skip("the deeplabv3_mobilenet_v3_large builder is not available yet")
    model = build_model(load_checkpoint(imported_path("mnv3")))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        ours, theirs = model(x), ref(x)["out"]
    assert ckpt.meta.preprocess.size == 520
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)


def espnet_file(tmp_path, *, num_classes=12, p=1, q=1, counters=False, name="espnet.pth"):
    """A random ESPNet in the released layout; files from PyTorch < 0.4.1 (as the released one) lack BatchNorm's
    `num_batches_tracked`."""
    torch.manual_seed(0)
    model = espnet(num_classes=num_classes, p=p, q=q)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = {k: v for k, v in model.state_dict().items() if counters or not k.endswith("num_batches_tracked")}
    path = tmp_path / name
    torch.save(state, path)
    return path, model.eval()


def test_import_espnet_drops_the_ignored_output(env):
    path, ref = espnet_file(env)
    classes = [f"c{i}" for i in range(11)]
    ckpt = import_checkpoint(path, source="espnet", classes=classes, name="street")
    assert ckpt.arch == "espnet" and ckpt.arch_args == {"p": 1, "q": 1, "decoder_channels": 12, "num_classes": 11}
    assert ckpt.meta.preprocess == ESPNET_CAMVID and ckpt.meta.classes == tuple(classes)
    assert ckpt.meta.palette == tuple(voc_palette(11))  # CamVid's colours go with CamVid's classes only
    prov = ckpt.meta.provenance
    assert prov["dropped_output_channels"] == [11]
    assert prov["batchnorm_counters_added"] == sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules()) == 13
    model = build_model(load_checkpoint(imported_path("street")))
    x = torch.randn(1, 3, 40, 48)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x)[:, :11], rtol=1e-5, atol=1e-5)


def test_import_espnet_defaults_to_camvid_and_checks_the_class_count(env):
    path, _ = espnet_file(env)
    ckpt = import_checkpoint(path, source="espnet", save=False)
    assert ckpt.meta.classes == CAMVID_CLASSES and ckpt.meta.palette == CAMVID_PALETTE
    counted, _ = espnet_file(env, num_classes=20, counters=True, name="city.pth")
    with pytest.raises(UsageError, match="predicts 19 classes, not the 11 of --from espnet; name them"):
        import_checkpoint(counted, source="espnet", save=False)
    with pytest.raises(UsageError, match="predicts 11 classes and 21 names were given"):
        import_checkpoint(path, source="espnet", classes=VOC_CLASSES, save=False)
    ckpt = import_checkpoint(counted, source="espnet", classes=[f"c{i}" for i in range(19)], save=False)
    assert "batchnorm_counters_added" not in ckpt.meta.provenance
    with pytest.raises(UsageError, match="fits the 'espnet' network, not 'tiny_tv'"):
        import_checkpoint(path, source="espnet", arch="tiny_tv", save=False)
    tv_path, _ = tv_file(env)
    with pytest.raises(WeightsError, match="has no 'classifier.weight': it is not an ESPNet file"):
        import_checkpoint(_without(tv_path, "classifier.weight"), source="espnet", save=False)
    with pytest.raises(UsageError, match="--from torchvision needs --arch NAME"):
        import_checkpoint(tv_path, source="torchvision", save=False)
    assert not imported_path("espnet").exists()


def _without(path, key):
    state = torch.load(path, weights_only=True)
    del state[key]
    torch.save(state, path)
    return path


def test_import_espnetv2_reads_its_widths(env):
    torch.manual_seed(0)
    ref = espnetv2(num_classes=21, s=0.5).eval()
    path = env / "espnetv2_s_0.5_pascal.pth"
    torch.save(ref.state_dict(), path)
    ckpt = import_checkpoint(path, source="espnetv2", save=False)
    assert ckpt.arch_args == {"s": 0.5, "decoder_width": 16, "num_classes": 21}
    assert ckpt.meta.classes == VOC_CLASSES and ckpt.meta.preprocess == ESPNETV2_VOC
    model = build_model(ckpt)
    x = torch.randn(1, 3, 48, 40)
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))
    torch.save(espnetv2(num_classes=3, s=0.5).state_dict(), path)
    with pytest.raises(UsageError, match="predicts 3 classes, not the 21"):
        import_checkpoint(path, source="espnetv2", save=False)
