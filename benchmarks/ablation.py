"""The default refiner's parts, one at a time, on the real val sets: each row adds one part to the row above (the
settings as `weights/bundle_colour.py` names them, every one chosen there on train; the last, the learnt guidance,
is the bundled file trained by `weights/train_colour_guidance.py`) and is scored by
`benchmarks/real_targets.py --no-crf` (each number one `refine-cli evaluate` command, recorded in the JSON).

    python benchmarks/ablation.py --json benchmarks/results/ablation.json

Writes one checkpoint per row under --work, prints the table (mIoU / boundary F at 2 px per set, coarse first).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from refine_cli import weights

ROOT = Path(__file__).resolve().parents[1]
BASES = ("espnet_camvid", "camvid_fcn8s_compact", "camvid_deeplab_largefov_compact")


def bundle_colour():
    spec = importlib.util.spec_from_file_location("bundle_colour", ROOT / "weights" / "bundle_colour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def steps(bundle) -> list[tuple[str, dict]]:
    scans = {"spatial_sigma": 40.0, "range_sigma": 0.2, "iterations": 2}
    reaching = {**bundle.GUARDED, "smooth_mask_range": 0.4, "smooth_mask_detail": (0.18, 0.45)}
    return [
        ("colour-gated scans, two iterations", scans),
        ("+ local colour models (colour_weight 1)", {**scans, "colour_weight": 1.0}),
        ("+ colour weight 3 for smooth hard masks, with its guards", bundle.GUARDED),
        ("+ longer reach and wider detail range for smooth masks", reaching),
        ("+ finer histograms for few classes (colour_bins)", bundle.BINNED),
        ("+ confident probabilities kept (confident_kept 16)", bundle.KEPT),
        ("+ colour models counted by the map's confidence (colour_confidence 1)", bundle.CONFIDENT),
        ("+ colour differences against the texture around them (texture_reach 10, range_sigma 0.17)",
         bundle.CHOSEN),
        # trained, not written here: the bundled file, made by weights/train_colour_guidance.py
        ("+ learnt guidance in the gates, apart along rows and columns (guidance 12, oriented: shipped)",
         {**bundle.CHOSEN, "guidance": 12, "guidance_oriented": True}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "ablation")
    parser.add_argument("--limit", type=int, help="score only the first N val images of each set")
    parser.add_argument("--json", type=Path, help="write every row's report and commands here")
    parser.add_argument("--reuse", type=Path,
                        help="an earlier --json: its rows with the same setting are taken from it, not run again (for "
                             "code that has not changed what they measure: each reproduces to the digit)")
    args = parser.parse_args()
    bundle = bundle_colour()
    args.work.mkdir(parents=True, exist_ok=True)
    earlier = {_key(row["setting"]): row for row in json.loads(args.reuse.read_text())["rows"]} if args.reuse else {}
    rows = []
    for index, (label, setting) in enumerate(steps(bundle)):
        if "guidance" in setting:  # its weights are the bundled file's, recorded by their hash
            checkpoint = ROOT / "weights" / f"{bundle.NAME}.pt"
            setting = {**setting, "sha256": weights.file_sha256(checkpoint)}
        if _key(setting) in earlier:
            print(f"kept from {args.reuse}: {label}", flush=True)
            rows.append({**earlier[_key(setting)], "label": label})
            continue
        if "guidance" not in setting:
            checkpoint = bundle.write(args.work / f"step{index}.pt", setting)
        report = args.work / f"step{index}.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "real_targets.py"), "--refiner", str(checkpoint),
                   "--no-crf", "--json", str(report), *(f"--base={base}" for base in BASES),
                   *(["--limit", str(args.limit)] if args.limit else [])]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        rows.append({"label": label, "setting": setting, "report": json.loads(report.read_text())})
    sets = list(rows[0]["report"]["reports"])
    print("\n| refiner | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    print("| coarse | " + " | ".join(_cell(rows[0]["report"]["reports"][s]["methods"][0]) for s in sets) + " |")
    for row in rows:
        print(f"| {row['label']} | " + " | ".join(_cell(row["report"]["reports"][s]["methods"][1]) for s in sets) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


def _key(setting: dict) -> str:
    """A row's identity: its setting as JSON stores it (tuples read back as lists)."""
    return json.dumps(json.loads(json.dumps(setting)), sort_keys=True)


def _cell(method: dict) -> str:
    return f"{100 * method['miou']:.2f} / {100 * method['boundary_f']:.2f}"


if __name__ == "__main__":
    main()
