"""Write weights/spn_colour.pt, the colour-gated propagation refiner (`refine_cli.models.colour_spn`), and choose
its settings on training data only.

    python weights/bundle_colour.py --grid    # score each setting on the train splits, print the table
    python weights/train_colour_guidance.py   # write the checkpoint: the chosen setting and its trained guidance

The grid scores `refine-cli evaluate` on DAVIS train sequences (ground truth coarsened like a stride-8 and a
stride-16 network, blocks upsampled by pixel replication) and on CamVid train (the hard masks of each base network
named by --camvid-bases, as `refine --masks` gets them, and the probabilities of each named by
--camvid-probabilities, as `refine` gets them from the base), every image of each (or the first --limit). The setting
kept is, among those that lower no set's mIoU (do no harm first), the one with the largest sum of mIoU and boundary F
gains over the sets; for the smooth-mask weight also no set's mIoU more than 0.05 below the plain weight's (the
model card says why). The val splits are never looked at here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from refine_cli import models, weights

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "spn_colour"
# The setting shipped before confident_kept: the base of the last grid rows.
BINNED = {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "rounds": 1, "colour_weight": 1.0,
          "colour_block": 32, "colour_bins": 5632, "smooth_mask_weight": 3.0, "smooth_mask_detail": (0.18, 0.45),
          "smooth_mask_alignment": (1.2, 1.4), "smooth_mask_kept": (1.4, 1.6), "smooth_mask_range": 0.4}
KEPT = {**BINNED, "confident_kept": 16.0}  # the setting shipped before colour_confidence
CONFIDENT = {**KEPT, "colour_confidence": 1.0}  # the setting shipped before texture_reach
CHOSEN = {**CONFIDENT, "texture_reach": 10, "range_sigma": 0.17}
# The setting shipped before smooth_mask_range: the base of the later grid rows.
GUARDED = {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 1.0, "smooth_mask_weight": 3.0,
           "smooth_mask_detail": (0.18, 0.33), "smooth_mask_alignment": (1.2, 1.4), "smooth_mask_kept": (1.4, 1.6)}
GRID = [
    {"spatial_sigma": 20.0, "range_sigma": 0.1, "iterations": 2},
    {"spatial_sigma": 40.0, "range_sigma": 0.1, "iterations": 2},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2},
    {"spatial_sigma": 40.0, "range_sigma": 0.4, "iterations": 2},
    {"spatial_sigma": 80.0, "range_sigma": 0.2, "iterations": 3},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "rounds": 2},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "rounds": 3},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 0.5},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 1.0},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 1.5},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 2.0},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 1.0, "colour_block": 64},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 1.5, "colour_block": 64},
    {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 2.0, "colour_block": 64},
    *({"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2, "colour_weight": 1.0, "smooth_mask_weight": w,
       "smooth_mask_detail": (0.18, 0.33)} for w in (2.0, 3.0, 4.0, 5.0)),
    # The setting shipped before smooth_mask_range (with its guards), then a longer reach for smooth masks.
    GUARDED,
    *({**GUARDED, "smooth_mask_range": r} for r in (0.3, 0.4, 0.6)),
    # ... and a wider range of detail that counts as smooth.
    *({**GUARDED, "smooth_mask_range": 0.4, "smooth_mask_detail": (0.18, high)} for high in (0.45, 0.6)),
    # ... and finer colour histograms where there are fewer classes (colour_bins over 8^3 = 512 per class).
    *({**GUARDED, "smooth_mask_range": 0.4, "smooth_mask_detail": (0.18, 0.45), "colour_bins": bins}
      for bins in (512 * 6, 512 * 11, 512 * 16)),
    # Around the chosen setting again, once all of it is in place: the smooth-mask weight and reach.
    *({**BINNED, "smooth_mask_weight": w} for w in (2.5, 4.0)),
    *({**BINNED, "smooth_mask_range": r} for r in (0.3, 0.5)),
    {**BINNED, "smooth_mask_weight": 1.0},  # the plain weight: the guard's reference
    # Probabilities' confident pixels kept as given (scored with --camvid-probabilities).
    BINNED,
    *({**BINNED, "confident_kept": g} for g in (8.0, 16.0, 32.0)),
    # colour_bins again, now that the grid scores probabilities too (8 levels throughout, then fewer bins).
    *({**KEPT, "colour_bins": bins} for bins in (None, 512 * 6)),
    # Colour models counted by the propagated map's confidence (its margin to this power).
    *({**KEPT, "colour_confidence": c} for c in (1.0, 1.5, 2.0)),
    # Colour differences measured against the texture around them, at the range and a smaller one.
    *({**CONFIDENT, "texture_reach": 10, "range_sigma": r} for r in (0.2, 0.17)),
]


def write(path: Path, args: dict, metrics: dict | None = None, *, state: dict | None = None,
          learnt: dict | None = None) -> Path:
    """The checkpoint of `args`; with a learnt guidance (args["guidance"]), its trained `state` and how it was trained
    (`learnt`, weights/train_colour_guidance.py)."""
    spec = models.spec(NAME)
    full = models.arch_args(NAME, **args)
    if (state is None) != (full.get("guidance") is None):
        raise SystemExit("a learnt guidance needs its trained weights: python weights/train_colour_guidance.py")
    model = spec.builder(**full)
    if state is not None:
        model.load_state_dict(state)
    meta = weights.CheckpointMeta(
        classes=(), preprocess=spec.preprocess, metrics=metrics or {},
        provenance={"source": "weights/bundle_colour.py", "learnt": state is not None, **(learnt or {}),
                    "chosen_on": "DAVIS train sequences and CamVid train (weights/bundle_colour.py --grid)"},
    )
    ckpt = weights.checkpoint_from_model(model, arch=NAME, arch_args=full, meta=meta)
    return weights.save_checkpoint(path, ckpt)


def cli(*args: str) -> None:
    print("$ refine-cli", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "refine_cli", *args], check=True, cwd=ROOT)


def grid(real: Path, work: Path, limit: int | None, rows: list[int], camvid_bases: list[str],
         camvid_probabilities: list[str]) -> None:
    davis, camvid = real / "davis", real / "camvid"
    sets = {}
    for stride in (8, 16):
        out = work / f"davis_s{stride}_nearest"
        if not out.is_dir():
            cli("data", "coarsen", str(davis), str(out), "--format", "davis", "--split", "all", "--stride", str(stride),
                "--upsample", "nearest")
        sets[f"DAVIS train s{stride}"] = ["--data", str(davis), "--format", "davis", "--masks", str(out)]
    for base in camvid_bases:
        masks = work / f"camvid_{base}"
        if not (masks / "masks").is_dir():
            cli("segment", str(camvid / "train" / "images"), "--base", base, "--out", str(masks), "--no-overlay")
        sets[f"CamVid train, {base} masks"] = ["--data", str(camvid), "--format", "camvid", "--masks",
                                              str(masks / "masks")]
    for base in camvid_probabilities:  # the base runs again for each row: its probabilities are not stored
        sets[f"CamVid train, {base} probabilities"] = ["--data", str(camvid), "--format", "camvid", "--base", base]
    table = []
    for args in (GRID[i] for i in rows):
        with tempfile.TemporaryDirectory() as tmp:
            path = write(Path(tmp) / f"{NAME}.pt", args)
            gains, cells = 0.0, []
            for name, data in sets.items():
                report_path = Path(tmp) / "report.json"
                cli("evaluate", *data, "--split", "train", "--refiner", str(path),
                    *(["--limit", str(limit)] if limit else []), "--json", str(report_path))
                coarse, refined = json.loads(report_path.read_text())["methods"][:2]
                d_miou, d_bf = (100 * (refined[k] - coarse[k]) for k in ("miou", "boundary_f"))
                gains += d_miou + d_bf
                cells.append(f"{100 * coarse['miou']:.2f}/{100 * coarse['boundary_f']:.2f} -> "
                             f"{100 * refined['miou']:.2f}/{100 * refined['boundary_f']:.2f}")
        table.append((gains, args, cells))
    print("\n| spatial_sigma | range_sigma | iterations | rounds | colour_weight | colour_block | smooth_mask_weight | "
          "smooth_mask_detail | guards | smooth_mask_range | colour_bins | confident_kept | colour_confidence | "
          "texture_reach | "
          + " | ".join(sets)
          + " | sum of gains |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(sets) + "---|")
    for gains, args, cells in table:
        weight = args.get("colour_weight", 0.0)
        print(f"| {args['spatial_sigma']:g} | {args['range_sigma']:g} | {args['iterations']} | {args.get('rounds', 1)} | "
              f"{weight:g} | {args.get('colour_block', 32) if weight else '-'} | "
              f"{args.get('smooth_mask_weight') or '-'} | "
              f"{'-' if args.get('smooth_mask_weight') is None else tuple(args['smooth_mask_detail'])} | "
              f"{'yes' if args.get('smooth_mask_alignment') else '-'} | "
              f"{args.get('smooth_mask_range') or '-'} | {args.get('colour_bins') or '-'} | "
              f"{args.get('confident_kept') or '-'} | {args.get('colour_confidence') or '-'} | "
              f"{args.get('texture_reach') or '-'} | " + " | ".join(cells)
              + f" | {gains:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", action="store_true", help="score the settings on the train splits")
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "bundle_colour")
    parser.add_argument("--limit", type=int, help="score only the first N images of each set")
    parser.add_argument("--camvid-bases", default="espnet_camvid",
                        help="comma-separated base networks whose CamVid train masks are scored ('' for none)")
    parser.add_argument("--camvid-probabilities", default="",
                        help="comma-separated base networks whose CamVid train probabilities are scored")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(GRID))),
                        help="which settings of the grid to score, by index (default: all)")
    args = parser.parse_args()
    if args.grid:
        args.work.mkdir(parents=True, exist_ok=True)
        grid(args.real, args.work, args.limit, [int(i) for i in args.rows.split(",")],
             [b for b in args.camvid_bases.split(",") if b], [b for b in args.camvid_probabilities.split(",") if b])
        return
    # The bundled file also holds the learnt guidance, which only training makes: writing the settings alone here
    # would replace it with a refiner without one.
    raise SystemExit(f"weights/{NAME}.pt is written by python weights/train_colour_guidance.py (the chosen setting and "
                     "its trained guidance); this script chooses the settings (--grid)")


if __name__ == "__main__":
    main()
