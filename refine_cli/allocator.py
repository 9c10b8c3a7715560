"""The host allocator's settings for a CPU run (no torch import: the command calls this before loading anything).

A refinement frees and allocates the same few full-size maps for every image (class maps of a 480 x 360 frame: a
few MB each). glibc's malloc serves blocks that size with fresh mmaps or returns them to the system when the top of
its heap is free, so every allocation page-faults its memory in again. Measured on a 2-core Intel Xeon with `refine-cli
bench pipeline --images examples/camvid --base espnet_camvid` at one thread, three runs each: the refiner took
43-48 ms per frame with glibc's defaults, 37-39 ms with these settings. The price is memory kept for reuse: peak
resident memory of `refine-cli refine` over 20 CamVid frames 434 MB against 414, over six 854 x 480 DAVIS frames
with the default networks 597 MB against 576. Elsewhere (macOS, musl, jemalloc or tcmalloc
preloaded) this changes nothing.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems: blocks below it come from the heap
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before any is returned to the system
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse instead of returning them to the system.
    Leaves the allocator alone when the user set its tunables in the environment, or when the C library has no
    `mallopt`. Returns whether both settings were applied. Process-wide: the `refine-cli` command calls it; library
    users may call it themselves."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
