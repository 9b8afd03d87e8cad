"""Profile the training step of a few methods (torch.profiler, CPU) and print each one's top ops by self time.

    python benchmarks/profile_step.py [--teacher resnet56] [--student resnet20] [--methods kd,fam_kd]
                                      [--batch-size 64] [--threads 2] [--steps 5] [--top 15]

Each method is built as `famkd bench` builds it (a fresh student and heads, the trainer's optimiser, one random
batch, one shared random teacher) and takes 3 untimed steps, then `--steps` profiled steps. The table per method
lists the ops with the largest self CPU time over the profiled steps, per step, and the step's total; the ops'
shapes are grouped so that, e.g., the FAM's FFTs of each level appear separately.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from famkd.bench import BENCH_EPOCH, DEFAULT_IMAGE_SIZE, TRAIN_SET_SIZE, build_method, random_batch, training_step
from famkd.engine.device import autocast_factory
from famkd.engine.host_memory import retain_freed_memory
from famkd.models import create_model

WARMUP_STEPS = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--methods", default="kd,fam_kd")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--shapes", action="store_true", help="group the ops by input shape too")
    args = parser.parse_args()
    args.image_size, args.num_classes, args.channels_last = DEFAULT_IMAGE_SIZE, 100, False
    args.amp, args.compile = "off", False
    retain_freed_memory()  # as the famkd command does
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    images, labels = random_batch(args.batch_size, args.image_size, args.num_classes, device, False)
    teacher = create_model(args.teacher, num_classes=args.num_classes, image_size=args.image_size)
    indices = torch.randperm(TRAIN_SET_SIZE)[: args.batch_size]
    autocast = autocast_factory("off", device)
    print(f"{args.teacher}->{args.student}, batch {args.batch_size}, {args.threads} threads, epoch {BENCH_EPOCH}")
    for method in args.methods.split(","):
        bench_run = build_method(args, method, teacher, device)
        for _ in range(WARMUP_STEPS):
            training_step(bench_run, images, labels, indices, autocast)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                training_step(bench_run, images, labels, indices, autocast)
            wall = (time.perf_counter() - start) / args.steps
        print(f"\n## {method}: {1000 * wall:.1f} ms per step under the profiler")
        averages = prof.key_averages(group_by_input_shape=args.shapes)
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
