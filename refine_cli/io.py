"""Files in and out: listing inputs, reading images (EXIF orientation, every Pillow mode to RGB), reading
and writing label masks (palette, grey index, binary, VOC colour), overlays, probability maps, and the
atomic temp-file-and-rename that every writer goes through. Never touches models.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import secrets
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refine_cli.config import IOConfig
from refine_cli.errors import InputError, UsageError
from refine_cli.labels import IGNORE_INDEX, boundary_map, voc_palette

_IO = IOConfig()
IMAGE_SUFFIXES: tuple[str, ...] = _IO.image_suffixes
# Formats whose compression changes pixel values: a mask stored this way cannot hold exact labels.
LOSSY_MASK_FORMATS = frozenset({"JPEG", "MPO"})
_GLOB_MAGIC = frozenset("*?[")

Palette = Sequence[tuple[int, int, int]]


# --------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class InputItem:
    """One input file. `relative` is its path below the folder or glob root it came from (just the file
    name for a file named directly); outputs mirror it under an output folder."""

    path: Path
    relative: PurePosixPath


# Why `list_inputs` leaves an entry out on purpose (the keys of `InputListing.left_out`).
HIDDEN = "hidden"
LINKED_FOLDER = "symlinked folder"
NOT_AN_IMAGE = "not an image"
NOT_A_FILE = "not a regular file"


@dataclass(frozen=True)
class InputListing:
    """What `list_inputs` found.

    items: the image files, sorted by `relative`.
    unreadable: (folder, reason) for every folder that could not be listed (permission denied, ...): its images
        are unknown, so a run over this listing has failed for them.
    left_out: entries skipped on purpose, counted by reason: hidden files and folders (leading '.'), symlinked
        folders met inside a walked folder (not entered: a link back up the tree would loop; name one to walk it),
        files without an image suffix, special files, and whatever lies in an excluded folder (the outputs of a
        run), under the reason given for it. A skipped folder counts once, whatever it holds.
    """

    items: tuple[InputItem, ...]
    unreadable: tuple[tuple[Path, str], ...] = ()
    left_out: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        """Items plus unreadable folders: one outcome each in a run."""
        return len(self.items) + len(self.unreadable)

    def shard(self, rank: int, world: int) -> InputListing:
        """Every world-th item from the rank-th on; the unreadable folders and the left-out counts go to rank 0, so
        merged shards count each once."""
        if rank == 0:
            return InputListing(self.items[rank::world], self.unreadable, self.left_out)
        return InputListing(self.items[rank::world])


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def _glob_root(pattern: str) -> Path:
    """The longest leading part of a glob pattern without wildcards ('data/**/*.png' -> 'data')."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_MAGIC & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


