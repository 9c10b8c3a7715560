"""Train the learnt guidance of weights/spn_colour.pt (`refine_cli.models.gate_guidance`) on real training data, then
write the checkpoint with the settings weights/bundle_colour.py chose.

    python weights/train_colour_guidance.py                 # about 17 minutes on 2 CPU cores
    python weights/train_colour_guidance.py --resume        # go on from the last saved step

Training pairs (the val splits are never read):
- CamVid train, every 2nd frame, the probabilities of three real bases: the bundled ESPNet (on every other of those
  frames run on the frame scaled down to 0.35 and back, since its own training frames are nearly right: the errors
  of a network on images it has not seen), the compact FCN-8s and the compact DeepLab-LargeFOV; half the crops
  drawn take the hard mask (the argmax, one-hot) instead, as `refine --masks` gets it.
- DAVIS train sequences (`refine_cli.data.davis.DAVIS_VAL_SEQUENCES` held out), every frame: the ground truth
  coarsened like a stride-8 and a stride-16 network's (`refine-cli data coarsen`, enlarged as blocks and bilinearly:
  blocky masks and smooth but accurate ones), perturbed once (`refine_cli.data.perturb`: warped, grown or shrunk,
  holes and blobs, blurred), and the bundled ESPNetv2-VOC's foreground.
A crop comes from CamVid with probability 0.75 (`--street-share`), else from DAVIS. Each step averages the loss
over 4 random 224 px crops (flipped half the time) refined by the whole `spn_colour` with the guidance in its gates
(oriented unless --no-oriented: its maps apart for the links along rows and along columns), its other settings
fixed. The loss is the negative log-likelihood of the true class, clipped at 3 (a pixel the coarse map is
confidently wrong about, which no propagation can fix, would otherwise teach the guidance to blur everything) and
counted within 8 px of the coarse map's boundaries, where the refiner acts. Adam, learning rate 2e-3 on a cosine schedule.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refine_cli import models, weights
from refine_cli.data import open_dataset
from refine_cli.data.coarsen import coarsen_labels
from refine_cli.data.perturb import perturb
from refine_cli.labels import IGNORE_INDEX
from refine_cli.models.colour_spn import PROB_FLOOR
from refine_cli.pipeline import Refiner
from refine_cli.train.working import refiner_loss

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bundle_colour import CHOSEN, NAME, write  # noqa: E402

CAMVID_BASES = ("espnet_camvid", "camvid_fcn8s_compact", "camvid_deeplab_largefov_compact")
PROXY_BASE, PROXY_SCALE = "espnet_camvid", 0.35


def scaled_down_and_back(images: torch.Tensor, factor: float) -> torch.Tensor:
    height, width = images.shape[-2:]
    small = F.interpolate(images, scale_factor=factor, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def training_pairs(real: Path, proxy_every: int = 2) -> tuple[list, list]:
    """Street scenes and object videos: each a list of (image uint8 (3, H, W), coarse probabilities float16 (K, H, W),
    labels uint8 (H, W), may_be_hardened)."""
    pairs = []
    camvid = open_dataset(real / "camvid", format="camvid", split="train")
    frames = [camvid[i] for i in range(0, len(camvid), 2)]
    for base in CAMVID_BASES:
        engine = Refiner(base=base, refiner=None, device="cpu").engine
        for j, sample in enumerate(frames):
            image = sample.image.float()[None] / 255
            if base == PROXY_BASE and j % proxy_every == 0:
                image = scaled_down_and_back(image, PROXY_SCALE)
            with torch.inference_mode():
                probabilities = engine.base_probs(image)[0]
            pairs.append((sample.image, probabilities.half(), sample.label.to(torch.uint8), True))
        print(f"CamVid train, {base}: {len(frames)} frames", flush=True)
    davis = open_dataset(real / "davis", format="davis", split="train")
    engine = Refiner(base="espnetv2_voc", refiner=None, device="cpu").engine
    generator = torch.Generator().manual_seed(0)
    objects = []
    for i in range(len(davis)):
        sample = davis[i]
        labels = sample.label.numpy().astype(np.int64)
        masks = [torch.from_numpy(coarsen_labels(labels, 2, stride, upsample=upsample))
                 for stride in (8, 16) for upsample in ("nearest", "bilinear")]
        with torch.inference_mode():
            masks.append((engine.base_probs(sample.image.float()[None] / 255)[0].argmax(0) != 0).long())
        coarse = [F.one_hot(mask.clamp(0, 1), 2).permute(2, 0, 1) for mask in masks]
        coarse.append(perturb(sample.label.long(), 2, rng=generator))
        objects += [(sample.image, c.half(), sample.label.to(torch.uint8), False) for c in coarse]
    print(f"DAVIS train: {len(davis)} frames x {len(objects) // len(davis)} coarse masks", flush=True)
    return pairs, objects


def crop(pair, size: int, rng: random.Random):
    """A random crop (image float (1, 3, s, s), coarse (1, K', s, s) over the K' classes its argmax holds, target
    (s, s) int64 into those, 255 elsewhere and on ignored pixels), or None with fewer than two classes."""
    image, coarse, labels, may_be_hardened = pair
    height, width = labels.shape
    top, left = rng.randrange(height - size + 1), rng.randrange(width - size + 1)
    image = image[:, top:top + size, left:left + size].float()[None] / 255
    coarse = coarse[:, top:top + size, left:left + size].float()[None]
    labels = labels[top:top + size, left:left + size].long()
    if rng.random() < 0.5:
        image, coarse, labels = image.flip(-1), coarse.flip(-1), labels.flip(-1)
    if may_be_hardened and rng.random() < 0.5:
        coarse = F.one_hot(coarse.argmax(1), coarse.shape[1]).movedim(-1, 1).float()
    present = torch.unique(coarse.argmax(1))
    if len(present) < 2:
        return None
    coarse = coarse[:, present]
    coarse = coarse / coarse.sum(1, keepdim=True).clamp_min(1e-6)
    index = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
    index[present] = torch.arange(len(present))
    return image, coarse, index[labels]


def band_loss(refined: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor, band: int,
              clip: float) -> torch.Tensor | None:
    """The crop's loss as `refine-cli train refiner` counts it for this refiner (`refiner_loss`: the clipped
    negative log-likelihood of `target` under (1, K, H, W) probabilities within `band` px of the coarse argmax's
    boundaries), averaged over those pixels (None with fewer than 50 of them)."""
    total, count = refiner_loss(refined.clamp_min(PROB_FLOOR).log(), target[None], coarse, band=band, clip=clip)
    return None if int(count) < 50 else total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "colour_guidance")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.pt")
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--oriented", action=argparse.BooleanOptionalAction, default=True, help="the guidance's "
                        "maps apart for the links along rows and along columns (--no-oriented: one pair for both)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--band", type=int, default=8)
    parser.add_argument("--clip", type=float, default=3.0)
    parser.add_argument("--street-share", type=float, default=0.75, help="the share of crops drawn from CamVid (the "
                        "rest from DAVIS)")
    parser.add_argument("--proxy-every", type=int, default=2, help="ESPNet's maps of every N-th CamVid frame come "
                        "from the frame scaled down and back (its own training frames are nearly right)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="go on from --work/state.pt")
    args = parser.parse_args()
    if args.proxy_every < 1:
        parser.error(f"--proxy-every must be at least 1, got {args.proxy_every}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    settings = {**CHOSEN, "guidance": args.channels, "guidance_oriented": args.oriented}
    model = models.spec(NAME).builder(**models.arch_args(NAME, **settings))
    model.backend = "torch"  # the C++ kernels have no backward
    model.train()
    parameters = list(model.guidance.parameters())
    optimiser = torch.optim.Adam(parameters, args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, args.steps) / args.steps)))
    args.work.mkdir(parents=True, exist_ok=True)
    state_path, start = args.work / "state.pt", 0
    if args.resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.guidance.load_state_dict(state["guidance"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["step"])
        rng.seed(args.seed + start)
        torch.manual_seed(args.seed + start)
        print(f"resumed at step {start}", flush=True)
    streets, objects = training_pairs(args.real, args.proxy_every)
    began, running = time.time(), None
    for step in range(start, args.steps):
        optimiser.zero_grad()
        losses = []
        while len(losses) < args.batch:
            drawn = crop(rng.choice(streets if rng.random() < args.street_share else objects), args.crop, rng)
            if drawn is None:
                continue
            image, coarse, target = drawn
            loss = band_loss(model.refine_probabilities(image, coarse), coarse, target, args.band, args.clip)
            if loss is None:
                continue
            (loss / args.batch).backward()
            losses.append(float(loss.detach()))
        optimiser.step()
        schedule.step()
        mean = sum(losses) / len(losses)
        running = mean if running is None else 0.98 * running + 0.02 * mean
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}: loss {running:.4f} ({time.time() - began:.0f} s)", flush=True)
        if (step + 1) % 300 == 0 or step + 1 == args.steps:
            torch.save({"guidance": model.guidance.state_dict(), "optimiser": optimiser.state_dict(),
                        "schedule": schedule.state_dict(), "step": step + 1}, state_path)
    model.eval()
    path = write(args.out, settings, state=model.state_dict(), learnt={
        "trained_by": "weights/train_colour_guidance.py",
        "trained_on": "CamVid train (three real bases) and the DAVIS train sequences",
        "steps": args.steps, "seed": args.seed, "street_share": args.street_share,
        "proxy_every": args.proxy_every})
    weights.record_file(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
