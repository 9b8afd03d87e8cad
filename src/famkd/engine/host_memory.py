"""Keep freed host memory in the process, so large CPU tensors are not page-faulted in on every step.

glibc serves allocations above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps
them on free. A CPU training step allocates and frees tens of such tensors (a 64 x 256 x 32 x 32
float32 map is 64 MiB), so each one is zero-filled by the kernel page by page, every step: a
1x1 convolution's forward + backward on a map of that size measured 3.8x slower for it here. Turning mmap
off and trimming off makes freed blocks stay in the heap for the next step; the process keeps its
peak footprint instead of returning it to the system between steps.

The `famkd` command does this at start-up; FAMKD_RETAIN_HOST_MEMORY=0 leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int


def retain_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse; True if it was set, False where not applicable
    (not Linux, not glibc, or FAMKD_RETAIN_HOST_MEMORY=0)."""
    if os.environ.get("FAMKD_RETAIN_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # a C library without mallopt (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
