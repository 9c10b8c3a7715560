"""CamVid street scenes (Brostow et al. 2008) in SegNet's 11-class split: root/classes.txt and
root/<split>/{images,masks}/, label 11 = void (ignored in losses and scores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refine_cli.data.base import Pair, SegmentationDataset, read_classes_file
from refine_cli.data.cache import ProbsCache
from refine_cli.data.folders import MASK_SUFFIXES, index_by_stem
from refine_cli.errors import DatasetNotFoundError
from refine_cli.io import IMAGE_SUFFIXES
from refine_cli.labels import CAMVID_CLASSES, CAMVID_PALETTE, IGNORE_INDEX

CAMVID_VOID = 11  # SegNet's "unlabelled"


class CamVid(SegmentationDataset):
    """root/classes.txt (optional: the 11 names of `CAMVID_CLASSES`), root/<split>/images/<stem>.jpg|png and
    root/<split>/masks/<stem>.png (grey index masks 0..10, 11 = void). Void reads as 255 (ignored)."""

    def __init__(self, root: str | Path, split: str = "train", *,
                 probs_cache: ProbsCache | str | Path | None = None):
        root = Path(root).expanduser()
        images, masks = root / split / "images", root / split / "masks"
        if not images.is_dir() or not masks.is_dir():
            splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
            raise DatasetNotFoundError(f"no CamVid split '{split}' under {root}: it needs {split}/images and "
                                       f"{split}/masks (splits there: {', '.join(splits) or 'none'})")
        classes: list[str] = list(CAMVID_CLASSES)
        palette = list(CAMVID_PALETTE)
        if (root / "classes.txt").is_file():
            classes, file_palette = read_classes_file(root / "classes.txt")
            if file_palette is not None:
                palette = file_palette
            elif classes != list(CAMVID_CLASSES):
                palette = []
        image_files, problems = index_by_stem(images, IMAGE_SUFFIXES)
        mask_files, mask_problems = index_by_stem(masks, MASK_SUFFIXES)
        pairs = [Pair(stem, path, (mask_files[stem],) if stem in mask_files else ())
                 for stem, path in image_files.items()]
        super().__init__(pairs, classes=classes, palette=palette, probs_cache=probs_cache)
        self.root, self.split = root, split
        self.listing_problems = problems + mask_problems

    def read_label(self, pair: Pair, *, num_classes: int | None = None) -> np.ndarray:
        """Labels 0..10, void (11) as 255."""
        label = super().read_label(pair, num_classes=max(num_classes or 0, CAMVID_VOID + 1))
        label[label == CAMVID_VOID] = IGNORE_INDEX
        return label
