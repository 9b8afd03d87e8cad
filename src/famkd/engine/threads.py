"""How many intra-op threads a training process uses (`train.threads`; 0 = `auto_threads()`).

torch's default is one thread per core of the machine, whatever share of it this process may use. On a machine
whose cores are busy with other work (a shared workstation, a CI runner, a second training job), or in a
container with a CPU quota below the machine's cores, its OpenMP threads then outnumber the cores they get:
each parallel region ends at a barrier that waits for its slowest thread, and a thread that is descheduled for
a time slice (several ms) stalls all the others. See the README's "Shared machines".

The automatic value is the CPUs this process may run on (its affinity mask, as `taskset` or a batch scheduler
sets it), capped by the cgroup CPU quota (a container's `--cpus`, a Slurm or Kubernetes limit), divided among
the training processes torchrun starts on this host (LOCAL_WORLD_SIZE), and capped by OMP_NUM_THREADS where it
is set (the user's word; torchrun sets it to 1 when it starts several processes per host and it is unset); at
least 1. An explicit `train.threads=N` wins over all of these.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CPU_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def affinity_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; os.cpu_count() where the platform has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """The CPUs the cgroup quota allows (quota / period), or None without a quota: cgroup v2's `cpu.max`
    ("QUOTA PERIOD", QUOTA "max" for none), else v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1: none),
    under `root` (default CGROUP_ROOT)."""
    root = CGROUP_ROOT if root is None else root
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(quota, period)
    except (OSError, ValueError):
        pass
    for folder in V1_CPU_FOLDERS:
        try:
            quota = (root / folder / "cpu.cfs_quota_us").read_text().strip()
            period = (root / folder / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        try:
            return _ratio(quota, period)
        except ValueError:
            return None
    return None


def _ratio(quota: str, period: str) -> float | None:
    quota_us, period_us = int(quota), int(period)
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def auto_threads(affinity: int, cpu_limit: float | None, local_processes: int, omp_threads: int | None = None) -> int:
    """Threads per process: the `affinity` CPUs, capped by the quota's `cpu_limit` CPUs (rounded down: a thread
    on a fraction of a CPU is descheduled every period), shared by `local_processes` processes, at most
    `omp_threads` (OMP_NUM_THREADS) where set; at least 1."""
    cpus = affinity if cpu_limit is None else min(affinity, int(cpu_limit))
    threads = cpus // max(1, local_processes)
    if omp_threads is not None:
        threads = min(threads, omp_threads)
    return max(1, threads)


def omp_num_threads() -> int | None:
    """OMP_NUM_THREADS as a positive number of threads (its first entry, for a nested list), or None."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return None
    return value if value > 0 else None


def local_processes() -> int:
    """The training processes on this host: torchrun's LOCAL_WORLD_SIZE, 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def training_threads(setting: int) -> int:
    """The intra-op threads for `train.threads=setting` (0: this process's automatic value)."""
    if setting > 0:
        return setting
    return auto_threads(affinity_cpus(), cgroup_cpu_limit(), local_processes(), omp_num_threads())
