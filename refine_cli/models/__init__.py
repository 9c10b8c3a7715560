"""Networks only: base segmenters, the guidance net and the SPN refiner, built through one registry."""

from refine_cli.models.common import SegOutput
from refine_cli.models.registry import MODELS, ModelSpec, arch_args, build, names, spec, trainable_spec

__all__ = ["MODELS", "ModelSpec", "SegOutput", "arch_args", "build", "names", "spec", "trainable_spec"]
