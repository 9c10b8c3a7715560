"""Frozen dataclasses holding the only copy of every default, and the only copy of every option vocabulary (the
`str` enums below); CLI options point at these, the library's checks derive their tuples from them. Imports
dataclasses and enum only, so `--help` stays free of torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# ------------------------------------------------------------------------------------------- option vocabularies
# `class X(str, Enum)` (Python 3.10 has no StrEnum): Typer takes them as choices, and a member equals its value.
# The configs below hold plain strings (the values), so they stay JSON- and checkpoint-friendly.


class Optimizer(str, Enum):
    """`OptimConfig.optimizer`: SGD (as published), or Adam / AdamW (Adam's beta1 is the momentum)."""

    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Amp(str, Enum):
    """`LoopConfig.amp`: "auto" (bfloat16 autocast on CUDA, none on CPU), "bf16", "fp16" (with a gradient scaler)
    or "off"."""

    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    off = "off"


class Init(str, Enum):
    """`BaseTrainConfig.init` / `RefinerTrainConfig.init`: "auto" (the arch's ImageNet trunk when it is in the cache,
    else from scratch), "imagenet" (required) or "scratch"."""

    auto = "auto"
    imagenet = "imagenet"
    scratch = "scratch"


class ProbsMode(str, Enum):
    """`RefinerTrainConfig.probs`: "cache" (computed once, stored as float16) or "live" (recomputed every batch)."""

    cache = "cache"
    live = "live"


class CropsMode(str, Enum):
    """`RefinerTrainConfig.crops`: "released" (the published recipe) or "working" (universal refiners trained at the
    resolution the pipeline runs them at)."""

    released = "released"
    working = "working"


class CoarseMode(str, Enum):
    """`RefinerTrainConfig.coarse`: coarse maps from the base networks ("base"), from ground truth made coarse
    ("perturb") or both ("mixed")."""

    base = "base"
    perturb = "perturb"
    mixed = "mixed"


class Precision(str, Enum):
    """Inference precision (`refine_cli.pipeline`): "fp32", or "fp16" / "bf16" autocast (fp16 on CUDA only)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass(frozen=True)
class CacheConfig:
    """Where downloaded and imported checkpoints live. The environment variable moves the cache."""

    env_var: str = "REFINE_CLI_CACHE"
    default_dir: str = "~/.cache/refine-cli"
    chunk_bytes: int = 1 << 20
    timeout_s: float = 60.0


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic segmentation world (`refine-cli data synth`): shapes define the classes, textures come from
    real photographs shared by every class, and the image degrades as real ones do. Ranges are (low, high)."""

    n: int = 1000
    seed: int = 0
    height: int = 160
    width: int = 160
    val_fraction: float = 0.2
    supersample: int = 4  # shapes rasterised at 4x and area-averaged: antialiased edges, majority labels
    objects: tuple[int, int] = (2, 6)  # labelled shapes per image, inclusive
    distractors: tuple[int, int] = (0, 3)  # background-class clutter (blobs, boxes) per image, inclusive
    class_tint: tuple[float, float] = (0.3, 0.8)  # share of a surface's colour pulled to its class hue (clutter: any)
    background_saturation: tuple[float, float] = (0.15, 0.7)  # share of colour a background surface keeps
    radius: tuple[float, float] = (0.10, 0.45)  # object radius / short side, log-uniform (~82 % background)
    aspect: tuple[float, float] = (0.8, 1.25)  # mild anisotropic stretch, as from a slanted view
    line_width_px: tuple[float, float] = (1.5, 4.0)  # the thin "bars" class, at the final resolution
    border_margin: float = 0.15  # centres fall up to this fraction outside the image: shapes cut by the border
    split_background_p: float = 0.5  # a second background texture behind a wavy edge that is no label edge
    shadow_p: float = 0.3
    texture_scale: tuple[float, float] = (0.5, 2.0)  # texture pixels per output pixel
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_sigma: tuple[float, float] = (0.0, 8.0)  # Gaussian, on the 0..255 scale
    jpeg_quality: tuple[int, int] = (60, 95)


@dataclass(frozen=True)
class AugmentConfig:
    """Joint random affine for refiner training (Liu et al. 2017, SPN as released: rotation +/-15 deg,
    scale +/-10 %, shift up to half the longer side), applied to image, label and coarse probabilities."""

    rotation_deg: float = 15.0
    scale: float = 0.1
    shift_fraction: float = 0.5
    image_fill: float = 0.0  # outside the source image, on the image's own scale (0..255 for uint8)
    probs_fill: str = "uniform"  # "uniform" or "background": coarse probabilities outside the source image
    # Share of crops whose coarse probabilities become the one-hot of their argmax, the way masks made elsewhere
    # arrive (`refine --masks`). Not in the released recipe (0); the bundled universal refiner uses it.
    hard_probs_p: float = 0.0
    # Each crop's coarse probabilities re-tempered, softmax(log p / t) with t log-uniform in [1/T, T] (1: off), so a
    # universal refiner does not learn the calibration of the one base network it trains on. Not in the release.
    probs_temperature: float = 1.0
    # Each crop's coarse probabilities smoothed spatially: area-downsampled by s, s log-uniform in [1, S], and
    # resized back (bilinear) (1: off), so the refiner also sees the blobbier maps of base networks without skip
    # connections (DeepLab-LargeFOV) while training on one with them (FCN-8s). Not in the release.
    probs_coarsen: float = 1.0
    # Each class map of each crop moved at its boundaries by its own whole number of pixels r, uniform in [-R, R]
    # (0: off): p grown (r > 0) or shrunk (r < 0) by a (2|r|+1)-wide max or min filter, the other classes rescaled
    # to fill the rest. FCN-8s under-segments, so a refiner trained on it learns to grow regions; with regions too
    # large as often as too small, only the image's edges say where a boundary belongs. Not in the release; it did
    # not lift the bundled refiner's gain on a second net (weights/README.md).
    probs_displace: int = 0


@dataclass(frozen=True)
class PerturbConfig:
    """Coarse masks made from ground truth (`refine_cli.data.perturb`) for refiner training: each error kind with
    its chance and size. Ranges are (low, high), drawn uniformly (`stride` log-uniformly); sizes in pixels of the
    map perturbed, radii of blobs as a fraction of its shorter side."""

    warp_p: float = 0.5
    warp_px: float = 6.0  # largest border displacement
    warp_scale: tuple[float, float] = (16.0, 48.0)  # side of the displacement field's cells
    morph_p: float = 0.5
    morph_px: int = 4  # each class grown or shrunk by up to this
    blobs: tuple[int, int] = (0, 1)  # holes and spurious blobs per map, inclusive, of a class drawn uniformly
    blob_radius: tuple[float, float] = (0.02, 0.10)
    confuse_p: float = 0.1  # part of one class's region given another present class
    confuse_radius: tuple[float, float] = (0.1, 0.3)
    stride_p: float = 0.8
    stride: tuple[float, float] = (4.0, 24.0)  # blurred like the output of a network of this stride
    blocky_p: float = 0.3  # share of those upsampled by pixel replication instead of bilinearly
    hard_p: float = 0.5  # share of one-hot results (masks made elsewhere); the others stay probabilities
    confidence: tuple[float, float] = (0.7, 1.0)  # soft results mixed with the uniform distribution by 1 - this


@dataclass(frozen=True)
class WorkingCropConfig:
    """Refiner training crops at the resolution the refiner runs at (`refine_cli.data.working_crops`): images scaled
    so their long side is `side` (the pipeline's refiner side; None: at their own size, for a refiner the pipeline
    runs at full resolution) times a random zoom, `size` x `size` crops redrawn (up to `max_tries` times) while they
    hold fewer than `min_labels` labels, at most `max_classes` class maps each."""

    size: int = 160
    side: int | None = 320
    zoom: tuple[float, float] = (0.7, 1.4)
    min_labels: int = 2
    max_tries: int = 10
    max_classes: int = 4
    flip: bool = True


@dataclass(frozen=True)
class CropConfig:
    """Training crops as released: 10 random 128x128 crops per image, redrawn (up to 10 times) while a crop
    holds fewer than 2 labels."""

    size: int = 128
    crops_per_image: int = 10
    min_labels: int = 2
    max_tries: int = 10


@dataclass(frozen=True)
class WeightsConfig:
    """Where checkpoints live besides the cache: the bundled folder (the environment variable moves it), the
    cache's sub-folders, the manifest of recorded sha256 sums, and the torchvision download host."""

    bundled_env_var: str = "REFINE_CLI_BUNDLED"
    suffix: str = ".pt"
    downloads_subdir: str = "downloads"
    checkpoints_subdir: str = "checkpoints"
    manifest_name: str = "manifest.json"
    torchvision_url: str = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class IOConfig:
    """Reading and writing images and masks.

    max_image_pixels: our decompression-bomb guard, checked on the header before decoding: 2**27 pixels
        (134 MP, e.g. 16384x8192, about 400 MB as RGB uint8). Above Pillow's warning threshold (89.5 MP) and
        below its hard error (179 MP); Pillow's own global `Image.MAX_IMAGE_PIXELS` is never changed, so its
        hard error still caps a larger value set here.
    alpha_background: transparent pixels (RGBA, LA, palette transparency) are composited over this colour.
    overlay_*: the look of `write_overlay` (JPEG quality, fill opacity, contour colour; the contour is
        `overlay_boundary_px` wide for every 512 pixels of the shorter side, at least 1).
    """

    image_suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
    max_image_pixels: int = 1 << 27
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    overlay_alpha: float = 0.5
    overlay_quality: int = 90
    overlay_boundary_colour: tuple[int, int, int] = (255, 255, 255)
    overlay_boundary_px: int = 1


@dataclass(frozen=True)
class CRFConfig:
    """Dense CRF (Kraehenbuehl & Koltun, NIPS 2011) as tuned for DeepLab-CRF-LargeFOV on VOC 2012 val
    (Chen et al., ICLR 2015; the deeplab-public README lists bi_w=4, bi_xy_std=121, bi_rgb_std=5, pos_w=3,
    pos_xy_std=3). The paper fixes 10 mean-field iterations and the smoothness kernel (w2=3, sigma_gamma=3)
    and cross-validates the appearance kernel on val images. The sigmas are in pixels and 0..255 colour
    units of ~500 px VOC images: rescale bilateral_sxy for much larger or smaller images.
    prob_floor: probabilities are clipped to this before the unary -log(p), as pydensecrf's
    `unary_from_softmax` (clip=1e-5).
    label_confidence: hard labels (masks made elsewhere) become probabilities with this share on the given label
        and the rest spread over the other classes (pydensecrf's `unary_from_labels` gt_prob; 0.7 in its examples).
    """

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 121.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 4.0
    prob_floor: float = 1e-5
    label_confidence: float = 0.7


@dataclass(frozen=True)
class CRFTuneConfig:
    """The grid `refine-cli evaluate --crf-tune-split` searches, on a split other than the one it scores.

    Every combination of the bilateral kernel's sxy, srgb and compat (and, for hard-label inputs, the label
    confidence) is run on `images` images spread evenly over the tuning split (consecutive video frames are near
    duplicates); the Gaussian kernel and the iteration count stay as set. The chosen setting maximises `criterion`
    over those images: "miou", "boundary_f" or "miou+boundary_f" (their sum); ties go to the first in grid order.
    The grid brackets what a wider search chose on three DAVIS training frames with ground truth coarsened at
    stride 8 (sxy 5, srgb 3, compat 4, confidence 0.9) and 16 (sxy 10, srgb 5, compat 10, confidence 0.8), where
    sxy 80 and srgb 20 did worst (`--crf-tune-limit 3 --crf-tune-grid "sxy=5,10,20,40,80 srgb=3,5,10,20
    compat=2,4,10 confidence=0.6,0.7,0.8,0.9"`). Per image: 24 bilateral lattices and, with hard labels, 72
    mean-field runs.
    """

    bilateral_sxy: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)
    bilateral_srgb: tuple[float, ...] = (3.0, 5.0, 10.0)
    bilateral_compat: tuple[float, ...] = (4.0, 10.0)
    label_confidence: tuple[float, ...] = (0.7, 0.8, 0.9)
    criterion: str = "miou+boundary_f"
    images: int = 6


