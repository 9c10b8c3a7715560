"""Where weights live on disk (bundled folder, cache, its downloads and checkpoints) and the small JSON
manifests that record each file's full sha256 so `verify` can check it later.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import refine_cli
from refine_cli.config import CacheConfig, WeightsConfig
from refine_cli.errors import WeightsError
from refine_cli.io import atomic_write

CACHE = CacheConfig()
WEIGHTS = WeightsConfig()
_HASH_CHUNK = 1 << 20


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache: `cache_dir` if given, else $REFINE_CLI_CACHE, else ~/.cache/refine-cli."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE.env_var) or CACHE.default_dir).expanduser()


def downloads_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Raw downloaded files, under their published names (`.part` while incomplete)."""
    return cache_root(cache_dir) / WEIGHTS.downloads_subdir


def checkpoints_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Imported and converted checkpoints, `<name>.pt`."""
    return cache_root(cache_dir) / WEIGHTS.checkpoints_subdir


def bundled_dir() -> Path:
    """The repository's `weights/` folder next to the package, or $REFINE_CLI_BUNDLED."""
    override = os.environ.get(WEIGHTS.bundled_env_var)
    if override:
        return Path(override).expanduser()
    return Path(refine_cli.__file__).resolve().parent.parent / "weights"


def checkpoint_names(folder: Path) -> list[str]:
    """Stems of the checkpoint files in `folder` (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob(f"*{WEIGHTS.suffix}") if p.is_file() and not p.name.startswith("."))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text written atomically and durably (see `refine_cli.io.atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable=True)


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """`{file name: {"sha256": ..., "size": ..., ...}}` recorded for `folder` (empty when there is none)."""
    path = folder / WEIGHTS.manifest_name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} cannot be read ({exc}); delete it and fetch or import the files again") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise WeightsError(f"{path} is not a refine-cli manifest; delete it and fetch or import the files again")
    return files


def record_file(path: Path, *, sha256: str | None = None, **extra: Any) -> dict[str, Any]:
    """Record `path`'s full sha256 and size in its folder's manifest (hashing the file unless given)."""
    entry = {"sha256": sha256 or file_sha256(path), "size": path.stat().st_size, "recorded": now_iso(), **extra}
    files = read_manifest(path.parent)
    files[path.name] = entry
    text = json.dumps({"files": dict(sorted(files.items()))}, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path.parent / WEIGHTS.manifest_name, text)
    return entry


def recorded(path: Path) -> dict[str, Any] | None:
    """The manifest entry of `path`, if its folder records one."""
    return read_manifest(path.parent).get(path.name)
