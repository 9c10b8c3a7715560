"""The spatial propagation kernels behind one function, `propagate`, and the gate normalisations."""

from refine_cli.ops.propagate import BACKENDS, DIRECTIONS, Direction, normalize_gates, propagate

__all__ = ["BACKENDS", "DIRECTIONS", "Direction", "normalize_gates", "propagate"]