class _Lister:
    """One listing pass over files, folders and glob patterns: collects image files with the root their output
    names mirror, the folders that could not be read, and what was left out on purpose."""

    def __init__(self, *, recursive: bool, suffixes: Sequence[str], exclude: Mapping[Path, str]) -> None:
        self.recursive, self.suffixes = recursive, suffixes
        self.exclude = {Path(folder).resolve(): reason for folder, reason in exclude.items()}
        self.found: list[InputItem] = []
        self.unreadable: list[tuple[Path, str]] = []
        self.left_out: Counter[str] = Counter()

    def excluded(self, path: Path) -> str | None:
        """The reason `path` lies in an excluded folder (or is one), else None."""
        if not self.exclude:
            return None
        resolved = path.resolve()
        for folder, reason in self.exclude.items():
            if resolved == folder or folder in resolved.parents:
                return reason
        return None

    def scan(self, folder: Path) -> list[os.DirEntry[str]] | None:
        """The entries of `folder`, sorted by name; None (and the folder recorded as unreadable) on an error."""
        try:
            with os.scandir(folder) as entries:
                return sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            self.unreadable.append((folder, _os_reason(exc)))
            return None

    def file(self, path: Path, root: Path, *, is_file: bool) -> None:
        """Keep an image file met in a folder or by a glob; count anything else. (Its folder has been checked
        against `exclude` on the way in, so the file is not: no `resolve` per file.)"""
        if path.suffix.lower() not in self.suffixes:
            self.left_out[NOT_AN_IMAGE] += 1
        elif not is_file and (path.exists() or not path.is_symlink()):
            self.left_out[NOT_A_FILE] += 1  # a FIFO or device named like an image; a broken link fails by name later
        else:
            self.found.append(InputItem(path, PurePosixPath(*path.relative_to(root).parts)))

    def entry(self, entry: os.DirEntry[str], root: Path, *, files: bool = True, hidden: bool = False) -> Path | None:
        """Handle one folder entry: keep or count a file (when `files`), count a folder left out, or return a
        folder to go into. `hidden`: a leading '.' was asked for (a glob part starting with '.')."""
        path = Path(entry.path)
        if entry.name.startswith(".") and not hidden:
            self.left_out[HIDDEN] += 1
            return None
        try:
            is_dir, is_link, is_file = entry.is_dir(), entry.is_symlink(), entry.is_file()
        except OSError as exc:
            self.unreadable.append((path, _os_reason(exc)))
            return None
        if not is_dir:
            if files:
                self.file(path, root, is_file=is_file)
            return None
        if is_link:
            self.left_out[LINKED_FOLDER] += 1
        elif (why := self.excluded(path)) is not None:
            self.left_out[why] += 1
        else:
            return path
        return None

    def walk(self, folder: Path, root: Path) -> None:
        """Every image below `folder` (just in it without `recursive`), output names relative to `root`."""
        if (why := self.excluded(folder)) is not None:
            self.left_out[why] += 1
            return
        stack = [folder]
        while stack:
            below = [sub for e in self.scan(stack.pop()) or [] if (sub := self.entry(e, root)) is not None]
            if self.recursive:
                stack.extend(reversed(below))

    def glob(self, folder: Path, parts: Sequence[str], root: Path) -> None:
        """Match the pattern `parts` below `folder` as `glob.glob(recursive=True)` does ('**' is any number of
        folders; a wildcard does not match a leading '.'), walking a matched folder like a named one."""
        if (why := self.excluded(folder)) is not None:
            self.left_out[why] += 1
            return
        part, rest = parts[0], parts[1:]
        if part == "**":
            if not rest:
                self.walk(folder, root)
                return
            self.glob(folder, rest, root)
            for entry in self.scan(folder) or []:
                if (sub := self.entry(entry, root, files=False)) is not None:
                    self.glob(sub, parts, root)
            return
        if not _GLOB_MAGIC & set(part):
            target = folder / part
            if target.is_dir() and rest:
                self.glob(target, rest, root)
            elif target.is_dir():
                self.walk(target, root)
            elif not rest and (target.exists() or target.is_symlink()):
                if (why := self.excluded(target)) is not None:
                    self.left_out[why] += 1
                else:
                    self.file(target, root, is_file=target.is_file())
            return
        hidden = part.startswith(".")
        for entry in self.scan(folder) or []:
            if entry.name.startswith(".") and not hidden:
                continue  # as glob: not a match, so not counted either
            if not fnmatch.fnmatchcase(entry.name, part):
                continue
            sub = self.entry(entry, root, files=not rest, hidden=hidden)  # a file matched by the last part is kept
            if sub is not None and rest:
                self.glob(sub, rest, root)
            elif sub is not None:
                self.walk(sub, root)

    def summary(self) -> str:
        """'; left out: hidden: 2, symlinked folder: 1' for the messages of empty inputs ('' when nothing was)."""
        if not self.left_out:
            return ""
        return "; left out: " + ", ".join(f"{why}: {n}" for why, n in sorted(self.left_out.items()))


