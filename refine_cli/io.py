"""Files in and out: listing inputs, reading images (EXIF orientation, every Pillow mode to RGB), reading
and writing label masks (palette, grey index, binary, VOC colour), overlays, probability maps, and the
atomic temp-file-and-rename that every writer goes through. Never touches models.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refine_cli.config import IOConfig
from refine_cli.errors import InputError, UsageError
from refine_cli.labels import IGNORE_INDEX, voc_palette

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


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in parts)


def _has_image_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    return path.suffix.lower() in suffixes


def _walk_folder(root: Path, *, recursive: bool, suffixes: Sequence[str]) -> list[Path]:
    """Image files below `root`, hidden files and folders skipped. Symlinked files are listed; symlinked
    folders are not entered (a link back up the tree would loop)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and _has_image_suffix(path, suffixes) and path.is_file():
                found.append(path)
    return found


def _glob_root(pattern: str) -> Path:
    """The longest leading part of a glob pattern without wildcards ('data/**/*.png' -> 'data')."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_MAGIC & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_posix(path: Path, root: Path) -> PurePosixPath:
    return PurePosixPath(*path.relative_to(root).parts)


def list_inputs(
    inputs: Sequence[str | Path], *, recursive: bool = True, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[InputItem]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of image files.

    A file named directly is taken whatever its suffix (reading it reports a bad one). Folders are walked
    (recursively unless `recursive=False`) and globs expanded (`**` allowed), keeping files whose suffix is
    in `suffixes` (any case); a folder matched by a glob is walked like a named folder. Hidden files and
    folders (leading '.') are skipped. The list is sorted by `relative`, then path; a file reached twice is
    kept once. Raises `UsageError` for an input that does not exist, a folder or glob that yields no image,
    or two different files that would mirror to the same output name.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    items: list[InputItem] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_file():
            items.append(InputItem(path, PurePosixPath(path.name)))
        elif path.is_dir():
            found = _walk_folder(path, recursive=recursive, suffixes=suffixes)
            if not found:
                raise UsageError(f"folder '{path}' holds no images (looked for {', '.join(suffixes)})")
            items.extend(InputItem(p, _relative_posix(p, path)) for p in found)
        elif _GLOB_MAGIC & set(text):
            root = _glob_root(text)
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                mpath = Path(match)
                if _is_hidden(mpath.relative_to(root).parts):
                    continue
                if mpath.is_dir():
                    found.extend(_walk_folder(mpath, recursive=recursive, suffixes=suffixes))
                elif mpath.is_file() and _has_image_suffix(mpath, suffixes):
                    found.append(mpath)
            if not found:
                raise UsageError(f"no images match '{text}' (looked for {', '.join(suffixes)})")
            items.extend(InputItem(p, _relative_posix(p, root)) for p in found)
        else:
            raise UsageError(f"input '{text}' does not exist; give an image file, a folder or a glob pattern")

    unique: dict[Path, InputItem] = {}
    for item in items:
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
    return result


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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a not-yet-existing temporary path beside `path` (parent folders created); when the block ends
    without an exception the temporary file replaces `path` in one `os.replace`, otherwise it is removed
    and `path` is left as it was. The temporary name is hidden (leading '.'), keeps `path`'s suffix and is
    unique per call. A killed process can leave such a temporary behind, never a half-written `path`.
    Atomic against a crashing process, not against power loss (no fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.part{path.suffix}")
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


@contextlib.contextmanager
def _opened(path: Path, what: str, max_pixels: int) -> Iterator[tuple[Image.Image, str | None]]:
    """Open (closing the file afterwards), check the header's size against `max_pixels`, decode fully (so
    truncation shows now) and apply the EXIF orientation; also give the file's format (a transposed copy
    no longer knows it). Use inside `_decoding`."""
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"cannot read {what} '{path}': file is empty")
    with Image.open(path) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise InputError(
                f"cannot read {what} '{path}': {width}x{height} = {width * height / 1e6:.0f} MP is over the limit "
                f"of {max_pixels / 1e6:.0f} MP (a guard against decompression bombs); if the file is trusted, "
                "raise the limit (IOConfig.max_image_pixels)"
            )
        img.load()  # full decode now: a truncated file fails here rather than being padded with grey
        yield ImageOps.exif_transpose(img), img.format


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 with rounding (65535 -> 255, 257 -> 1), not by clipping or dropping the low byte."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(img: Image.Image, path: Path, background: tuple[int, int, int]) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(
                f"cannot read image '{path}': 32-bit integer pixels outside 0..65535; convert it to 8 or 16 bit"
            )
        grey = _scale_16bit(values)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "F":
        values = np.asarray(img)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InputError(f"cannot read image '{path}': float pixels must lie in 0..1; convert it to 8 bit")
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
        raise InputError(f"cannot read image '{path}': colour mode {mode} cannot be converted to RGB") from None
    return np.array(rgb, dtype=np.uint8)


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
    Raises `InputError` naming the file for a missing, empty, truncated, corrupt or non-image file, and
    for one over `max_pixels` (decompression-bomb guard, see `IOConfig.max_image_pixels`).
    """
    path = Path(path)
    with _decoding(path, "image"), _opened(path, "image", max_pixels) as (img, _):
        return _to_rgb(img, path, background)


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


