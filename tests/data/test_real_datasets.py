"""The CamVid and DAVIS layouts, on the real folders beside the checkout and on tiny copies written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_cli.data import open_dataset
from refine_cli.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE
from refine_cli.data.davis import DAVIS_VAL_SEQUENCES
from refine_cli.errors import DataError


def test_camvid_reads_void_as_ignore(real_data: Path):
    train = open_dataset(real_data / "camvid", format="camvid", split="train")
    val = open_dataset(real_data / "camvid", format="camvid", split="val")
    assert (len(train), len(val)) == (367, 101)
    assert train.classes == CAMVID_CLASSES and train.palette == CAMVID_PALETTE
    raw = np.asarray(Image.open(train.pairs[0].masks[0]))
    label = train[0].label.numpy()
    assert label.shape == (360, 480) and (raw == 11).any()
    assert ((label == 255) == (raw == 11)).all() and (label[raw != 11] == raw[raw != 11]).all()
    assert set(np.unique(label)) <= set(range(11)) | {255}


def test_davis_splits_by_sequence(real_data: Path):
    train = open_dataset(real_data / "davis", format="davis", split="train")
    val = open_dataset(real_data / "davis", format="davis", split="val")
    assert set(val.sequences) == set(DAVIS_VAL_SEQUENCES)
    assert not set(train.sequences) & set(val.sequences)
    assert len(train) + len(val) == 236
    sample = val[0]
    assert sample.name.startswith(val.sequences[0] + "_")
    assert sample.label.shape == (480, 854) and set(np.unique(sample.label.numpy())) == {0, 1}
    one = open_dataset(real_data / "davis", format="davis", split="cows,goat")
    assert one.sequences == ("cows", "goat")


def test_davis_unknown_sequence_names_the_choices(tmp_path: Path):
    for seq in ("a", "b"):
        (tmp_path / "images" / seq).mkdir(parents=True)
        (tmp_path / "masks" / seq).mkdir(parents=True)
    with pytest.raises(DataError, match="nosuch.*a, b"):
        open_dataset(tmp_path, format="davis", split="nosuch")


def test_camvid_missing_split_says_what_is_there(tmp_path: Path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    with pytest.raises(DataError, match="no CamVid split 'test'.*splits there: train"):
        open_dataset(tmp_path, format="camvid", split="test")
