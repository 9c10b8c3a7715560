"""Frozen dataclasses holding the only copy of every default; CLI options point at these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheConfig:
    """Where downloaded and imported checkpoints live. The environment variable moves the cache."""

    env_var: str = "REFINE_CLI_CACHE"
    default_dir: str = "~/.cache/refine-cli"
    chunk_bytes: int = 1 << 20
    timeout_s: float = 60.0