def list_inputs(
    inputs: Sequence[str | Path],
    *,
    recursive: bool = True,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    exclude: Mapping[str | Path, str] | None = None,
) -> InputListing:
    """Expand files, folders and glob patterns into a sorted, de-duplicated listing of image files.

    A file named directly is taken whatever its suffix (reading it reports a bad one). Folders are walked
    (recursively unless `recursive=False`) and globs expanded (`**` allowed), keeping files whose suffix is
    in `suffixes` (any case); a folder matched by a glob is walked like a named folder. `exclude` maps folders to
    the reason nothing in them is an input (a run's output folders): files, folders and matches inside one are
    left out. What is left out on purpose is counted by reason, and folders that cannot be read are listed with
    why (see `InputListing`); neither is an error here. The items are sorted by `relative`, then path; a file
    reached twice is kept once. Raises `UsageError` for an input that does not exist, a folder or glob that yields
    no image and no unreadable folder, or two different files that would mirror to the same output name.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    lister = _Lister(recursive=recursive, suffixes=suffixes, exclude={Path(k): v for k, v in (exclude or {}).items()})
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        before = (len(lister.found), len(lister.unreadable))
        if path.is_file():
            if (why := lister.excluded(path)) is not None:
                lister.left_out[why] += 1
            else:
                lister.found.append(InputItem(path, PurePosixPath(path.name)))
        elif path.is_dir():
            lister.walk(path, path)
            if (len(lister.found), len(lister.unreadable)) == before:
                raise UsageError(f"folder '{path}' holds no images (looked for {', '.join(suffixes)}"
                                 f"{lister.summary()})")
        elif _GLOB_MAGIC & set(text):
            root = _glob_root(text)
            lister.glob(root, Path(text).parts[len(root.parts):], root)
            if (len(lister.found), len(lister.unreadable)) == before:
                raise UsageError(f"no images match '{text}' (looked for {', '.join(suffixes)}{lister.summary()})")
        elif path.exists():  # a pipe, socket or device: reading one may never end
            raise UsageError(f"input '{text}' is not a regular file (a pipe, socket or device); give an image file, "
                             "a folder or a glob pattern")
        else:
            raise UsageError(f"input '{text}' does not exist; give an image file, a folder or a glob pattern")

    if not lister.found and not lister.unreadable:
        raise UsageError(f"no images to read{lister.summary()}")
    unique: dict[Path, InputItem] = {}
    for item in lister.found:
        unique.setdefault(item.path.resolve(), item)
    result = sorted(unique.values(), key=lambda it: (str(it.relative), str(it.path)))
    # Outputs replace the suffix: 'a.jpg' and 'a.png', or 'x.jpg' from two folders, would overwrite each other.
    seen: dict[PurePosixPath, InputItem] = {}
    for item in result:
        stem = item.relative.with_suffix("")
        if stem in seen:
            raise UsageError(
                f"'{seen[stem].path}' and '{item.path}' would write the same output '{stem}'; rename one, or run "
                "them into separate output folders"
            )
        seen[stem] = item
    unreadable = tuple(dict.fromkeys(lister.unreadable))
    return InputListing(tuple(result), unreadable, dict(sorted(lister.left_out.items())))


def safe_output_path(out_dir: Path, relative: PurePosixPath, suffix: str) -> Path:
    """`out_dir / relative` with the last suffix replaced by `suffix` ('.png', or '_overlay.jpg' to add to
    the stem). Raises `UsageError` when the result would leave `out_dir`: an absolute `relative`, a '..'
    part, or a folder on the way that is a symlink pointing outside."""
    if "/" in suffix or "\\" in suffix:
        raise UsageError(f"output suffix '{suffix}' must not contain a path separator")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.name in ("", "."):
        raise UsageError(f"output name '{relative}' must be a relative path without '..'")
    target = Path(out_dir).joinpath(*rel.parent.parts, rel.stem + suffix)
    root = Path(out_dir).resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise UsageError(f"output '{target}' resolves to '{resolved}', outside the output folder '{out_dir}'")
    return target


# --------------------------------------------------------------------------------------------- atomic writes

_TEMP_TOKEN_BYTES = 6
NAME_MAX = 255  # bytes in one file name on ext4, XFS, Btrfs and APFS (NTFS counts 255 UTF-16 units)
# The name `atomic_path` gives its temporary files: '.<stem>.<12 hex digits>.part<suffix>'.
_TEMP_NAME = re.compile(rf"\..*\.[0-9a-f]{{{2 * _TEMP_TOKEN_BYTES}}}\.part(\.[^.]*)?")


def temp_name(name: str) -> str:
    """A new temporary name for a file called `name`: '.<stem>.<12 hex digits>.part<suffix>', the stem shortened
    (whole characters) where the name would pass NAME_MAX bytes: a file whose own name fits must not fail for the
    length of its temporary's."""
    stem, suffix = os.path.splitext(name)
    tail = f".{secrets.token_hex(_TEMP_TOKEN_BYTES)}.part{suffix}"
    room = NAME_MAX - len(os.fsencode("." + tail))
    while stem and len(os.fsencode(stem)) > room:  # whole characters off the end: the name stays valid UTF-8
        stem = stem[:-1]
    return f".{stem}{tail}"


