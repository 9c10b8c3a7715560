"""Helen face parsing (11 classes; Smith et al., "Exemplar-Based Face Parsing", CVPR 2013), the face benchmark
of the SPN paper, in its original release layout or as plain label maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from refine_cli.data.base import Pair, Problem, SegmentationDataset, read_split_file
from refine_cli.data.cache import ProbsCache
from refine_cli.errors import DatasetNotFoundError, InputError
from refine_cli.io import IMAGE_SUFFIXES

# Index order = the order of the release's per-class maps `<name>_lbl00.png` ... `_lbl10.png` (Smith et al.
# 2013, SmithCVPR2013_dataset_resized), as decoded by public Helen loaders (argmax over the 11 maps).
HELEN_CLASSES: tuple[str, ...] = (
    "background", "face_skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye", "nose",
    "upper_lip", "inner_mouth", "lower_lip", "hair",
)
# The release's list files: 2000 training ("exemplars"), 230 validation ("tuning"), 100 test images.
HELEN_SPLITS = {"train": "exemplars", "val": "tuning", "test": "testing"}


class HelenFaces(SegmentationDataset):
    """Helen in one of two layouts, told apart by what root/labels/ holds.

    Original ("SmithCVPR2013_dataset_resized"):
        root/images/<name>.jpg
        root/labels/<name>/<name>_lbl00.png ... <name>_lbl10.png   one grey-level map per class (0..255)
        root/exemplars.txt, tuning.txt, testing.txt                lines `index , name`
      The label is the per-pixel argmax over the 11 maps (ties go to the lower index, so an all-zero pixel
      is background). split "train"/"val"/"test" reads exemplars/tuning/testing; any other name reads
      `<split>.txt`.

    Label maps:
        root/images/<stem>.<jpg|png|...>
        root/labels/<stem>.png      index or palette PNG, values 0..10 in the order of HELEN_CLASSES, 255 ignore
        root/<split>.txt            optional: stems (or `index , stem` lines); without it, split "all" lists
                                    every image.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        probs_cache: ProbsCache | str | Path | None = None,
    ):
        root = Path(root).expanduser()
        images, labels = root / "images", root / "labels"
        if not images.is_dir() or not labels.is_dir():
            raise DatasetNotFoundError(f"{root} is no Helen folder: it needs images/ and labels/ "
                            "(SmithCVPR2013_dataset_resized or images/ + labels/ label maps)")
        self.root, self.split = root, split
        self.per_class_maps = any(p.is_dir() for p in labels.iterdir())
        stems = self._split_names(root, split, images)
        image_files = _index_by_stem(images)
        pairs, problems = [], []
        for stem in stems:
            image = image_files.get(stem)
            if image is None:
                problems.append(Problem(stem, "missing_image", f"no image {stem}.* in {images}"))
                continue
            if self.per_class_maps:
                masks = tuple(labels / stem / f"{stem}_lbl{k:02d}.png" for k in range(len(HELEN_CLASSES)))
            else:
                masks = (labels / f"{stem}.png",)
            pairs.append(Pair(stem, image, masks))
        super().__init__(pairs, classes=HELEN_CLASSES, probs_cache=probs_cache)
        self.listing_problems = problems

    @staticmethod
    def _split_names(root: Path, split: str, images: Path) -> list[str]:
        list_file = root / f"{HELEN_SPLITS.get(split, split)}.txt"
        if list_file.is_file():
            return read_split_file(list_file)
        if split == "all":
            return sorted(_index_by_stem(images))
        raise DatasetNotFoundError(f"no list {list_file.name} for split '{split}' in {root}; use split 'all' to take "
                        "every image, or write the list")

    def read_label(self, pair: Pair, *, num_classes: int | None = None) -> np.ndarray:
        if not self.per_class_maps:
            return super().read_label(pair, num_classes=num_classes)
        maps = [_read_grey(p) for p in pair.masks]
        if any(m.shape != maps[0].shape for m in maps):
            raise InputError(f"'{pair.name}': the 11 per-class label maps differ in size")
        return np.argmax(np.stack(maps), axis=0).astype(np.uint8)


def _read_grey(path: Path) -> np.ndarray:
    """A per-class map as (H, W) uint8 grey levels (the release's maps are soft, 0..255)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read label map {path}: {exc}") from exc


def _index_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found