@dataclass(frozen=True)
class PipelineConfig:
    """Inference defaults: the bundled networks, batching, the size networks run at, worker threads.

    base / refiner: names of the bundled default checkpoints (weights/<name>.pt): ESPNetv2 trained on PASCAL VOC (21
        classes, real photographs) and the colour-gated propagation refiner (a small learnt guidance, any classes).
    batch_size: None picks 8 on a GPU and 1 on a CPU (a CPU gains nothing from batching; a batch that runs out
        of GPU memory is halved and retried).
    max_side: images whose long side exceeds this are decoded scaled down to it and run at that size; their labels
        come back at full size.
    cpu_refiner_side / gpu_refiner_side: on that device, the long side above which the refiner runs on a scaled-down
        copy (image and coarse probabilities) and its logits are resized back; None: the working size. On a CPU the
        refiner's cost then stops growing with the image (at 512 px it costs about a third); on a GPU it is cheap at any
        size, so it runs at full resolution.
    """

    base: str = "espnetv2_voc"
    refiner: str = "spn_colour"
    gpu_batch_size: int = 8
    cpu_batch_size: int = 1
    max_side: int = 2048
    cpu_refiner_side: int | None = 256
    gpu_refiner_side: int | None = None
    decode_workers: int = 4
    write_workers: int = 2
    write_backlog: int = 4  # results waiting per writer thread before the networks pause for the disk


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule. The defaults are the SPN refiner as released (Liu et al. 2017):
    SGD, lr 1e-4, momentum 0.9, weight decay 5e-3, poly schedule lr * (1 - step / steps) ** 0.5, gradients
    clipped to a global L2 norm of 1000 (Caffe's `clip_gradients`).

    optimizer: an `Optimizer` value (Adam's beta1 is `momentum`; Adam/AdamW are useful to train compact nets from
        scratch).
    grad_clip: 0 turns clipping off.
    """

    optimizer: str = Optimizer.sgd.value
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-3
    poly_power: float = 0.5
    grad_clip: float = 1000.0


@dataclass(frozen=True)
class LoopConfig:
    """The step loop: length, seed, device, precision, data workers and how often it logs, evaluates and
    writes `last.pt`. 60k iterations is the released SPN schedule.

    device: "auto", "cpu", "cuda", "cuda:N" (under torchrun each process takes cuda:LOCAL_RANK).
    amp: an `Amp` value ("auto": bfloat16 autocast on CUDA, none on CPU; "fp16" adds a gradient scaler).
    deterministic: `torch.use_deterministic_algorithms` (warn-only) for the run: bitwise-repeatable on CPU.
    val_every: evaluate on the validation split every this many steps (and at the end); 0: only at the end.
    """

    steps: int = 60_000
    seed: int = 0
    device: str = "auto"
    amp: str = Amp.auto.value
    deterministic: bool = True
    workers: int = 2
    log_every: int = 20
    checkpoint_every: int = 1000
    val_every: int = 2000


@dataclass(frozen=True)
class DataConfig:
    """Which dataset a run trains on: root folder, layout ("voc", "helen", "folders", "camvid", "davis"), the training split, an
    optional validation split, and whether pairs that fail `refine_cli.data.validate` are dropped."""

    root: str = ""
    format: str = "voc"
    split: str = "train"
    val_split: str | None = None
    skip_bad: bool = False


@dataclass(frozen=True)
class BaseAugmentConfig:
    """Base-net augmentation, DeepLab style: random rescale in [scale_min, scale_max], a random crop_size
    square (padded with the network's mean colour, label 255), random horizontal flip."""

    crop_size: int = 321
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True


@dataclass(frozen=True)
class BaseTrainConfig:
    """Training a base segmenter. Optimizer defaults follow DeepLab (Chen et al.: SGD lr 1e-3, momentum 0.9,
    weight decay 5e-4, poly power 0.9, no clipping); batch, crop and step count are ours, sized for one GPU.

    arch_args: builder arguments on top of the registry's (e.g. {"width": 0.125}); num_classes comes from
        the dataset.
    aux_weight: weight of the auxiliary head's loss, for nets that have one (torchvision's recipe: 0.5).
    init: an `Init` value ("auto": the arch's ImageNet trunk when it is in the cache, else from scratch).
    init_from: a refine-cli checkpoint to start from instead (e.g. a trained front end).
    stage: a training stage the network defines (`model.trainable_parameters(stage)`), e.g. "context".
    """

    arch: str = "fcn8s_vgg16"
    arch_args: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 8
    augment: BaseAugmentConfig = field(default_factory=BaseAugmentConfig)
    aux_weight: float = 0.5
    init: str = Init.auto.value
    init_from: str | None = None
    stage: str | None = None
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=5e-4, poly_power=0.9, grad_clip=0.0)
    )
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=20_000))


