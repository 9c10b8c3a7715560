"""DAVIS 2016 video object segmentation (Perazzi et al., CVPR 2016): one foreground object per frame, binary masks,
split by sequence (frames of one sequence are near-duplicates, so a frame-level split would leak)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from refine_cli.data.base import Pair, Problem, SegmentationDataset
from refine_cli.data.cache import ProbsCache
from refine_cli.data.folders import MASK_SUFFIXES, index_by_stem
from refine_cli.errors import DatasetNotFoundError
from refine_cli.io import IMAGE_SUFFIXES

DAVIS_CLASSES: tuple[str, ...] = ("background", "object")
# Held out for validation: three sequences whose object is a VOC class (person, car, cow), so that a VOC network's
# foreground can be scored on them too. Every other sequence is "train".
DAVIS_VAL_SEQUENCES: tuple[str, ...] = ("breakdance", "car-roundabout", "cows")


class DAVIS(SegmentationDataset):
    """root/images/<sequence>/<frame>.jpg and root/masks/<sequence>/<frame>.png (grey, 0 background, 255 object).

    split: "val" (`DAVIS_VAL_SEQUENCES`), "train" (every other sequence), "all", or sequence names joined by
    commas. Sample names are `<sequence>_<frame>`.
    """

    def __init__(self, root: str | Path, split: str = "train", *,
                 probs_cache: ProbsCache | str | Path | None = None):
        root = Path(root).expanduser()
        images, masks = root / "images", root / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise DatasetNotFoundError(f"{root} is no DAVIS folder: it needs images/<sequence>/ and masks/<sequence>/")
        sequences = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
        chosen = self.sequences_of(split, sequences, root)
        pairs: list[Pair] = []
        problems: list[Problem] = []
        for seq in chosen:
            image_files, found = index_by_stem(images / seq, IMAGE_SUFFIXES)
            mask_files, mask_found = ({}, []) if not (masks / seq).is_dir() else index_by_stem(masks / seq,
                                                                                                 MASK_SUFFIXES)
            problems += found + mask_found
            for stem, path in image_files.items():
                pairs.append(Pair(f"{seq}_{stem}", path, (mask_files[stem],) if stem in mask_files else ()))
        super().__init__(pairs, classes=DAVIS_CLASSES, probs_cache=probs_cache)
        self.root, self.split, self.sequences = root, split, tuple(chosen)
        self.listing_problems = problems

    def relative_path(self, pair: Pair) -> PurePosixPath:
        """`<sequence>/<frame>.jpg`, as under images/."""
        return PurePosixPath(pair.image.parent.name, pair.image.name)

    @staticmethod
    def sequences_of(split: str, sequences: list[str], root: Path) -> list[str]:
        if split == "all":
            return sequences
        if split == "val":
            return [s for s in sequences if s in DAVIS_VAL_SEQUENCES]
        if split == "train":
            return [s for s in sequences if s not in DAVIS_VAL_SEQUENCES]
        named = [s.strip() for s in split.split(",") if s.strip()]
        unknown = [s for s in named if s not in sequences]
        if unknown or not named:
            raise DatasetNotFoundError(f"no DAVIS sequence {', '.join(unknown) or repr(split)} under {root}; splits "
                                       f"are train, val, all or sequence names ({', '.join(sequences)})")
        return named
