"""Resumable, checksummed downloads with urllib: bytes stream into `<file>.part` (resumed with an HTTP Range
request), and only a file whose sha256 matches is renamed to its final name and recorded in the manifest.
No printing here: progress goes to a callback.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import refine_cli
from refine_cli.errors import ChecksumError, DownloadError, refused_for_good
from refine_cli.weights.catalog import remote_file
from refine_cli.weights.locations import CACHE, downloads_dir, record_file

Progress = Callable[[int, "int | None"], None]
"""progress(bytes_done, bytes_total_or_None), called as bytes arrive."""

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_MIN_PREFIX = 8


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download the catalog file `name` into `<cache>/downloads/` (a no-op when it is already there).

    base_url: replaces the catalog's host and folder (the file name is kept): mirrors, tests.
    """
    rf = remote_file(name)
    url = rf.url if base_url is None else base_url.rstrip("/") + "/" + rf.file_name
    dest = downloads_dir(cache_dir) / rf.file_name
    if dest.is_file():
        return dest
    return download(url, dest, sha256=rf.sha256, progress=progress)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    progress: Progress | None = None,
    chunk_bytes: int = CACHE.chunk_bytes,
    timeout_s: float = CACHE.timeout_s,
) -> Path:
    """Stream `url` to `dest`, resuming `dest.part` if a previous run left one; check `sha256` (full hash or
    a prefix of at least 8 hex digits) and only then rename. Records the full hash in the manifest."""
    expected = sha256.lower()
    if len(expected) < _MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", expected):
        raise ValueError(f"sha256 must be at least {_MIN_PREFIX} hex digits, got {sha256!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    # Two rounds at most: a stale or unusable .part is discarded once and the download starts from zero.
    for _ in range(2):
        actual = _stream(url, part, progress=progress, chunk_bytes=chunk_bytes, timeout_s=timeout_s)
        if actual is not None:
            break
        part.unlink(missing_ok=True)
    else:
        raise DownloadError(f"the server for {url} keeps refusing the download range; delete {part} and run again")
    if not actual.startswith(expected):
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name}: sha256 {actual} does not match the expected {expected}; the download was deleted. "
            "Run the command again; if it fails again the file on the server changed"
        )
    os.replace(part, dest)
    record_file(dest, sha256=actual, url=url)
    return dest


def _hash_file(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h


def _stream(url: str, part: Path, *, progress: Progress | None, chunk_bytes: int, timeout_s: float) -> str | None:
    """Append the rest of `url` to `part`; the sha256 of the whole part, or None when it must restart."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"refine-cli/{refine_cli.__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    host = urlsplit(url).netloc or url
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Range not satisfiable: the part may already hold the whole file (a run killed before the rename).
            return _hash_file(part).hexdigest()
        raise DownloadError(
            f"{host} answered HTTP {exc.code} ({exc.reason}) for {url}; check the name or upgrade refine-cli"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {host} ({reason}); check the network and run the same command again"
        ) from None

    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != offset:
                return None  # a range we did not ask for: start over without one
            total = int(m.group(3)) if m.group(3) != "*" else None
            h = _hash_file(part)
            mode = "ab"
        else:  # 200: the server ignored the Range header and sends everything again
            offset, total, mode = 0, length, "wb"
            h = hashlib.sha256()
        done = offset
        if progress:
            progress(done, total)
        with open(part, mode) as f:
            try:
                while chunk := resp.read(chunk_bytes):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            except (OSError, http.client.HTTPException) as exc:
                refused = refused_for_good(exc)
                if refused is not None:  # the disk, not the network
                    raise DownloadError(
                        f"{part.parent} takes no more of {url.rsplit('/', 1)[-1]} ({refused.strerror}); make room "
                        f"and run the same command again to resume"
                    ) from None
                f.flush()
                raise DownloadError(_broke_off(url, done, total, exc)) from None
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done < total:
        raise DownloadError(_broke_off(url, done, total, "connection closed"))
    return h.hexdigest()


def _broke_off(url: str, done: int, total: int | None, why: object) -> str:
    of = f" of {total}" if total is not None else ""
    return (
        f"the download of {url.rsplit('/', 1)[-1]} broke off after {done}{of} bytes ({why or 'connection lost'}); "
        "run the same command again to resume"
    )
