"""A generic dataset from two folders, images/ and masks/, paired by file stem, with a classes file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from refine_cli.data.base import Color, Pair, Problem, SegmentationDataset, read_classes_file
from refine_cli.data.cache import ProbsCache
from refine_cli.errors import DataError, DatasetNotFoundError
from refine_cli.io import IMAGE_SUFFIXES

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


class FolderDataset(SegmentationDataset):
    """Images and masks matched by stem: images/cat.jpg goes with masks/cat.png.

    images: any of .jpg .jpeg .png .bmp .tif .tiff .webp (case-insensitive).
    masks: PNG (or BMP/TIFF), either palette PNGs (index = class) or grey-level index images; value 255 is
        ignored. RGB masks are mapped to classes through the palette. Grey 0/255 masks read as 0/1 in a
        two-class dataset and as background/ignore otherwise (`refine_cli.io.read_mask`).
    classes: names in index order (background first), or the path of a classes file: one name per line,
        optionally followed by its colour as `r g b` or `#rrggbb`.

    An image without a mask and a mask without an image are both reported by `validate`; only images
    make samples.
    """

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        *,
        classes: Sequence[str] | str | Path,
        palette: Sequence[Color] | None = None,
        probs_cache: ProbsCache | str | Path | None = None,
    ):
        images, masks = Path(images).expanduser(), Path(masks).expanduser()
        for folder, what in ((images, "images"), (masks, "masks")):
            if not folder.is_dir():
                raise DatasetNotFoundError(f"the {what} folder {folder} does not exist")
        if isinstance(classes, (str, Path)):
            classes, file_palette = read_classes_file(Path(classes))
            palette = palette or file_palette
        image_files, problems = index_by_stem(images, IMAGE_SUFFIXES)
        mask_files, mask_problems = index_by_stem(masks, MASK_SUFFIXES)
        problems += mask_problems
        pairs = []
        for stem, image in image_files.items():
            mask = mask_files.get(stem)
            pairs.append(Pair(stem, image, (mask,) if mask is not None else ()))
        for stem, mask in mask_files.items():
            if stem not in image_files:
                problems.append(Problem(stem, "missing_image", f"mask {mask.name} has no image in {images}"))
        super().__init__(pairs, classes=list(classes), palette=palette, probs_cache=probs_cache)
        self.images_dir, self.masks_dir = images, masks
        self.listing_problems = problems

    @classmethod
    def from_root(
        cls,
        root: str | Path,
        *,
        classes: Sequence[str] | str | Path | None = None,
        probs_cache: ProbsCache | str | Path | None = None,
    ) -> FolderDataset:
        """root/images/, root/masks/ and root/classes.txt (unless `classes` is given)."""
        root = Path(root).expanduser()
        if classes is None:
            classes = root / "classes.txt"
            if not classes.is_file():
                raise DataError(f"{classes} is missing: write the class names there, one per line, "
                                "background first (optionally followed by an `r g b` colour)")
        return cls(root / "images", root / "masks", classes=classes, probs_cache=probs_cache)


def index_by_stem(folder: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, Path], list[Problem]]:
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in found:
            problems.append(Problem(path.stem, "duplicate",
                                    f"{found[path.stem].name} and {path.name} share a stem; {path.name} is ignored"))
            continue
        found[path.stem] = path
    return found, problems
