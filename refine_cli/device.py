"""Device choice shared by inference and training: "auto", "cpu", "cuda" or "cuda:N", never a silent fallback;
and one-line descriptions of a device and of the CPU (for logs and checkpoint provenance)."""

from __future__ import annotations

import os
import platform

import torch

from refine_cli.errors import DeviceError


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto": the first CUDA GPU when one is present, else the CPU. A GPU asked for by name that is not there
    raises DeviceError (one line saying what is available)."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device '{spec}' is not supported; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"device '{spec}' was asked for but no CUDA GPU is available; use --device cpu")
    index = device.index if device.index is not None else 0
    if index >= count:
        raise DeviceError(f"device '{spec}' does not exist: {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def cpu_name() -> str:
    """The CPU model as the OS names it (/proc/cpuinfo on Linux, else `platform.processor()`)."""
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def describe(device: torch.device) -> str:
    """A one-line human description: GPU name and memory, or CPU model and threads."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads of {os.cpu_count()} cores)"
