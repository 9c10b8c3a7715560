"""Where an SPN refiner's time goes: each stage of `SPNRefiner.forward` timed on its own.

    python benchmarks/profile_refiner.py [--refiner synth_spn_universal_compact] [--size 512] [--classes 8]

Stages: the guidance network, the stride-2 encoder, the propagation (4 directions x passes), then the bilinear
upsampling of the hidden maps and the full-resolution decoder, or the half-resolution decoder and the upsampling of
the logits (the refiner's `decode_at`), on one random image and `--classes` random class maps (every class
propagated: the worst case of the universal form), inference mode, float32. Medians of `--repeats` calls after one
warm-up call. Prints milliseconds per stage and their sum next to the whole forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from refine_cli import weights
from refine_cli.device import resolve_device
from refine_cli.models.spn import SPNRefiner


def median_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refiner", default="synth_spn_universal_compact", help="checkpoint name or path")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = weights.build_model(weights.load_checkpoint(weights.resolve(args.refiner)))
    if not isinstance(model, SPNRefiner) or not model.per_class:
        raise SystemExit(f"{args.refiner} is not a universal SPN refiner")
    model = model.eval().float().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    s, k = args.size, args.classes

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    image = torch.randn(1, 3, s, s, generator=generator).to(device)
    coarse = torch.softmax(torch.randn(1, k, s, s, generator=generator), 1).to(device)

    with torch.inference_mode():
        gates = model.guidance(image)
        maps = coarse.reshape(k, 1, s, s)
        hidden = model.encode(maps)
        grouped = hidden.view(1, k, *hidden.shape[1:])
        propagated = model.propagation(grouped, gates).flatten(0, 1)
        stages = {
            "guidance network": lambda: model.guidance(image),
            "encoder": lambda: model.encode(maps),
            f"propagation ({model.propagation.passes} passes x 4 directions)": lambda: model.propagation(grouped, gates),
        }
        if model.decode_at == "full":
            up = resize(propagated)
            stages["upsampling of the hidden maps"] = lambda: resize(propagated)
            stages["decoder (full resolution)"] = lambda: model.decode_out(F.relu(model.decode_mid(up)))
        else:
            logits = model.decode_out(F.relu(model.decode_mid(propagated)))
            stages["decoder (half resolution)"] = lambda: model.decode_out(F.relu(model.decode_mid(propagated)))
            stages["upsampling of the logits"] = lambda: resize(logits)
        times = {name: median_ms(fn, args.repeats, sync) for name, fn in stages.items()}
        whole = median_ms(lambda: model(image, coarse), args.repeats, sync)

    print(f"{args.refiner} on {device}, {s}x{s}, {k} class maps, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats}")
    for name, ms in times.items():
        print(f"  {name:45s} {ms:9.1f} ms  {100 * ms / sum(times.values()):5.1f} %")
    print(f"  {'sum of the stages':45s} {sum(times.values()):9.1f} ms")
    print(f"  {'whole forward':45s} {whole:9.1f} ms")


if __name__ == "__main__":
    main()
