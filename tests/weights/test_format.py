"""The checkpoint format: round trips, half-precision storage, atomic writes, every load failure as one
clear WeightsError, and building a model through the registry with strict key/shape checks."""

from __future__ import annotations

import argparse
import math
import pickle
import re
import warnings
from types import MappingProxyType

import pytest
import torch
from torch import nn

from refine_cli.errors import WeightsError
from refine_cli.models import registry
from refine_cli.transforms import CAFFE_FCN, IMAGENET, Preprocess
from refine_cli.weights import (
    FORMAT,
    ArchNotAvailableError,
    Checkpoint,
    CheckpointMeta,
    build_model,
    checkpoint_from_model,
    load_checkpoint,
    save_checkpoint,
)


class TinySeg(nn.Module):
    def __init__(self, *, num_classes: int = 21, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float -> (N, num_classes, H, W) logits."""
        return self.classifier(torch.relu(self.bn(self.conv(x))))


def tiny_seg(*, num_classes: int = 21, width: int = 4) -> nn.Module:
    return TinySeg(num_classes=num_classes, width=width)


def unavailable(**kwargs):
    raise NotImplementedError


@pytest.fixture
def tiny_registry(monkeypatch):
    """The real registry plus a tiny base net and a not-yet-built one."""
    models = {
        **registry.MODELS,
        "tiny_seg": registry.ModelSpec(tiny_seg, "base", IMAGENET, "tiny test net",
                                       defaults=MappingProxyType({"width": 4})),
        "tiny_unavailable": registry.ModelSpec(unavailable, "base", IMAGENET, "not built yet"),
    }
    monkeypatch.setattr(registry, "MODELS", MappingProxyType(models))


def make_ckpt(num_classes: int = 3, width: int = 4, seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    model = tiny_seg(num_classes=num_classes, width=width)
    model.bn.running_mean.uniform_(-1, 1)
    meta = CheckpointMeta(
        classes=tuple(f"c{i}" for i in range(num_classes)),
        preprocess=Preprocess(resize="short_side", size=64),
        provenance={"recipe": "unit test", "steps": 0, "created": "2024-01-01"},
        metrics={"synth-val": {"miou": 0.5}},
    )
    return checkpoint_from_model(model, arch="tiny_seg", arch_args={"num_classes": num_classes, "width": width},
                                 meta=meta, kind="base")


def test_round_trip_keeps_everything(tmp_path):
    ckpt = make_ckpt()
    path = save_checkpoint(tmp_path / "a" / "b" / "tiny.pt", ckpt)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["dtype"] == "float32"
    assert set(raw) == {"format", "version", "arch", "arch_args", "kind", "dtype", "state_dict", "meta"}
    back = load_checkpoint(path)
    assert back.arch == "tiny_seg" and back.kind == "base" and back.arch_args == {"num_classes": 3, "width": 4}
    assert back.meta == ckpt.meta
    assert back.meta.palette == ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # VOC colours by default
    assert back.meta.preprocess == Preprocess(resize="short_side", size=64)
    assert set(back.state_dict) == set(ckpt.state_dict)
    for k, v in ckpt.state_dict.items():
        assert torch.equal(back.state_dict[k], v), k
    assert not [p.name for p in path.parent.iterdir() if p.name != "tiny.pt"]  # no temp file left


def test_half_storage_is_smaller_and_loads_as_float32(tmp_path):
    ckpt = make_ckpt(num_classes=21, width=256)
    full = save_checkpoint(tmp_path / "full.pt", ckpt)
    half = save_checkpoint(tmp_path / "half.pt", ckpt, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert torch.load(half, weights_only=True)["dtype"] == "float16"
    back = load_checkpoint(half)
    w = ckpt.state_dict["conv.weight"]
    assert back.state_dict["conv.weight"].dtype == torch.float32
    assert torch.allclose(back.state_dict["conv.weight"], w, rtol=1e-3, atol=1e-4)
    assert not torch.equal(back.state_dict["conv.weight"], w)  # it really went through float16
    assert back.state_dict["bn.num_batches_tracked"].dtype == torch.int64


def test_save_failure_leaves_old_file_untouched(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "x.pt", make_ckpt(seed=1))
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, make_ckpt(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_meta_rejects_non_plain_values_and_bad_classes():
    with pytest.raises(ValueError, match="provenance.when"):
        CheckpointMeta(provenance={"when": object()})
    with pytest.raises(ValueError, match="repeat"):
        CheckpointMeta(classes=("a", "a"))
    with pytest.raises(ValueError, match="palette"):
        CheckpointMeta(classes=("a", "b"), palette=((0, 0, 0),))
    with pytest.raises(ValueError, match="kind"):
        Checkpoint(arch="tiny_seg", arch_args={}, kind="other", state_dict={}, meta=CheckpointMeta())


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"hello, not a tensor file", "not a PyTorch file"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        load_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file(tmp_path, legacy):
    path = tmp_path / "w.pt"
    torch.save(make_ckpt().to_dict(), path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_truncated_checkpoint_message_is_not_cut_mid_word(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save(make_ckpt().to_dict(), path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    def wordy_load(*args, **kwargs):  # torch's zip reader explains itself at this length
        raise RuntimeError("the reader " + "failed again " * 20 + "at the end. A second sentence.")

    monkeypatch.setattr(torch, "load", wordy_load)
    with pytest.raises(WeightsError) as info:
        load_checkpoint(path)
    reason = _quoted_reason(str(info.value))
    assert reason.endswith("again ...") and len(reason) <= 124, reason  # whole words, then "..."


def _quoted_reason(message: str) -> str:
    found = re.fullmatch(r".* is truncated or corrupt \((.*)\); download or copy it again", message)
    assert found, message
    return found.group(1)


def test_a_raw_pickle_is_refused_without_torch_warnings(tmp_path):
    path = tmp_path / "raw.pt"
    with open(path, "wb") as f:
        pickle.dump({"opts": argparse.Namespace(lr=0.1)}, f)  # not torch.save: a newer pickle protocol
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match="arbitrary Python objects"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []


def test_non_finite_weights_are_refused_when_loading_and_saving(tmp_path):
    ckpt = make_ckpt()
    d = ckpt.to_dict()
    d["state_dict"] = {**d["state_dict"], "conv.weight": torch.full_like(d["state_dict"]["conv.weight"], math.nan)}
    path = tmp_path / "nan.pt"
    torch.save(d, path)  # as a diverged run or a damaged copy could have written it
    with pytest.raises(WeightsError, match=r"nan\.pt is unusable: 1 of \d+ tensors hold NaN or infinite values, "
                                         r"first conv\.weight"):
        load_checkpoint(path)
    assert load_checkpoint(path, check_values=False).arch == "tiny_seg"  # a look at the metadata still works
    with pytest.raises(WeightsError, match="not writing"):
        save_checkpoint(tmp_path / "again.pt", Checkpoint.from_dict(d))
    huge = make_ckpt()
    huge.state_dict["conv.weight"][0] = 1e6  # beyond float16: infinite once stored in half precision
    with pytest.raises(WeightsError, match="first conv.weight"):
        save_checkpoint(tmp_path / "half.pt", huge, half=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"opts": argparse.Namespace(lr=0.1), "w": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match="arbitrary Python objects"):
        load_checkpoint(path)


def test_bare_state_dict_asks_for_import(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save(tiny_seg().state_dict(), path)
    with pytest.raises(WeightsError, match="weights import"):
        load_checkpoint(path)
    torch.save({"model_state_dict": tiny_seg().state_dict(), "epoch": 3}, path)
    with pytest.raises(WeightsError, match="weights import"):
        load_checkpoint(path)


def test_wrong_format_newer_version_and_damage(tmp_path):
    d = make_ckpt().to_dict()
    path = tmp_path / "w.pt"
    torch.save({**d, "format": "something-else"}, path)
    with pytest.raises(WeightsError, match="not a refine-cli checkpoint"):
        load_checkpoint(path)
    torch.save({**d, "version": 7}, path)
    with pytest.raises(WeightsError, match="newer refine-cli .*upgrade"):
        load_checkpoint(path)
    damaged = dict(d)
    del damaged["arch"]
    torch.save(damaged, path)
    with pytest.raises(WeightsError, match="damaged.*'arch'"):
        load_checkpoint(path)


def test_build_model_strict(tiny_registry, tmp_path):
    ckpt = make_ckpt(num_classes=3)
    model = build_model(load_checkpoint(save_checkpoint(tmp_path / "t.pt", ckpt)))
    assert not model.training
    x = torch.rand(1, 3, 16, 16)
    torch.manual_seed(0)
    ref = tiny_seg(num_classes=3, width=4)
    ref.load_state_dict(ckpt.state_dict)
    ref.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))


def test_build_model_names_mismatches(tiny_registry):
    ckpt = make_ckpt(num_classes=3)
    state = dict(ckpt.state_dict)
    state.pop("bn.weight")
    state["extra.weight"] = torch.zeros(1)
    state["classifier.weight"] = torch.zeros(5, 4, 1, 1)
    bad = Checkpoint(arch=ckpt.arch, arch_args=ckpt.arch_args, kind="base", state_dict=state, meta=ckpt.meta)
    with pytest.raises(WeightsError) as info:
        build_model(bad)
    msg = str(info.value)
    assert "missing keys: bn.weight" in msg and "unexpected keys: extra.weight" in msg
    assert "classifier.weight (file (5, 4, 1, 1) vs model (3, 4, 1, 1))" in msg


def test_build_model_wrapped_prefix_hint(tiny_registry):
    ckpt = make_ckpt()
    state = {f"module.{k}": v for k, v in ckpt.state_dict.items()}
    bad = Checkpoint(arch=ckpt.arch, arch_args=ckpt.arch_args, kind="base", state_dict=state, meta=ckpt.meta)
    with pytest.raises(WeightsError, match="wrapped model"):
        build_model(bad)


def test_build_model_unknown_or_unavailable_arch(tiny_registry):
    ckpt = make_ckpt()
    unknown = Checkpoint(arch="no_such_net", arch_args={}, kind="base", state_dict=ckpt.state_dict, meta=ckpt.meta)
    with pytest.raises(WeightsError, match="'no_such_net'.*upgrade refine-cli") as info:
        build_model(unknown)
    assert "tiny_seg" in str(info.value)
    later = Checkpoint(arch="tiny_unavailable", arch_args={}, kind="base", state_dict=ckpt.state_dict, meta=ckpt.meta)
    with pytest.raises(ArchNotAvailableError):
        build_model(later)
    bad_args = Checkpoint(arch="tiny_seg", arch_args={"depth": 3}, kind="base", state_dict=ckpt.state_dict,
                          meta=ckpt.meta)
    with pytest.raises(WeightsError, match="do not fit the 'tiny_seg' builder"):
        build_model(bad_args)


def test_checkpoint_from_model_unwraps_and_copies(tiny_registry):
    model = tiny_seg(num_classes=2)
    wrapped = nn.DataParallel(model)
    ckpt = checkpoint_from_model(wrapped, arch="tiny_seg", arch_args={"num_classes": 2, "width": 4},
                                 meta=CheckpointMeta(classes=("bg", "fg"), preprocess=CAFFE_FCN))
    assert ckpt.kind == "base"  # from the registry
    assert not any(k.startswith("module.") for k in ckpt.state_dict)
    with torch.no_grad():
        model.conv.weight.add_(1.0)
    assert not torch.equal(ckpt.state_dict["conv.weight"], model.conv.weight)  # a snapshot, not a view
    assert ckpt.meta.preprocess == CAFFE_FCN
