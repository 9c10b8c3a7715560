"""Datasets (PASCAL VOC, Helen, image/mask folders, the synthetic world), their validation, the cache of coarse
probabilities and the joint augmentation used to train refiners."""

from refine_cli.data.augment import joint_affine, random_crop_with_labels, refiner_crops
from refine_cli.data.base import Pair, Problem, Sample, SegmentationDataset
from refine_cli.data.cache import ProbsCache
from refine_cli.data.folders import FolderDataset
from refine_cli.data.formats import FORMATS, open_dataset
from refine_cli.data.helen import HELEN_CLASSES, HelenFaces
from refine_cli.data.synth import SYNTH_CLASSES, SynthDataset, generate, render
from refine_cli.data.validate import ValidationReport, ensure_valid, validate
from refine_cli.data.voc import VOCSegmentation

__all__ = [
    "FORMATS", "HELEN_CLASSES", "SYNTH_CLASSES", "FolderDataset", "HelenFaces", "Pair", "Problem", "ProbsCache",
    "Sample", "SegmentationDataset", "SynthDataset", "VOCSegmentation", "ValidationReport", "ensure_valid",
    "generate", "joint_affine", "open_dataset", "random_crop_with_labels", "refiner_crops", "render", "validate",
]
