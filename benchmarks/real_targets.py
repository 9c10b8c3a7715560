"""The refiner on real photographs, as the README's real-data tables report it: every number is one `refine-cli
evaluate` command, printed and recorded with its result.

Coarse inputs (made once under --work, each by a command printed here):
- DAVIS (val: the three held-out sequences): ground truth coarsened like a stride-8 and a stride-16 network's output,
  enlarged as blocks (`refine-cli data coarsen --upsample nearest`), and the foreground (every class but background) of
  the bundled ESPNetv2-VOC network;
- CamVid (val): each base network's probabilities (`evaluate --base`) and its hard masks (`refine-cli segment`).
The dense CRF is tuned on the train split of the same kind of input (`--crf-tune-split train`), never on val.

    python benchmarks/real_targets.py --refiner spn_colour \\
        --json benchmarks/results/real_targets.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "refine_cli"]
# Blocks enlarged by pixel replication: of the forms tried, the closest to masks a real stride-8/16 network gives
# (bilinear upsampling gives far smoother boundaries, BF 94 at stride 8 against 69).
DAVIS_SETS = [(f"s{s}_nearest", s, "nearest") for s in (8, 16)]
CAMVID_BASES = ("espnet_camvid", "camvid_fcn8s_compact", "camvid_deeplab_largefov_compact")


def run(args: list[str], log: list[str]) -> None:
    log.append(shlex.join(["refine-cli", *args]))
    print("$", log[-1], flush=True)
    subprocess.run([*CLI, *args], check=True, cwd=ROOT)


def prepare_davis(real: Path, work: Path, log: list[str]) -> dict[str, Path]:
    sets = {}
    for name, stride, upsample in DAVIS_SETS:
        out = work / f"davis_{name}"
        if not out.is_dir():
            run(["data", "coarsen", str(real / "davis"), str(out), "--format", "davis", "--split", "all",
                 "--stride", str(stride), "--upsample", upsample], log)
        sets[f"davis {name}"] = out
    out = work / "davis_espnetv2_foreground"
    if not out.is_dir():
        log.append(f"python benchmarks/real_targets.py (foreground of espnetv2_voc on DAVIS) -> {out}")
        foreground_masks(real / "davis", out)
    sets["davis espnetv2 foreground"] = out
    return sets


def foreground_masks(davis: Path, out: Path) -> None:
    """The bundled ESPNetv2-VOC network's foreground (every class but background) on every DAVIS frame, as 0/255
    masks mirroring the dataset's tree."""
    from refine_cli import io
    from refine_cli.data import open_dataset
    from refine_cli.pipeline import Failure, Refiner

    dataset = open_dataset(davis, format="davis", split="all")
    model = Refiner(base="espnetv2_voc", refiner=None, device="cpu")
    paths = [pair.image for pair in dataset.pairs]
    where = {pair.image: dataset.relative_path(pair) for pair in dataset.pairs}
    for result in model.refine_paths(paths):
        if isinstance(result, Failure):
            raise SystemExit(f"cannot segment {result.path}: {result.reason}")
        target = io.safe_output_path(out, where[Path(result.path)], ".png")
        io.write_binary_mask(target, (np.asarray(result.labels) != 0).astype(np.int64))


def prepare_camvid(real: Path, work: Path, bases: list[str], log: list[str]) -> dict[str, Path]:
    sets = {}
    for base in bases:
        out = work / f"camvid_{Path(base).stem}"
        if not (out / "masks").is_dir():
            run(["segment", str(real / "camvid" / "train" / "images"), str(real / "camvid" / "val" / "images"),
                 "--base", base, "--out", str(out), "--no-overlay"], log)
        sets[f"camvid {Path(base).stem} hard"] = out / "masks"
    return sets


def evaluate(args: list[str], json_path: Path, log: list[str]) -> dict:
    run([*args, "--json", str(json_path)], log)
    return json.loads(json_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refiner", default="default", help="refiner checkpoint (name or path)")
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "real_targets")
    parser.add_argument("--base", action="append", help="CamVid base networks (default: the bundled ESPNet)")
    parser.add_argument("--sets", default="davis,camvid", help="davis, camvid or both")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--limit", type=int, help="score only the first N val images of each set")
    parser.add_argument("--json", type=Path, help="write every report and command here")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    bases = args.base or list(CAMVID_BASES)
    common = ["--refiner", args.refiner, "--split", "val"]
    if args.limit:
        common += ["--limit", str(args.limit)]
    crf = ["--crf", "--crf-tune-split", "train"] if args.crf else []
    reports = {}
    if "davis" in args.sets:
        for name, folder in prepare_davis(args.real, work, log).items():
            reports[name] = evaluate(["evaluate", "--data", str(args.real / "davis"), "--format", "davis",
                                      "--masks", str(folder), *common, *crf],
                                     work / f"{name.replace(' ', '_')}.json", log)
    if "camvid" in args.sets:
        camvid = ["--data", str(args.real / "camvid"), "--format", "camvid"]
        for base in bases:
            name = f"camvid {Path(base).stem} probs"
            reports[name] = evaluate(["evaluate", *camvid, "--base", base, *common, *crf],
                                     work / f"{name.replace(' ', '_')}.json", log)
        for name, folder in prepare_camvid(args.real, work, bases, log).items():
            reports[name] = evaluate(["evaluate", *camvid, "--masks", str(folder), *common, *crf],
                                     work / f"{name.replace(' ', '_')}.json", log)
    rows = [table_row(name, report) for name, report in reports.items()]
    print()
    print("| input | coarse mIoU / BF | + SPN | gain | + tuned CRF | gain | SPN ms |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row["markdown"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"refiner": args.refiner, "commands": log, "rows": rows,
                                         "reports": reports}, indent=1) + "\n")


def table_row(name: str, report: dict) -> dict:
    methods = {m["method"]: m for m in report["methods"]}
    first = report["methods"][0]
    spn = next((m for m in report["methods"][1:] if "SPN" in m["method"]), None)
    crf = next((m for m in report["methods"][1:] if "CRF" in m["method"]), None)

    def cell(m: dict | None) -> str:
        return "-" if m is None else f"{100 * m['miou']:.2f} / {100 * m['boundary_f']:.2f}"

    def gain(m: dict | None) -> str:
        if m is None:
            return "-"
        return f"{100 * (m['miou'] - first['miou']):+.2f} / {100 * (m['boundary_f'] - first['boundary_f']):+.2f}"

    ms = f"{spn['ms_per_image']:.0f}" if spn is not None else "-"
    markdown = f"| {name} | {cell(first)} | {cell(spn)} | {gain(spn)} | {cell(crf)} | {gain(crf)} | {ms} |"
    return {"input": name, "methods": list(methods), "markdown": markdown,
            "coarse": {"miou": first["miou"], "boundary_f": first["boundary_f"]},
            "spn": None if spn is None else {"miou": spn["miou"], "boundary_f": spn["boundary_f"]},
            "crf": None if crf is None else {"miou": crf["miou"], "boundary_f": crf["boundary_f"]}}


if __name__ == "__main__":
    main()
