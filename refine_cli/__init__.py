"""refine-cli: sharper semantic segmentation masks with a learned Spatial Propagation Network.

    from refine_cli import Refiner
    result = Refiner().refine(image)        # image: (H, W, 3) uint8 RGB, a PIL image or a path
    result.labels                           # (H, W) refined label map
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Refiner", "__version__"]

if TYPE_CHECKING:
    from refine_cli.pipeline import Refiner


def __getattr__(name: str) -> Any:
    # `Refiner` (and with it torch) loads on first use, so the command's start stays light (see refine_cli.cli).
    if name == "Refiner":
        from refine_cli.pipeline import Refiner

        return Refiner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
