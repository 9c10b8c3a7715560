"""Finding weights by name (bundled, cache, downloadable, or a path), listing what exists and verifying
files against their recorded sha256 and their network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from refine_cli.errors import RefineError, UsageError, WeightsError, WeightsNotFoundError
from refine_cli.weights.catalog import RemoteFile, find_remote, remote_by_file_name, remote_file, remote_files
from refine_cli.weights.fetch import Progress, fetch, part_path
from refine_cli.weights.format import (
    ArchNotAvailableError,
    build_model,
    load_checkpoint,
    read_torch_file,
    require_finite,
)
from refine_cli.weights.importers import convert_remote, extract_state_dict, import_checkpoint, imported_path
from refine_cli.weights.locations import (
    WEIGHTS,
    bundled_dir,
    checkpoint_names,
    checkpoints_dir,
    downloads_dir,
    file_sha256,
    recorded,
)

Where = Literal["bundled", "cache", "remote"]
_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt")


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or s.endswith(_PATH_SUFFIXES)


def available_names(*, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, list[str]]:
    """{"bundled": [...], "cache": [...], "remote": [...]}: every name `resolve` accepts."""
    return {
        "bundled": checkpoint_names(bundled_dir()),
        "cache": checkpoint_names(checkpoints_dir(cache_dir)),
        "remote": [f.name for f in remote_files() if f.kind == "base"],
    }


def resolve(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    base_url: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """The checkpoint file a name or path stands for. A name is looked up as a bundled checkpoint, then an
    imported one in the cache, then a downloadable one (fetched when `download`, and converted); anything
    with a path separator or a checkpoint suffix is a path. Nothing found: an error listing what exists."""
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(s):
        path = Path(s).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: no such checkpoint file; check the path, or run `refine-cli weights "
                                       "list`")
        return path
    for folder in (bundled_dir(), checkpoints_dir(cache_dir)):
        path = folder / f"{s}{WEIGHTS.suffix}"
        if path.is_file():
            return path
    rf = find_remote(s)
    if rf is not None and rf.kind == "trunk":
        raise UsageError(f"'{s}' is an ImageNet trunk for training initialisation, not a checkpoint; see trunk_path")
    if rf is not None:
        raw = downloads_dir(cache_dir) / rf.file_name
        if not raw.is_file():
            if not download:
                raise WeightsError(f"'{s}' is not downloaded yet; run `refine-cli weights fetch {s}`")
            fetch(s, cache_dir=cache_dir, base_url=base_url, progress=progress)
        return convert_remote(s, cache_dir=cache_dir)
    if Path(s).is_file():
        return Path(s)
    names = available_names(cache_dir=cache_dir)
    listing = "; ".join(f"{where}: {', '.join(n) if n else '(none)'}" for where, n in names.items())
    raise UsageError(f"no checkpoint called '{s}'. {listing}; or give the path of a .pt file")


def trunk_path(
    trunk: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    base_url: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """The raw ImageNet weights for a `ModelSpec.trunk` name ("vgg16", "resnet50", ...), fetched if needed."""
    rf = remote_file(trunk)
    if rf.kind != "trunk":
        raise UsageError(f"'{trunk}' is a segmentation checkpoint, not an ImageNet trunk")
    path = downloads_dir(cache_dir) / rf.file_name
    if path.is_file():
        return path
    if not download:
        raise WeightsError(f"the {rf.trunk} trunk is not downloaded yet; run `refine-cli weights fetch {rf.name}`")
    return fetch(rf.name, cache_dir=cache_dir, base_url=base_url, progress=progress)


# ---------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class WeightsEntry:
    """One row of `list_weights`. status: "present", "downloaded", "not downloaded", "partial" (a resumable
    .part), or "unreadable: <why>"."""

    name: str
    where: Where
    path: Path | None
    arch: str | None
    kind: str | None
    num_classes: int | None
    size: int | None
    status: str
    description: str = ""


def _local_entry(name: str, where: Where, path: Path) -> WeightsEntry:
    size = path.stat().st_size
    try:
        ckpt = load_checkpoint(path, mmap=True, check_values=False)  # a look at the metadata
    except WeightsError as exc:
        return WeightsEntry(name, where, path, None, None, None, size, f"unreadable: {exc}")
    desc = str(ckpt.meta.provenance.get("description", ""))
    return WeightsEntry(name, where, path, ckpt.arch, ckpt.kind, len(ckpt.meta.classes), size, "present", desc)


def remote_entry(rf: RemoteFile, *, cache_dir: str | os.PathLike[str] | None = None) -> WeightsEntry:
    """The download state of a catalog file: downloaded, partial (.part, resumable) or not downloaded."""
    dest = downloads_dir(cache_dir) / rf.file_name
    part = part_path(dest)
    if dest.is_file():
        status, path, size = "downloaded", dest, dest.stat().st_size
    elif part.is_file():
        status, path, size = "partial", part, part.stat().st_size
    else:
        status, path, size = "not downloaded", None, None
    n = len(rf.classes) if rf.classes else None
    return WeightsEntry(rf.name, "remote", path, rf.arch or rf.trunk, rf.kind, n, size, status, rf.description)


def list_weights(*, cache_dir: str | os.PathLike[str] | None = None) -> list[WeightsEntry]:
    """Bundled checkpoints, imported/converted ones in the cache, then the downloadable catalog."""
    entries = []
    for where, folder in (("bundled", bundled_dir()), ("cache", checkpoints_dir(cache_dir))):
        entries += [_local_entry(n, where, folder / f"{n}{WEIGHTS.suffix}") for n in checkpoint_names(folder)]
    entries += [remote_entry(rf, cache_dir=cache_dir) for rf in remote_files()]
    return entries


# ---------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyResult:
    """ok: every check passed; detail: what was checked, or why it failed; known: False when the name or path
    given names nothing at all (a usage error, not a damaged file)."""

    name: str
    path: Path | None
    ok: bool
    detail: str
    known: bool = True


def _check_hash(path: Path) -> str:
    """Compare with the manifest's full hash, else a catalog prefix; raises on a mismatch."""
    entry = recorded(path)
    rf = remote_by_file_name(path.name)
    if entry is None and rf is None:
        return "no recorded sha256"
    actual = file_sha256(path)
    expected = entry["sha256"] if entry is not None else rf.sha256
    if not actual.startswith(str(expected).lower()):
        raise WeightsError(
            f"sha256 {actual[:16]}... differs from the recorded {str(expected)[:16]}...: the file changed or is "
            "damaged; fetch or import it again"
        )
    return "sha256 ok" if entry is not None else "sha256 prefix ok (not recorded)"