def is_temp_name(name: str) -> bool:
    """Whether a file name is one `atomic_path` gives its temporary files (a killed writer leaves such files)."""
    return _TEMP_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a not-yet-existing temporary path beside `path` (parent folders created); when the block ends
    without an exception the temporary file replaces `path` in one `os.replace`, otherwise it is removed
    and `path` is left as it was. The temporary name is hidden (leading '.'), keeps `path`'s suffix and is
    unique per call. A killed process can leave such a temporary behind, never a half-written `path`.
    Atomic against a crashing process, not against power loss (no fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer did not create '{tmp}'")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, writer: Callable[[BinaryIO], None], *, durable: bool = False) -> None:
    """Call `writer` with a binary file open for writing, then move the result over `path` atomically
    (see `atomic_path`). durable: also fsync the file before the rename, so a power cut cannot leave an
    empty `path` either (checkpoints and manifests; not worth it for thousands of masks)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        writer(handle)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def os_reason(exc: OSError) -> str:
    """Why a write failed, in words (errno names are for programmers)."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied or a read-only file system"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a part of the path is a file, not a folder"
    return exc.strerror or type(exc).__name__


def _write_test(folder: Path) -> str | None:
    """Create `folder` (and its parents) if needed, then write and delete a small file in it; why that failed, or
    None."""
    probe = folder / f".write-test.{secrets.token_hex(_TEMP_TOKEN_BYTES)}.part"  # a temp name: stale ones get removed
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb") as handle:
            handle.write(b"refine-cli write test\n")
        probe.unlink()
    except OSError as exc:
        return os_reason(exc)
    return None


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """`folder`, created if needed, once a file was written there and deleted; a folder that cannot take files
    (read-only, under a file, no permission) is a UsageError naming `what`, found before any work starts."""
    folder = Path(folder)
    problem = _write_test(folder)
    if problem:
        raise UsageError(f"cannot write into {what} {folder}: {problem}; choose a folder you can write to")
    return folder


def check_writable_file(path: str | Path, what: str) -> Path:
    """`path`, once a file was written and deleted beside it (its folder created if needed), so `atomic_write` can
    create or replace it later; a folder or an unwritable place is a UsageError naming `what`."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name, e.g. {path / 'summary.json'}")
    problem = _write_test(path.parent)
    if problem:
        raise UsageError(f"cannot write {what} {path}: {problem}; choose another path")
    return path


# --------------------------------------------------------------------------------------------- reading


def _reason(exc: BaseException) -> str:
    """One short line from a decoder exception (Pillow's messages can span lines or repeat the path)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read (unknown format or corrupt header)"
    if "truncated" in text.lower():
        return text  # Pillow's "image file is truncated (N bytes not processed)"
    if isinstance(exc, EOFError):
        return f"file is truncated ({text})" if text else "file is truncated"
    return text or type(exc).__name__


# What Pillow raises for broken files: decoders raise OSError/SyntaxError/ValueError/EOFError, plugins and
# the EXIF parser may raise IndexError/KeyError/struct.error on garbage fields, the bomb guard its own error.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, Image.DecompressionBombError,
)


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """Turn a decoder failure into one `InputError` line that names the file."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit has been checked; Pillow's softer warning threshold (89.5 MP) is below it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"cannot read {what} '{path}': file not found") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {what} '{path}': it is a folder") from None
    except PermissionError:
        raise InputError(f"cannot read {what} '{path}': permission denied") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"cannot read {what} '{path}': {_reason(exc)}") from None


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The size the networks run at: the image's own, or scaled down so its long side is `max_side`."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(2, round(height * s)), max(2, round(width * s))


_EXIF_ORIENTATION = 0x0112
# Modes `Image.reduce` cannot average (palette indices, bits, 16-bit) and what they are reduced in instead.
_REDUCE_AS = {"1": "L", "P": "RGB", "PA": "RGBA", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}


def _reducible(img: Image.Image) -> Image.Image:
    """`img` in a mode whose pixels `Image.reduce` can average, transparency kept as alpha."""
    if "transparency" in img.info and img.mode in ("L", "RGB", "P"):
        return img.convert("RGBA")  # a transparent colour key would not survive averaging
    return img.convert(_REDUCE_AS[img.mode]) if img.mode in _REDUCE_AS else img


@contextlib.contextmanager
def _opened(
    path: Path, what: str, max_pixels: int, *, fit: int | None = None
) -> Iterator[tuple[Image.Image, str | None, tuple[int, int]]]:
    """Open (closing the file afterwards), check the header's size against `max_pixels`, decode fully (so
    truncation shows now) and apply the EXIF orientation; also give the file's format (a transposed copy
    no longer knows it) and the image's full (height, width) as displayed. Use inside `_decoding`.

    fit: decode an image whose long side exceeds it scaled down, to at least its `working_size` and less than
    twice it: JPEGs through the decoder's DCT scaling (`draft`: the full-size pixels never exist), other formats
    decoded and then reduced by an integer factor (box filter) before any other copy is made."""
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"cannot read {what} '{path}': file is empty")
    with Image.open(path) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise InputError(
                f"cannot read {what} '{path}': {width}x{height} = {width * height / 1e6:.0f} MP is over the limit "
                f"of {max_pixels / 1e6:.0f} MP (a guard against decompression bombs); if the file is trusted, "
                "raise the limit (refine-cli --max-megapixels, or max_pixels= in Python)"
            )
        turned = img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
        full = (width, height) if turned else (height, width)
        target = working_size(height, width, fit)  # stored orientation: the same scale either way
        if target != (height, width):
            img.draft(None, (target[1], target[0]))  # JPEG only (a no-op elsewhere); never below the target
        img.load()  # full decode now: a truncated file fails here rather than being padded with grey
        decoded, file_format = img, img.format
        factor = min(decoded.height // target[0], decoded.width // target[1])
        if factor >= 2:
            decoded = _reducible(decoded).reduce(factor)
        yield ImageOps.exif_transpose(decoded), file_format, full, turned


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 with rounding (65535 -> 255, 257 -> 1), not by clipping or dropping the low byte."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _pil_to_rgb(img: Image.Image, what: str, background: tuple[int, int, int]) -> np.ndarray:
    """The one rule from a decoded picture to what the networks see (see `read_image`)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"cannot read {what}: 32-bit integer pixels outside 0..65535; convert it to 8 or 16 bit")
        grey = _scale_16bit(values)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "F":
        values = np.asarray(img)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InputError(f"cannot read {what}: float pixels must lie in 0..1; convert it to 8 bit")
        grey = np.round(values * 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(base, rgba)
    try:
        rgb = img.convert("RGB")
    except ValueError:
        raise InputError(f"cannot read {what}: colour mode {mode} cannot be converted to RGB") from None
    return np.array(rgb, dtype=np.uint8)


# The channel counts `image_to_rgb` takes in an (H, W, C) array: grey, grey + alpha, RGB, RGBA.
_ARRAY_CHANNELS = (1, 2, 3, 4)


def image_to_rgb(
    image: Image.Image | np.ndarray, *, what: str = "the image", background: tuple[int, int, int] = _IO.alpha_background
) -> np.ndarray:
    """A PIL image or an array, as `read_image` gives a file: uint8 RGB (H, W, 3). One rule for all three, so the
    same picture refines the same from a file, a PIL image or an array.

    Arrays are (H, W) grey, (H, W, 1), (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA, numpy order
    (channels last); pixels uint8 (0..255), uint16 (0..65535, scaled with rounding) or float (0..1). Alpha is
    composited over `background` as for files. Anything else is an `InputError` saying what was expected."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, what, background)
    arr = np.asarray(image)
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape}); an image needs at least one pixel")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in _ARRAY_CHANNELS:
        hint = (" (channels first? numpy order is (H, W, C): use np.moveaxis(a, 0, -1) or tensor.permute(1, 2, 0))"
                if arr.ndim == 3 and arr.shape[0] in _ARRAY_CHANNELS else "")
        raise InputError(f"{what} has shape {arr.shape}; expected (H, W), (H, W, 3) RGB or (H, W, 4) RGBA{hint}")
    if arr.dtype == np.uint16:
        arr = _scale_16bit(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise InputError(f"{what} holds float pixels outside 0..1 (or NaN); scale them to 0..1 or pass uint8")
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"{what} holds {arr.dtype} pixels; pass uint8 (0..255), uint16 (0..65535) or float (0..1)")
    picture = Image.fromarray(np.ascontiguousarray(arr if arr.shape[2] > 1 else arr[..., 0]))  # L, LA, RGB, RGBA
    return _pil_to_rgb(picture, what, background)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> (height, width, 3): bilinear, averaging over the whole footprint when shrinking
    (Pillow's resampling), so a large image scaled down does not alias."""
    if rgb.shape[:2] == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map (H, W) -> (height, width), each output pixel taking the label under its centre (nearest)."""
    height, width = labels.shape
    if (height, width) == tuple(size):
        return labels
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return labels[rows[:, None], cols[None, :]]


class ScaledImage(NamedTuple):
    """An image decoded at the size the networks run at, its full (height, width) as displayed, and whether its EXIF
    orientation turned it a quarter (displayed with its stored width and height swapped)."""

    rgb: np.ndarray
    full_size: tuple[int, int]
    turned: bool = False


def turned_hint(mask_shape: tuple[int, ...], image: ScaledImage) -> str:
    """The end of a mask-size error: where the mask has the stored size of an image its EXIF orientation turns a
    quarter, say so (other tools often read the stored pixels and ignore the orientation)."""
    height, width = image.full_size
    if image.turned and tuple(mask_shape) == (width, height):
        return ("; the image's EXIF orientation turns it a quarter, and the mask has its stored, unturned size: turn "
                "the mask as the image is displayed")
    return ""


def read_image(
    path: str | Path,
    *,
    max_pixels: int = _IO.max_image_pixels,
    background: tuple[int, int, int] = _IO.alpha_background,
) -> np.ndarray:
    """Read an image as uint8 RGB, shape (H, W, 3), C-contiguous, as a viewer would show it.

    - EXIF orientation is applied (a portrait photo stored landscape comes back portrait).
    - Greyscale, 1-bit, palette, CMYK, YCbCr are converted to RGB; transparency (RGBA, LA, palette or grey
      with a transparent colour) is composited over `background` (white by default), never dropped, since
      the colour under a transparent pixel is often arbitrary.
    - 16-bit greyscale (I;16, I) is scaled to 8 bit with rounding (v * 255 / 65535); 16-bit colour PNGs
      come through Pillow's decoder, which keeps the high byte. Float ('F') images must lie in 0..1.
    - Multi-frame files (GIF, TIFF) give their first frame.
    Arrays and PIL images go through the same rule (`image_to_rgb`).
    Raises `InputError` naming the file for a missing, empty, truncated, corrupt or non-image file, and
    for one over `max_pixels` (decompression-bomb guard, see `IOConfig.max_image_pixels`).
    """
    return read_image_scaled(path, None, max_pixels=max_pixels, background=background).rgb


def read_image_scaled(
    path: str | Path,
    max_side: int | None,
    *,
    max_pixels: int = _IO.max_image_pixels,
    background: tuple[int, int, int] = _IO.alpha_background,
) -> ScaledImage:
    """`read_image`, but an image whose long side exceeds `max_side` comes back at its `working_size`, decoded
    scaled down (see `_opened`: a JPEG's full-size pixels never exist, other formats hold theirs only in the
    file's own pixel format), with its full size beside it."""
    path = Path(path)
    with _decoding(path, "image"), _opened(path, "image", max_pixels, fit=max_side) as (img, _, full, turned):
        rgb = _pil_to_rgb(img, f"image '{path}'", background)
    return ScaledImage(resize_rgb(rgb, working_size(*full, max_side)), full, turned)


def mask_palette_from_file(path: str | Path) -> list[tuple[int, int, int]] | None:
    """The colour palette of an indexed ('P') mask file, 256 entries; None when the file has no palette.
    Use it to write refined masks in the colours of the user's own masks."""
    path = Path(path)
    with _decoding(path, "mask"):
        with Image.open(path) as img:
            if img.mode not in ("P", "PA"):
                return None
            flat = img.getpalette("RGB") or []
    flat = list(flat) + [0] * (768 - len(flat))
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, 768, 3)]


