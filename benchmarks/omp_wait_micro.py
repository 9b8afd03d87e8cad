"""Single ops at 1 and 2 threads, alone and beside a Python busy loop pinned to the last CPU (paused with SIGSTOP in
between): the cost of OpenMP's waits on a shared core, per parallel region.

    python benchmarks/omp_wait_micro.py                          # libgomp's default when torch loads first
    OMP_WAIT_POLICY=PASSIVE python benchmarks/omp_wait_micro.py  # what the famkd command sets
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def main() -> int:
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(max(os.sched_getaffinity(0)))])
    os.kill(busy.pid, signal.SIGSTOP)
    small, big = torch.randn(65536), torch.randn(1 << 23)
    a, b = torch.randn(256, 256), torch.randn(512, 512)
    cases = {
        "add 64k (a small region)": (lambda: small.add(1.0), 2000),
        "add 8M": (lambda: big.add(1.0), 20),
        "mm 256": (lambda: a @ a, 500),
        "mm 512": (lambda: b @ b, 50),
    }
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, (fn, calls) in cases.items():
                os.kill(busy.pid, signal.SIGSTOP)
                alone = seconds_per_call(fn, calls)
                os.kill(busy.pid, signal.SIGCONT)
                time.sleep(0.05)
                beside = seconds_per_call(fn, calls)
                os.kill(busy.pid, signal.SIGSTOP)
                print(
                    f"{policy:8} {threads} threads {name:26} alone {alone * 1e6:9.1f} us  "
                    f"beside {beside * 1e6:9.1f} us  {beside / alone:5.2f}x",
                    flush=True,
                )
    finally:
        busy.kill()
        busy.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
