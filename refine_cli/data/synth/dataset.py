"""The synthetic world as a torch Dataset: rendered on the fly, no files, each sample equal to its written files."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from refine_cli.config import SynthConfig
from refine_cli.data.base import Sample
from refine_cli.data.synth.files import SAMPLE_NAME, check_config, encode, split_names
from refine_cli.data.synth.rendering import render
from refine_cli.data.synth.shapes import SYNTH_CLASSES
from refine_cli.errors import UsageError
from refine_cli.labels import voc_palette


class SynthDataset(Dataset[Sample]):
    """The same world rendered on the fly, no files: sample i equals the files `generate` writes for the
    same config (the JPEG round trip included)."""

    def __init__(self, config: SynthConfig = SynthConfig(), split: str = "train"):
        check_config(config)
        train, val = split_names(config)
        chosen = {"train": train, "val": val, "all": train + val}.get(split)
        if chosen is None:
            raise UsageError(f"unknown split '{split}'; choose one of: all, train, val")
        self.config = config
        self.indices = sorted(int(n[6:]) for n in chosen)
        self.classes = SYNTH_CLASSES
        self.palette = tuple(voc_palette()[: len(SYNTH_CLASSES)])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        index = self.indices[i]
        rendered = render(index, self.config)
        jpg, _ = encode(rendered)
        with Image.open(io.BytesIO(jpg)) as img:
            image = np.asarray(img.convert("RGB"))
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            label=torch.from_numpy(rendered.label.astype(np.int64)),
            name=SAMPLE_NAME.format(index),
        )
