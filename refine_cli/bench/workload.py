"""What the benchmarks run on: folders of synthetic JPEGs of any size, and, for timing without trained weights,
registered networks with seeded random weights saved as ordinary checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from refine_cli import models, weights
from refine_cli.config import SynthConfig
from refine_cli.data.synth import SYNTH_CLASSES, check_config, encode, render


def write_synthetic_jpegs(
    folder: str | Path, *, n: int, size: int, seed: int = 0, progress: Callable[[int], None] | None = None
) -> list[Path]:
    """Render images 0..n-1 of the synthetic world of `seed` at `size` x `size` and write them as
    folder/synth_000000.jpg ... (each at the generator's own JPEG quality, so decoding costs what a real JPEG
    of that size costs). Returns the paths in index order; `progress(i)` is called after each image."""
    config = SynthConfig(n=n, seed=seed, height=size, width=size)
    check_config(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        jpg, _ = encode(render(i, config))
        path = folder / f"synth_{i:06d}.jpg"
        path.write_bytes(jpg)
        paths.append(path)
        if progress is not None:
            progress(i + 1)
    return paths


def random_checkpoint(
    arch: str, folder: str | Path, *, classes: Sequence[str] = SYNTH_CLASSES, seed: int = 0, **arch_args: Any
) -> Path:
    """A registered architecture with seeded random weights, saved as folder/<arch>.pt with the registry's
    preprocessing and, for a base network, `classes` (default: the synthetic world's 8). Time and memory of a
    network do not depend on its weights' values, with one exception: the universal refiner propagates only the
    classes the base network's argmax votes for, and an untrained base votes for more of them than a trained one,
    so a refiner timed behind a random base is timed on the heavy side."""
    spec = models.spec(arch)
    args = models.arch_args(arch, num_classes=len(classes), **arch_args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder(**args)
    meta = weights.CheckpointMeta(
        classes=tuple(classes) if spec.kind == "base" else (),
        preprocess=spec.preprocess,
        provenance={"source": "random initialisation (refine_cli.bench.workload)", "seed": seed},
    )
    ckpt = weights.checkpoint_from_model(model, arch=arch, arch_args=args, meta=meta)
    return weights.save_checkpoint(Path(folder) / f"{arch}.pt", ckpt)
