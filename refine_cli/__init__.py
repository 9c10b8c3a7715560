"""refine-cli: sharper semantic segmentation masks with a learned Spatial Propagation Network.

    from refine_cli import Refiner
    result = Refiner().refine(image)        # image: (H, W, 3) uint8 RGB, a PIL image or a path
    result.labels                           # (H, W) refined label map
"""

__version__ = "0.1.0"

from refine_cli.pipeline import Refiner  # noqa: E402  (the public entry point)

__all__ = ["Refiner", "__version__"]
