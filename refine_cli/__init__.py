"""refine-cli: sharper semantic segmentation masks with a learned Spatial Propagation Network."""

__version__ = "0.1.0"