def _colours_to_labels(rgb: np.ndarray, palette: Palette, what: str) -> np.ndarray:
    """Map each pixel's colour to the index of that colour in `palette` (first match wins), a band of rows at a
    time so no full-size 64-bit copy exists."""
    keys: dict[int, int] = {}
    for index, (r, g, b) in enumerate(palette):
        keys.setdefault((int(r) << 16) | (int(g) << 8) | int(b), index)
    known = np.array(sorted(keys), dtype=np.uint32)
    index_of = np.array([keys[int(k)] for k in known], dtype=np.uint16 if len(palette) > 256 else np.uint8)
    labels = np.empty(rgb.shape[:2], dtype=index_of.dtype)
    band = max(1, (1 << 22) // max(1, rgb.shape[1]))
    for top in range(0, rgb.shape[0], band):
        part = rgb[top : top + band].astype(np.uint32)
        packed = (part[..., 0] << 16) | (part[..., 1] << 8) | part[..., 2]
        at = np.minimum(np.searchsorted(known, packed), len(known) - 1)
        missing = known[at] != packed
        if missing.any():
            unknown = np.unique(packed[missing])
            shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:4].tolist())
            more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
            raise InputError(
                f"cannot read {what}: colour(s) {shown}{more} are not in the palette; save the mask as an "
                "indexed PNG or a grey PNG of label values, or give the palette it was drawn with"
            )
        labels[top : top + band] = index_of[at]
    return labels


