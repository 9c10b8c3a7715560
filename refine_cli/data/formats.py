"""Opening a dataset by layout name: the one place the CLI and the training code turn `--format` into a dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from refine_cli.data.base import SegmentationDataset
from refine_cli.data.cache import ProbsCache
from refine_cli.data.camvid import CamVid
from refine_cli.data.davis import DAVIS
from refine_cli.data.folders import FolderDataset
from refine_cli.data.helen import HelenFaces
from refine_cli.data.voc import VOCSegmentation
from refine_cli.errors import UnknownNameError

Opener = Callable[[Path, str, "ProbsCache | str | Path | None"], SegmentationDataset]


def _folders(root: Path, split: str, probs_cache: ProbsCache | str | Path | None) -> SegmentationDataset:
    # A split is a subfolder (root/train/images, ...) when there is one; a flat root/images serves every split.
    base = root / split if (root / split / "images").is_dir() else root
    return FolderDataset.from_root(base, probs_cache=probs_cache)


FORMATS: MappingProxyType[str, Opener] = MappingProxyType({
    "voc": lambda root, split, cache: VOCSegmentation(root, split, probs_cache=cache),
    "helen": lambda root, split, cache: HelenFaces(root, split, probs_cache=cache),
    "folders": _folders,
    "camvid": lambda root, split, cache: CamVid(root, split, probs_cache=cache),
    "davis": lambda root, split, cache: DAVIS(root, split, probs_cache=cache),
})


def open_dataset(
    root: str | Path,
    *,
    format: str = "voc",
    split: str = "train",
    probs_cache: ProbsCache | str | Path | None = None,
) -> SegmentationDataset:
    """The dataset at `root` in layout `format` ("voc" (also the synthetic world), "helen", "folders",
    "camvid", "davis")."""
    opener = FORMATS.get(format)
    if opener is None:
        raise UnknownNameError("dataset format", format, list(FORMATS))
    return opener(Path(root).expanduser(), split, probs_cache)