def verify_file(path: Path, *, name: str | None = None, build: bool = True) -> VerifyResult:
    """Check one file: its sha256 against the manifest (or the catalog prefix), then that it loads and, for a
    checkpoint, that its network builds and takes the weights (`build`); a raw catalog download is checked
    by a dry-run conversion, a trunk by loading its tensors."""
    name = name or path.stem
    notes: list[str] = []
    try:
        if not path.is_file():
            raise WeightsError("file not found")
        notes.append(_check_hash(path))
        rf = remote_by_file_name(path.name)
        if rf is not None and rf.kind == "base" and rf.arch is not None and build:
            try:
                import_checkpoint(path, source="torchvision", arch=rf.arch, classes=rf.classes or None, save=False)
                notes.append(f"fits {rf.arch}")
            except ArchNotAvailableError as exc:
                notes.append(f"not built: {exc}")
        elif rf is not None:  # a trunk (or no build asked): its tensors load
            state = extract_state_dict(read_torch_file(path), path)
            require_finite(state, path)
            notes.append(f"{len(state)} tensors")
        else:
            ckpt = load_checkpoint(path)
            notes.append(f"loads ({ckpt.arch}, {len(ckpt.state_dict)} tensors)")
            if build:
                try:
                    build_model(ckpt)
                    notes.append("builds")
                except ArchNotAvailableError as exc:
                    notes.append(f"not built: {exc}")
    except RefineError as exc:
        return VerifyResult(name, path, False, str(exc))
    return VerifyResult(name, path, True, "; ".join(notes))


def _targets(
    names: Sequence[str], cache_dir: str | os.PathLike[str] | None
) -> list[tuple[str, Path | None, RefineError | None]]:
    """(name, path, error) for each requested name, or for every file present when none is given."""
    if not names:
        out: list[tuple[str, Path | None, RefineError | None]] = []
        for folder in (bundled_dir(), checkpoints_dir(cache_dir)):
            out += [(n, folder / f"{n}{WEIGHTS.suffix}", None) for n in checkpoint_names(folder)]
        dl = downloads_dir(cache_dir)
        out += [(rf.name, dl / rf.file_name, None) for rf in remote_files() if (dl / rf.file_name).is_file()]
        return out
    out = []
    for n in names:
        rf = find_remote(n)
        if rf is not None:
            raw = downloads_dir(cache_dir) / rf.file_name
            conv = imported_path(rf.name, cache_dir=cache_dir)
            found = [p for p in (raw, conv) if p.is_file()]
            missing = WeightsError(f"not downloaded; run `refine-cli weights fetch {rf.name}`")
            out += [(n, p, None) for p in found] or [(n, None, missing)]
            continue
        try:
            out.append((n, resolve(n, cache_dir=cache_dir, download=False), None))
        except RefineError as exc:
            out.append((n, None, exc))
    return out


def verify(
    names: Sequence[str] = (), *, cache_dir: str | os.PathLike[str] | None = None, build: bool = True
) -> list[VerifyResult]:
    """Verify the named checkpoints (names or paths), or every bundled, cached and downloaded file."""
    results = []
    for name, path, error in _targets(names, cache_dir):
        if error is not None or path is None:
            results.append(VerifyResult(name, path, False, str(error or "not found"),
                                        known=not isinstance(error, UsageError)))
        else:
            results.append(verify_file(path, name=name, build=build))
    return results