def _compact(labels: np.ndarray) -> np.ndarray:
    """Labels in the smallest unsigned type that holds them: uint8, else uint16 (a writable copy either way)."""
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint8 if top <= 255 else np.uint16)


def _label_rule(labels: np.ndarray, *, what: str, indexed: bool, num_classes: int | None,
                ignore_index: int) -> np.ndarray:
    """The rule from stored values to classes, the same for files and arrays (see `read_mask`)."""
    if labels.size and labels.min() < 0:
        raise InputError(f"{what} holds negative labels ({labels.min()}); labels are 0, 1, 2, ... (255 = unknown)")
    if labels.size and labels.max() > 65535:
        raise InputError(f"{what} holds labels above 65535 ({labels.max()}); masks are written as 8- or 16-bit PNGs")
    if not indexed and (num_classes is None or num_classes == 2) and labels.size:
        top = labels.max()
        if top == 255 and not ((labels != 0) & (labels != 255)).any():
            return (labels == 255).astype(np.uint8)  # a binary mask: 255 is the object
    if num_classes is not None:
        bad = labels >= num_classes
        if num_classes <= ignore_index:
            bad &= labels != ignore_index
        if bad.any():
            found = np.unique(labels[bad])
            shown = ", ".join(str(v) for v in found[:6]) + (" ..." if len(found) > 6 else "")
            raise InputError(
                f"{what} holds label(s) {shown} but there are {num_classes} classes (0..{num_classes - 1}"
                f"{f', {ignore_index} = unknown' if num_classes <= ignore_index else ''}); check the class count"
            )
    return _compact(labels)


def _mask_image_labels(img: Image.Image, *, what: str, lossy: bool, num_classes: int | None, palette: Palette | None,
                       ignore_index: int) -> np.ndarray:
    binary_ok = num_classes is None or num_classes == 2
    mode = img.mode
    if mode == "P" or mode == "PA":
        labels = np.asarray(img.convert("P") if mode == "PA" else img)
        return _label_rule(labels, what=what, indexed=True, num_classes=num_classes, ignore_index=ignore_index)
    if mode in ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        labels = np.asarray(img.convert("L") if mode in ("1", "LA") else img)
        if mode == "1":
            labels = (labels > 0).astype(np.uint8)
    elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            labels = rgb[..., 0]
        elif lossy:
            raise InputError(f"cannot read {what}: a colour JPEG mask cannot hold exact labels; save it as PNG")
        else:
            return _label_rule(_colours_to_labels(rgb, palette if palette is not None else voc_palette(256), what),
                               what=what, indexed=True, num_classes=num_classes, ignore_index=ignore_index)
    else:
        raise InputError(f"cannot read {what}: unsupported mask mode {mode}; save it as an indexed PNG")
    if lossy:
        if not binary_ok:
            raise InputError(
                f"cannot read {what}: JPEG compression changes label values; save {num_classes}-class masks as PNG"
            )
        return (labels >= 128).astype(np.uint8)
    return _label_rule(labels, what=what, indexed=False, num_classes=num_classes, ignore_index=ignore_index)


