"""The spatial propagation kernels behind two functions, `propagate` (one direction) and `propagate_directions` (the
four merged by max, gate normalisation fused in), the gate normalisations, and which backends can run."""

from refine_cli.ops.propagate import (
    BACKENDS,
    DIRECTIONS,
    GATE_NORMS,
    Backend,
    Direction,
    GateNorm,
    available_backends,
    normalize_gates,
    propagate,
    propagate_directions,
    resolve_backend,
    unavailable_reason,
)

__all__ = [
    "BACKENDS",
    "DIRECTIONS",
    "GATE_NORMS",
    "Backend",
    "Direction",
    "GateNorm",
    "available_backends",
    "normalize_gates",
    "propagate",
    "propagate_directions",
    "resolve_backend",
    "unavailable_reason",
]