@dataclass(frozen=True)
class RefinerTrainConfig:
    """Training an SPN refiner. The defaults are the recipe as released (Liu et al. 2017): 60k SGD steps
    (see `OptimConfig`), batches of 4 images x 10 random 128x128 crops redrawn while they hold fewer than 2
    labels (`CropConfig`), one joint random affine per image (`AugmentConfig`; None turns it off), coarse
    probabilities computed once by the base network and stored, label 255 ignored.

    base: the base checkpoint (name or path) whose probabilities the refiner learns to refine.
    probs: a `ProbsMode` value ("cache": computed once, stored as float16 under `probs_dir`, default the
        refine-cli cache; "live": recomputed for every batch).
    suppress_absent: validate with the released test-time rule (classes absent from the coarse argmax zeroed).
    init: as `BaseTrainConfig.init`, for the guidance network's ImageNet trunk.
    init_from: a refine-cli refiner checkpoint of the same arch to start from instead (fine-tuning a trained
        refiner, e.g. the bundled one, on new data or a new base network).

    crops: a `CropsMode` value: "released" (the recipe above) or "working" (`refine_cli.train.working`: universal
        refiners trained at the resolution the pipeline runs them at, `working` sets the crops). With "working":
    more_data: further datasets, each drawn as often as `data` whatever its size (splits and val splits their own).
    more_bases: further base networks; each serves the datasets whose class count it predicts.
    coarse: a `CoarseMode` value, where crops' coarse maps come from: "base" (the base networks' cached
        probabilities), "perturb" (ground truth made coarse, `perturb`; no base needed) or "mixed" (ground truth
        with chance `perturb_share`, a fitting base otherwise; datasets no base fits always use ground truth).
    hard_p: chance that a base network's map becomes one-hot (masks made elsewhere); perturbed ground truth has its
        own (`perturb.hard_p`).
    perturb_base_p: chance that a base network's map is itself perturbed (its argmax, as ground truth is): a
        network's outputs on the images it was trained on are better than anything it gives a user.
    boundary_weight: pixels within 2 px of a true label change weigh 1 + this in the loss.
    loss_band: None (the refiner's own rule, `refine_cli.models.contract.TrainsNearBoundaries`: every pixel for most),
        or count only the pixels within this many px of the coarse map's boundaries (0: every pixel).
    loss_clip: None (the refiner's own rule), or each pixel's loss clipped at this (0: not clipped).
    val_limit: validate on at most this many images per dataset (None: all).
    """

    arch: str = "spn_universal"
    arch_args: dict = field(default_factory=dict)
    base: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    images_per_batch: int = 4
    crop: CropConfig = field(default_factory=CropConfig)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    probs: str = ProbsMode.cache.value
    probs_dir: str | None = None
    suppress_absent: bool = True
    init: str = Init.auto.value
    init_from: str | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    crops: str = CropsMode.released.value
    working: WorkingCropConfig = field(default_factory=WorkingCropConfig)
    more_data: tuple[DataConfig, ...] = ()
    more_bases: tuple[str, ...] = ()
    coarse: str = CoarseMode.base.value
    perturb_share: float = 0.5
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    hard_p: float = 0.3
    perturb_base_p: float = 0.5
    boundary_weight: float = 0.0
    loss_band: int | None = None
    loss_clip: float | None = None
    val_limit: int | None = None

    @property
    def bases(self) -> tuple[str, ...]:
        return ((self.base,) if self.base else ()) + tuple(self.more_bases)


@dataclass(frozen=True)
class BenchConfig:
    """`refine-cli bench` defaults. Workloads are synthetic JPEGs of `size` x `size` rendered from `seed`
    (refine_cli.data.synth); times are medians of `repeats` runs. compare_images / crf_iterations: the refiner
    vs dense CRF comparison (the CRF at 5 mean-field iterations, as the speed target states it); scaling_sizes /
    scaling_batches: the image size x batch grid of `bench scaling`; kernel_shapes: the (N, C, H, W) scans
    `bench ops` times."""

    images: int = 32
    size: int = 512
    seed: int = 0
    repeats: int = 3
    compare_images: int = 8
    crf_iterations: int = 5
    scaling_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    scaling_batches: tuple[int, ...] = (1, 4)
    kernel_shapes: tuple[tuple[int, int, int, int], ...] = (
        (1, 32, 64, 64), (8, 32, 64, 64), (1, 32, 256, 256),
    )
    kernel_repeats: int = 5  # interleaved rounds of the kernel timings (`bench ops`, the bare base forward)
    cuda_kernel_repeats: int = 20  # CUDA kernel timings (events, after a synchronised warm-up)
    warmup: int = 1