def mask_labels(
    mask: Image.Image | np.ndarray,
    *,
    num_classes: int | None = None,
    palette: Palette | None = None,
    ignore_index: int = IGNORE_INDEX,
    what: str = "the mask",
) -> np.ndarray:
    """A PIL image or an (H, W) array of labels, read by the rule `read_mask` applies to files (an array is a grey
    mask: its values are the labels, a 0/255-only array is binary). Array values must be whole numbers in
    0..65535 (bool, integer, or float holding whole numbers); anything else is an `InputError`."""
    if isinstance(mask, Image.Image):
        return _mask_image_labels(mask, what=what, lossy=False, num_classes=num_classes, palette=palette,
                                  ignore_index=ignore_index)
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{what} has shape {arr.shape}; expected an (H, W) map of labels")
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise InputError(f"{what} holds fractional or NaN values; labels are whole numbers (0, 1, 2, ..., "
                             "255 = unknown): pass integer labels, not probabilities")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} holds {arr.dtype} values; pass integer labels")
    return _label_rule(arr, what=what, indexed=False, num_classes=num_classes, ignore_index=ignore_index)


def read_mask(
    path: str | Path,
    *,
    num_classes: int | None = None,
    palette: Palette | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_pixels: int = _IO.max_image_pixels,
) -> np.ndarray:
    """Read a label mask as an (H, W) array of class indices: uint8, or uint16 when a label exceeds 255.

    How pixels become labels, by the file's mode:
    - indexed ('P'): the stored indices, never remapped (VOC's 255 border stays 255);
    - grey ('L', 'I;16', 'I', '1') and colour files whose pixels are all grey: the values are the labels,
      except a *binary mask*: when the only values are 0 and 255 (255 present) and `num_classes` is None
      or 2, 255 becomes 1. In a mask holding any other value, or with any other `num_classes`, 255 is
      `ignore_index`: unknown;
    - colour (RGB/RGBA, alpha ignored) with non-grey pixels: each colour is looked up in `palette`
      (default: the VOC colour map, whose entry 255 (224, 224, 192) is VOC's ignore colour); an unknown
      colour is an `InputError`;
    - lossy files (JPEG): only grey binary masks make sense; they are thresholded at 128 to 0/1 (when
      `num_classes` is None or 2); anything else is an `InputError` asking for a PNG.
    The ignore rule: `ignore_index` (255) is kept as is and means "unknown" (not scored in training) whenever
    `num_classes` is None or at most 255. When `num_classes` is given, every other label must be below it
    (`InputError` otherwise); with `num_classes` > 255 (16-bit masks), 255 is an ordinary class. Labels above
    65535 are an `InputError` (no mask file could hold them). Arrays and PIL images go through the same rule
    (`mask_labels`). EXIF orientation, if the mask file carries one, is applied as for images.
    """
    path = Path(path)
    with _decoding(path, "mask"), _opened(path, "mask", max_pixels) as (img, file_format, _, _):
        return _mask_image_labels(img, what=f"mask '{path}'", lossy=file_format in LOSSY_MASK_FORMATS,
                                  num_classes=num_classes, palette=palette, ignore_index=ignore_index)


def read_probs(path: str | Path) -> np.ndarray:
    """Read a probability map written by `write_probs`: float32 (K, H, W)."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"cannot read probabilities '{path}': not an .npz archive (written by write_probs?)")
        with data:
            if "probs" not in data:
                raise InputError(f"cannot read probabilities '{path}': no 'probs' array (written by write_probs?)")
            probs = data["probs"].astype(np.float32)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"cannot read probabilities '{path}': file not found") from None
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise InputError(f"cannot read probabilities '{path}': {_reason(exc)}") from None
    if probs.ndim != 3:
        raise InputError(f"cannot read probabilities '{path}': expected (K, H, W), found shape {probs.shape}")
    return probs


# --------------------------------------------------------------------------------------------- writing


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """A label map as uint8, or uint16 when a label exceeds 255 (16-bit PNG masks)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UsageError(f"a label map must be (H, W); got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"a label map must hold integers; got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise UsageError(
            f"labels must lie in 0..65535 to be stored in a PNG; found {labels.min()}..{labels.max()}"
        )
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint8 if top <= 255 else np.uint16, copy=False)


