"""The synthetic segmentation world: classes defined by shape only, every surface a crop of a real photograph,
written in the VOC layout so every loader reads it unchanged. Deterministic: image i depends on (seed, i) only.

shapes: the classes' geometry and its rasterising; appearance: the textured surfaces; rendering: one image from its
random stream; files: encoding and the VOC-layout writer; dataset: the world rendered on the fly.
"""

from __future__ import annotations

from refine_cli.data.synth.appearance import Texture, texture_pool
from refine_cli.data.synth.dataset import SynthDataset
from refine_cli.data.synth.files import FORMAT_VERSION, SynthSummary, check_config, encode, generate, split_names
from refine_cli.data.synth.rendering import Rendered, render
from refine_cli.data.synth.shapes import SYNTH_CLASSES

__all__ = [
    "FORMAT_VERSION",
    "SYNTH_CLASSES",
    "Rendered",
    "SynthDataset",
    "SynthSummary",
    "Texture",
    "check_config",
    "encode",
    "generate",
    "render",
    "split_names",
    "texture_pool",
]
