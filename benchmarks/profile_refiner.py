"""Where an SPN refiner's time goes: its own forward, each stage timed by hooks on the module that runs it.

    python benchmarks/profile_refiner.py [--refiner synth_spn_universal_compact] [--size 512] [--classes 8]
        [--json stages.json]

Stages: the guidance network, the stride-2 encoder, the propagation (4 directions x passes), the decoder's two
convolutions, and the rest of the forward (the bilinear upsampling of the hidden maps before a full-resolution
decoder, or of the logits after a half-resolution one: the refiner's `decode_at`), on one random image and
`--classes` random class maps (every class propagated: the worst case of the universal form), inference mode,
float32. Medians over `--repeats` calls of the refiner's own forward after one warm-up call. Prints milliseconds per
stage and their sum, which is the whole forward.
"""

from __future__ import annotations

import argparse
import json
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from refine_cli import weights
from refine_cli.device import resolve_device
from refine_cli.models.spn import SPNRefiner


class StageClock:
    """Forward hooks on named submodules: the seconds each one's forward took in the last call, the rest of the
    call attributed to `rest`."""

    def __init__(self, modules: dict[str, list[torch.nn.Module]], rest: str, sync: Callable[[], None]) -> None:
        self.rest, self.sync, self.seconds = rest, sync, {name: 0.0 for name in modules}
        self._started: dict[int, float] = {}
        for name, parts in modules.items():
            for module in parts:
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(functools.partial(self._stop, name))

    def _start(self, module: torch.nn.Module, _inputs: object) -> None:
        self.sync()
        self._started[id(module)] = time.perf_counter()

    def _stop(self, name: str, module: torch.nn.Module, _inputs: object, _output: object) -> None:
        self.sync()
        self.seconds[name] += time.perf_counter() - self._started.pop(id(module))

    def time(self, fn: Callable[[], object]) -> dict[str, float]:
        """Milliseconds per stage of one call of fn, the rest of it under `rest`."""
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        whole = time.perf_counter() - start
        return {**{k: 1000 * v for k, v in self.seconds.items()}, self.rest: 1000 * (whole - sum(self.seconds.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refiner", default="synth_spn_universal_compact", help="checkpoint name or path")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the stages' milliseconds here, in order")
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

    image = torch.randn(1, 3, s, s, generator=generator).to(device)
    coarse = torch.softmax(torch.randn(1, k, s, s, generator=generator), 1).to(device)

    upsampling = "upsampling of the hidden maps" if model.decode_at == "full" else "upsampling of the logits"
    decoder = f"decoder ({model.decode_at} resolution)"
    stages = {"guidance network": [model.guidance], "encoder": [model.encode],
              f"propagation ({model.propagation.passes} passes x 4 directions)": [model.propagation],
              decoder: [model.decode_mid, model.decode_out]}
    clock = StageClock(stages, f"{upsampling} and the rest", sync)
    with torch.inference_mode():
        model(image, coarse)  # warm-up
        calls = [clock.time(lambda: model(image, coarse)) for _ in range(args.repeats)]
    order = [*list(stages)[:3], *((decoder, clock.rest) if model.decode_at == "half" else (clock.rest, decoder))]
    times = {name: statistics.median(call[name] for call in calls) for name in order}

    print(f"{args.refiner} on {device}, {s}x{s}, {k} class maps, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats}")
    for name, ms in times.items():
        print(f"  {name:45s} {ms:9.1f} ms  {100 * ms / sum(times.values()):5.1f} %")
    print(f"  {'sum of the stages (the whole forward)':45s} {sum(times.values()):9.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"refiner": args.refiner, "size": s, "classes": k, "repeats": args.repeats,
                                         "stages_ms": times, "whole_ms": sum(times.values())}, indent=1) + "\n")


if __name__ == "__main__":
    main()
