"""The cache of coarse class probabilities a base network computed once over a training set (as the SPN
refiner was trained: Liu et al. 2017). One `<name>.npz` per image, loaded at the image's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refine_cli.errors import DataError
from refine_cli.io import read_probs, write_probs


class ProbsCache:
    """A folder of `<name>.npz` probability maps (C, h, w) in the format of `refine_cli.io.write_probs`
    (float16, compressed), so maps saved while running a base network serve as a cache directly.

    (h, w) may be smaller than the image: a base net at output stride 8 can be stored at its own
    resolution and is upsampled bilinearly on load, as the base net itself upsamples its scores.
    Loaded maps are renormalised to sum to 1 at every pixel.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def path(self, name: str) -> Path:
        return self.root / f"{name}.npz"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.path(name).is_file()

    def load(self, name: str, *, size: tuple[int, int] | None = None, num_classes: int | None = None) -> torch.Tensor:
        """(C, H, W) float32 probabilities; resized to `size` = (H, W) when given."""
        path = self.path(name)
        if not path.is_file():
            raise DataError(f"no cached coarse probabilities for '{name}' ({path}); compute them with the base "
                            "network first, or train without a cache")
        return load_probs(path, size=size, num_classes=num_classes)

    def save(self, name: str, probs: torch.Tensor | np.ndarray) -> Path:
        """Write (C, h, w) probabilities atomically; returns the path."""
        array = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
        path = self.path(name)
        write_probs(path, array)
        return path


def load_probs(path: Path, *, size: tuple[int, int] | None = None, num_classes: int | None = None) -> torch.Tensor:
    """A `write_probs` file as (C, H, W) float32 probabilities: upsampled bilinearly to `size` = (H, W) when given
    and smaller or larger, renormalised to sum to 1 at every pixel. A class count other than `num_classes` is a
    `DataError` naming the file."""
    probs = torch.from_numpy(read_probs(path))
    if num_classes is not None and probs.shape[0] != num_classes:
        raise DataError(f"{path} holds {probs.shape[0]} classes but the dataset has {num_classes}; "
                        "the probabilities were made for another label set")
    if size is not None and tuple(probs.shape[1:]) != tuple(size):
        probs = F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return probs / probs.sum(0, keepdim=True).clamp_min(1e-6)
