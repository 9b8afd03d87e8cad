"""`famkd bench` for resnet32x4 -> resnet8x4 and resnet56 -> resnet20, then the step-time ratios to KD.

    python benchmarks/bench_methods.py [--device cpu] [--steps 20] [--warmup 3] [--amp off|bf16|fp16]
                                       [--channels-last] [--compile] [--threads N] [--out DIR]
                                       [--methods vanilla,kd,reviewkd,fam_kd] [--no-memory]

Each pair runs in one `famkd bench` call (all methods interleaved in one process, batch 64);
its JSON goes to OUT/<teacher>_<student>[_<amp>].json. The last lines are the ratios, e.g.
"resnet32x4->resnet8x4 fam_kd/kd 1.45".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from famkd.cli import main as famkd_main

PAIRS = (("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--methods", default="vanilla,kd,reviewkd,fam_kd")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for teacher, student in PAIRS:
        suffix = "" if args.amp == "off" else f"_{args.amp}"
        json_path = out / f"{teacher}_{student}{suffix}.json"
        command = [
            "bench",
            "--teacher",
            teacher,
            "--student",
            student,
            "--methods",
            args.methods,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
            "--amp",
            args.amp,
            "--threads",
            str(args.threads),
            "--json",
            str(json_path),
        ]
        command += (
            ["--channels-last"] * args.channels_last + ["--compile"] * args.compile + ["--no-memory"] * args.no_memory
        )
        print("famkd " + " ".join(command), flush=True)
        status = famkd_main(command)
        if status != 0:
            return status
        for record in json.loads(json_path.read_text()):
            if record["ratio_to_kd"] is not None and record["method"] != "kd":
                summary.append(
                    f"{teacher}->{student} {record['method']}/kd {record['ratio_to_kd']:.2f}"
                    f"  ({record['ms_per_step']:.0f} ms/step, {record['device']}, amp {record['amp']})"
                )
        print(flush=True)
    print("ratios to kd (median step time, same process):")
    for line in summary:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
