"""What a busy neighbour costs: `famkd bench --competitor` under several OpenMP / torch settings, each in its own
process (OMP_WAIT_POLICY is read when the OpenMP runtime starts).

    python benchmarks/bench_competitor.py [--teacher resnet56] [--student resnet20] [--steps 5] [--warmup 1]
                                          [--variants famkd,passive,gomp,active,spin10k,spin1k,...] [--out DIR]

Each variant prints kd's and fam_kd's median step time alone and beside a Python busy loop pinned to one CPU, at 1
and 2 threads, and the slowdown; the last lines sum them up, one per variant, thread count and method.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ""),  # a waiting thread sleeps at once (README, Shared machines)
    "famkd": ({}, ""),  # the famkd command's default: 1000 rounds if busy at start (famkd.cli.short_openmp_spins)
    "gomp": ({"GOMP_SPINCOUNT": "300000"}, ""),  # libgomp's own default: spin 300000 rounds, then sleep
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, ""),  # and spin
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, ""),  # libgomp spins 10000 rounds (default 300000), then sleeps
    "spin1k": ({"GOMP_SPINCOUNT": "1000"}, ""),  # and 1000 rounds (libgomp's own count when threads outnumber CPUs)
    "interop1": ({"GOMP_SPINCOUNT": "300000"}, "torch.set_num_interop_threads(1); "),  # on libgomp's default
    # malloc returns freed blocks to the system (famkd.engine.host_memory), on libgomp's default
    "no_retain": ({"GOMP_SPINCOUNT": "300000", "FAMKD_RETAIN_HOST_MEMORY": "0"}, ""),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--methods", default="kd,fam_kd")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", default="1,2", help="thread counts (--competitor-threads)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for variant in args.variants.split(","):
        env_changes, prelude = VARIANTS[variant]
        json_path = out / f"competitor_{variant}.json"
        argv = [
            "bench", "--competitor", "--device", "cpu", "--teacher", args.teacher, "--student", args.student,
            "--methods", args.methods, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--competitor-threads", args.threads, "--json", str(json_path),
        ]  # fmt: skip
        code = f"import sys; from famkd.cli import main; import torch; {prelude}sys.exit(main({argv!r}))"
        print(f"== {variant} {env_changes or ''}", flush=True)
        completed = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env_changes})
        if completed.returncode != 0:
            return completed.returncode
        for record in json.loads(json_path.read_text()):
            summary.append(
                f"{variant:<10} {record['threads']} threads {record['method']:<8} "
                f"{record['ms_per_step_alone']:8.1f} -> {record['ms_per_step_with_competitor']:8.1f} ms  "
                f"{record['slowdown']:.2f}x"
            )
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
