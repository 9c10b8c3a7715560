"""PASCAL VOC 2012 segmentation (and the SBD-augmented "SegmentationClassAug" set) as a `SegmentationDataset`.
The synthetic world of `refine_cli.data.synth` is written in this layout and loads through it unchanged.
"""

from __future__ import annotations

from pathlib import Path

from refine_cli.data.base import Pair, SegmentationDataset, read_classes_file, read_split_file
from refine_cli.data.cache import ProbsCache
from refine_cli.errors import DatasetNotFoundError
from refine_cli.labels import VOC_CLASSES

_LIST_DIRS = ("ImageSets/Segmentation", ".", "list", "ImageSets")


class VOCSegmentation(SegmentationDataset):
    """The VOC 2012 layout.

    root/JPEGImages/<stem>.jpg
    root/SegmentationClass/<stem>.png      palette PNGs: pixel index = class, 255 = ignore (object borders)
    root/ImageSets/Segmentation/<split>.txt  one stem per line (train, val, trainval)

    `root` may also be the `VOCdevkit` folder above `VOC2012`. With `aug` (the default for a split whose
    name ends in `_aug`), masks come from root/SegmentationClassAug/<stem>.png instead: the 10,582-image
    SBD + VOC training set as prepared for DeepLab, grey-level index PNGs (same indices, 255 = ignore).
    Its list, commonly `train_aug.txt`, is looked for in ImageSets/Segmentation/, the root itself, list/
    and ImageSets/; a line may be a stem or DeepLab's `/JPEGImages/x.jpg /SegmentationClassAug/x.png`.

    Class names are the 21 VOC classes, unless root/classes.txt exists (one name per line, optional
    `r g b` colour), as in the synthetic world.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        aug: bool | None = None,
        probs_cache: ProbsCache | str | Path | None = None,
    ):
        root = Path(root).expanduser()
        if not (root / "JPEGImages").is_dir() and (root / "VOC2012" / "JPEGImages").is_dir():
            root = root / "VOC2012"
        if not root.is_dir():
            raise DatasetNotFoundError(f"VOC root {root} does not exist; point it at the folder holding JPEGImages/")
        self.root = root
        self.split = split
        self.aug = split.endswith("_aug") if aug is None else aug
        mask_dir = root / ("SegmentationClassAug" if self.aug else "SegmentationClass")
        list_file = self._find_list(root, split)
        names = read_split_file(list_file)
        classes, palette = list(VOC_CLASSES), None
        if (root / "classes.txt").is_file():
            classes, palette = read_classes_file(root / "classes.txt")
        pairs = [Pair(n, root / "JPEGImages" / f"{n}.jpg", (mask_dir / f"{n}.png",)) for n in names]
        super().__init__(pairs, classes=classes, palette=palette, probs_cache=probs_cache)

    @staticmethod
    def _find_list(root: Path, split: str) -> Path:
        candidates = [root / d / f"{split}.txt" for d in _LIST_DIRS]
        for path in candidates:
            if path.is_file():
                return path
        tried = ", ".join(str(p.relative_to(root)) for p in candidates)
        raise DatasetNotFoundError(f"no list for split '{split}' under {root} (tried {tried}); "
                        "choose an existing split or write the list file")