def _full_palette(palette: Palette, size: int = 256) -> list[tuple[int, int, int]]:
    """`palette` padded to `size` (at least 256) entries with the VOC colour map's entries (so every index has a
    distinct colour and 255 gets VOC's ignore colour)."""
    entries = [tuple(int(c) for c in colour) for colour in palette]
    if len(entries) > 256:
        raise UsageError(f"a palette holds at most 256 colours; got {len(entries)}")
    if any(len(c) != 3 or min(c) < 0 or max(c) > 255 for c in entries):
        raise UsageError("palette entries must be (R, G, B) tuples of 0..255")
    return entries + voc_palette(max(256, size))[len(entries):]  # type: ignore[return-value]


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """Label map (H, W) -> uint8 RGB (H, W, 3) in the palette's colours (VOC's colour map beyond it)."""
    checked = _check_labels(labels)
    top = int(checked.max()) if checked.size else 0
    lut = np.array(_full_palette(palette, top + 1), dtype=np.uint8)
    return np.take(lut, checked, axis=0)  # a quarter of the time `lut[checked]` takes


def write_mask(path: str | Path, labels: np.ndarray, palette: Palette) -> None:
    """Write labels (H, W) as an indexed PNG whose palette is `palette` padded to 256 entries (see
    `_full_palette`), or, when a label exceeds 255 (more classes than an indexed PNG holds), as a 16-bit grey PNG
    of the label values (no colours). Atomic. Either opens as exact labels in `read_mask`."""
    labels = _check_labels(labels)
    img = Image.fromarray(labels)  # 'L', or 'I;16' for uint16
    if labels.dtype == np.uint8:
        img.putpalette([c for colour in _full_palette(palette) for c in colour])  # turns the 'L' image into 'P'
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False)


def write_binary_mask(path: str | Path, labels: np.ndarray) -> None:
    """Write a two-class label map (H, W, values 0 and 1) as a grey PNG of 0 (background) and 255 (object), the
    usual binary mask; `read_mask` reads it back as 0/1. Atomic."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UsageError(f"a label map must be (H, W); got shape {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise UsageError("a binary mask holds labels 0 and 1 only; write other labels with write_mask")
    img = Image.fromarray((labels != 0).astype(np.uint8) * 255)  # 2-D uint8: mode "L"
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False)


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    palette: Palette,
    *,
    alpha: float = _IO.overlay_alpha,
    boundaries: bool = True,
    quality: int = _IO.overlay_quality,
    ignore_index: int = IGNORE_INDEX,
) -> None:
    """Write a JPEG of `image` (uint8 RGB (H, W, 3)) under its mask, for looking at results.

    The look: every pixel is blended with its class colour, `(1 - alpha) * image + alpha * colour`
    (with the VOC palette the black background class darkens the background, so objects stand out);
    pixels labelled `ignore_index` are left as the image. With `boundaries`, every label change is drawn
    as an opaque contour in `IOConfig.overlay_boundary_colour` (white), `IOConfig.overlay_boundary_px`
    wide per 512 pixels of the shorter side. Atomic.
    """
    image = np.asarray(image)
    u8 = _check_labels(labels)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"overlay image must be uint8 (H, W, 3); got {image.dtype} {image.shape}")
    if image.shape[:2] != u8.shape:
        raise UsageError(f"overlay image is {image.shape[:2]} but the labels are {u8.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"overlay alpha must lie in 0..1; got {alpha}")
    image = np.ascontiguousarray(image)
    # One rounded uint8 pass (OpenCV's), not float32 arrays of the whole image: overlays are written for every input.
    out = cv2.addWeighted(image, 1.0 - alpha, colorize(u8, palette), alpha, 0.0)
    keep = u8 == ignore_index
    if keep.any():
        out[keep] = image[keep]
    if boundaries:
        edges = boundary_map(u8).astype(np.uint8)
        width = max(1, round(_IO.overlay_boundary_px * min(u8.shape) / 512))
        if width > 1:
            edges = cv2.dilate(edges, np.ones((width, width), np.uint8))
        out[edges.astype(bool)] = _IO.overlay_boundary_colour
    img = Image.fromarray(out)
    with atomic_path(path) as tmp:
        img.save(tmp, format="JPEG", quality=int(quality))


def write_probs(path: str | Path, probs: np.ndarray) -> None:
    """Write class probabilities (K, H, W) as a compressed .npz holding one float16 array 'probs'
    (half the bytes of float32; probabilities in 0..1 keep about 3 significant digits). Atomic."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise UsageError(f"probabilities must be (K, H, W); got shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise UsageError("probabilities hold NaN or infinite values")
    half = probs.astype(np.float16)
    atomic_write(path, lambda handle: np.savez_compressed(handle, probs=half))