def _colours_to_labels(rgb: np.ndarray, palette: Palette, path: Path) -> np.ndarray:
    """Map each pixel's colour to the index of that colour in `palette` (first match wins)."""
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lut: dict[int, int] = {}
    for index, (r, g, b) in enumerate(palette):
        lut.setdefault((int(r) << 16) | (int(g) << 8) | int(b), index)
    colours, inverse = np.unique(packed.ravel(), return_inverse=True)
    unknown = [int(c) for c in colours if int(c) not in lut]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:4])
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise InputError(
            f"cannot read mask '{path}': colour(s) {shown}{more} are not in the palette; save the mask as an "
            "indexed PNG or a grey PNG of label values, or give the palette it was drawn with"
        )
    mapped = np.array([lut[int(c)] for c in colours], dtype=np.int64)
    return mapped[inverse].reshape(packed.shape)


def read_mask(
    path: str | Path,
    *,
    num_classes: int | None = None,
    palette: Palette | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_pixels: int = _IO.max_image_pixels,
) -> np.ndarray:
    """Read a label mask as an int64 (H, W) array of class indices.

    How pixels become labels, by the file's mode:
    - indexed ('P'): the stored indices, never remapped (VOC's 255 border stays 255);
    - grey ('L', 'I;16', 'I', '1') and colour files whose pixels are all grey: the values are the labels,
      except a *binary mask*: when the only values are 0 and 255 (255 present) and `num_classes` is None
      or 2, 255 becomes 1. With any other `num_classes` a {0, 255} mask is background plus ignore;
    - colour (RGB/RGBA, alpha ignored) with non-grey pixels: each colour is looked up in `palette`
      (default: the VOC colour map, whose entry 255 (224, 224, 192) is VOC's ignore colour); an unknown
      colour is an `InputError`;
    - lossy files (JPEG): only grey binary masks make sense; they are thresholded at 128 to 0/1 (when
      `num_classes` is None or 2); anything else is an `InputError` asking for a PNG.
    The ignore rule: `ignore_index` (255) is kept as is and means "not scored" whenever `num_classes` is
    None or at most 255. When `num_classes` is given, every other label must be below it (`InputError`
    otherwise); with `num_classes` > 255 (16-bit masks), 255 is an ordinary class.
    EXIF orientation, if the mask file carries one, is applied as for images.
    """
    path = Path(path)
    binary_ok = num_classes is None or num_classes == 2
    with _decoding(path, "mask"), _opened(path, "mask", max_pixels) as (img, file_format):
        lossy = file_format in LOSSY_MASK_FORMATS
        mode = img.mode
        if mode == "P" or mode == "PA":
            labels = np.asarray(img.convert("P") if mode == "PA" else img).astype(np.int64)
        elif mode in ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"):
            grey = img.convert("L") if mode in ("1", "LA") else img
            labels = np.asarray(grey).astype(np.int64)
            if mode == "1":
                labels = (labels > 0).astype(np.int64)
        elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            rgb = np.asarray(img.convert("RGB"))
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                labels = rgb[..., 0].astype(np.int64)
            elif lossy:
                raise InputError(
                    f"cannot read mask '{path}': a colour JPEG mask cannot hold exact labels; save it as PNG"
                )
            else:
                labels = _colours_to_labels(rgb, palette if palette is not None else voc_palette(256), path)
                lossy = False  # colours matched exactly: no thresholding
        else:
            raise InputError(f"cannot read mask '{path}': unsupported mask mode {mode}; save it as an indexed PNG")

    if lossy:
        if not binary_ok:
            raise InputError(
                f"cannot read mask '{path}': JPEG compression changes label values; save {num_classes}-class "
                "masks as PNG"
            )
        return (labels >= 128).astype(np.int64)
    if mode not in ("P", "PA") and binary_ok and labels.size:
        values = np.unique(labels)
        if values[-1] == 255 and set(values.tolist()) <= {0, 255}:
            return (labels == 255).astype(np.int64)
    if num_classes is not None:
        bad = (labels >= num_classes) | (labels < 0)
        if num_classes <= ignore_index:
            bad &= labels != ignore_index
        if bad.any():
            found = np.unique(labels[bad])
            shown = ", ".join(str(v) for v in found[:6]) + (" ..." if len(found) > 6 else "")
            raise InputError(
                f"mask '{path}' holds label(s) {shown} but there are {num_classes} classes (0..{num_classes - 1}"
                f"{f', {ignore_index} = ignore' if num_classes <= ignore_index else ''}); check the class count"
            )
    return labels


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
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UsageError(f"a label map must be (H, W); got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"a label map must hold integers; got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise UsageError(
            f"labels must lie in 0..255 to be stored in an indexed PNG; found {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.uint8)


def _full_palette(palette: Palette) -> list[tuple[int, int, int]]:
    """`palette` padded to 256 entries with the VOC colour map's entries (so every index has a distinct
    colour and 255 gets VOC's ignore colour)."""
    entries = [tuple(int(c) for c in colour) for colour in palette]
    if len(entries) > 256:
        raise UsageError(f"a palette holds at most 256 colours; got {len(entries)}")
    if any(len(c) != 3 or min(c) < 0 or max(c) > 255 for c in entries):
        raise UsageError("palette entries must be (R, G, B) tuples of 0..255")
    return entries + voc_palette(256)[len(entries):]  # type: ignore[return-value]


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """Label map (H, W) -> uint8 RGB (H, W, 3) in the palette's colours."""
    lut = np.array(_full_palette(palette), dtype=np.uint8)
    return lut[_check_labels(labels)]


def write_mask(path: str | Path, labels: np.ndarray, palette: Palette) -> None:
    """Write labels (H, W, values 0..255) as an indexed PNG whose palette is `palette` padded to 256
    entries (see `_full_palette`). Atomic. The file opens as colours in a viewer and as exact indices in
    `read_mask`."""
    u8 = _check_labels(labels)
    img = Image.fromarray(u8)
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


def boundary_map(labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Bool (H, W): True where a pixel's label differs from its right or lower neighbour, a 1-pixel line on
    the upper/left side of every label change. With `valid` (bool (H, W)), a change counts only between
    two valid pixels. The one boundary definition of the package: overlays and the boundary F use it."""
    labels = np.asarray(labels)
    edges = np.zeros(labels.shape, dtype=bool)
    right = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    if valid is not None:
        right &= valid[:, :-1] & valid[:, 1:]
        down &= valid[:-1, :] & valid[1:, :]
    edges[:, :-1] |= right
    edges[:-1, :] |= down
    return edges


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
    colours = colorize(u8, palette).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    keep = (u8 == ignore_index)[..., None]
    out = np.where(keep, image.astype(np.float32), blended)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
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
