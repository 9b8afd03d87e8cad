"""`famkd bench`: time the training step of several distillation methods side by side.

Every method trains its own student (and heads) against one shared, randomly initialised
teacher, on one fixed random batch of (B, 3, S, S) images, S = `--image-size` (32, CIFAR's side, by
default; 224 for the ImageNet models, with `--num-classes 1000`), with the trainer's optimiser (SGD with
momentum and weight decay over the student and the heads) and its step: autocast forward,
summed loss terms, zero_grad, backward, optimiser step. Steps run round-robin across the
methods, each round starting one method later, so that every method sees the same machine
load; the first `--warmup` rounds are not timed. A step is timed from its start until the
device has finished it. Methods that need each image's position in the training set
(`needs_sample_indices`, e.g. a memory bank) are built for CIFAR-100's 50000 training images and
get one fixed random position per image of the batch.

Peak memory, per method:
- cuda: the peak of torch.cuda.max_memory_allocated over the method's timed steps, less the
  other methods' resident tensors, i.e. what a process running this method alone would show;
- cpu: the maximum resident set size of a fresh process that builds only this method and
  runs two steps (max RSS only ever grows, so it cannot be split within one process).

The JSON output is a list with one object per method: method, ms_per_step (median),
images_per_s, peak_mem_mb, ratio_to_kd (null when kd was not timed), plus the settings.

`--competitor` measures instead what a busy neighbour costs (a shared workstation, a CI runner, another
training job): it starts a CPU-bound process (a Python busy loop pinned to the last CPU this process may
use) and, for each thread count of `--competitor-threads` (default 1,2), times every method's step with
the competitor running and with it paused (SIGSTOP), alternating the two phases round by round so that
both see the same machine. It prints, per thread count and method, the median step time alone, beside
the competitor, and their ratio (the slowdown); its JSON list holds one object per thread count and method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from famkd.config import TrainConfig
from famkd.distill import Distiller, create_distiller, list_distillers
from famkd.engine.device import autocast_factory, resolve_device, to_channels_last
from famkd.engine.host_memory import retain_freed_memory
from famkd.engine.schedule import build_optimizer
from famkd.engine.step import optimizer_step
from famkd.errors import ConfigError, FamkdError
from famkd.models import check_model_name, create_model
from famkd.registry import closest

DEFAULT_IMAGE_SIZE = 32  # CIFAR's side
BENCH_EPOCH = 1  # the epoch passed to the distillers; it only scales a loss weight
TRAIN_SET_SIZE = 50000  # CIFAR-100's training images: the memory bank of methods that need sample indices
MEMORY_CHILD_STEPS = 2  # the second step is the first with momentum buffers and gradients alive
MEMORY_NOTE = {
    "cuda": "cuda max allocated during the timed steps, other methods' tensors excluded",
    "cpu": "max RSS of a fresh process running only this method (baseline_rss_mb: after its imports)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        default="resnet32x4",
        help="teacher model: a zoo name, timm:<name> or torchvision:<name> (random weights; only its cost matters)",
    )
    parser.add_argument("--student", default="resnet8x4", help="student model (as --teacher)")
    parser.add_argument(
        "--methods",
        default="vanilla,kd,reviewkd,fam_kd",
        help="comma-separated distillation methods; include kd to get ratio_to_kd",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method before timing")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="autocast precision")
    parser.add_argument("--channels-last", action="store_true", help="models and images in channels-last layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile each distiller")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=DEFAULT_IMAGE_SIZE,
        help="side of the square random images, which fixes the heads' sizes (224 for the ImageNet models)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=100, help="classes the models predict (1000 for the ImageNet models)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the peak-memory measurement (on cpu it starts one process per method)",
    )
    parser.add_argument("--json", default="", metavar="PATH", help="also write the results as a JSON list here")
    parser.add_argument(
        "--competitor",
        action="store_true",
        help="time each method alone and beside a busy process pinned to one CPU, and print the slowdown (cpu)",
    )
    parser.add_argument(
        "--competitor-threads",
        default="1,2",
        metavar="N,M",
        help="with --competitor: the thread counts to measure at (default 1,2)",
    )


@dataclass
class MethodRun:
    """One method's distiller, optimiser and step times (seconds)."""

    method: str
    distiller: Distiller
    step_model: Callable
    optimizer: torch.optim.Optimizer
    grad_scaler: torch.amp.GradScaler | None
    times_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0


Autocast = Callable[[], contextlib.AbstractContextManager]
# One method's training step: (its run, images, labels, the images' training-set positions, autocast).
TrainingStep = Callable[[MethodRun, Tensor, Tensor, Tensor, Autocast], None]


def run(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    check_settings(args)
    device = resolve_device(args.device)
    if getattr(args, "competitor", False):
        return run_competitor(args, methods, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = benchmark(args, methods, device)
    if args.memory and device.type == "cpu":
        for result in results:
            measured = child_max_rss_mb(args, result["method"])
            result["peak_mem_mb"] = measured["max_rss_mb"]
            result["baseline_rss_mb"] = measured["baseline_rss_mb"]
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def parse_methods(text: str) -> list[str]:
    methods = [name.strip() for name in text.split(",") if name.strip()]
    if not methods:
        raise FamkdError("--methods is empty: give a comma-separated list such as kd,fam_kd")
    known = list_distillers()
    for name in methods:
        if name not in known:
            near = closest(name, known)
            hint = f" (did you mean {near!r}?)" if near else ""
            raise FamkdError(f"unknown method {name!r} in --methods{hint}; known: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise FamkdError(f"--methods lists a method twice: {text!r}")
    return methods


def check_settings(args: argparse.Namespace) -> None:
    for setting, name in (("--teacher", args.teacher), ("--student", args.student)):
        try:
            check_model_name(name)
        except ConfigError as error:
            raise FamkdError(f"{setting}: {error}") from None
    for setting, value, minimum in (
        ("--batch-size", args.batch_size, 1),
        ("--image-size", args.image_size, 1),
        ("--num-classes", args.num_classes, 1),
        ("--steps", args.steps, 1),
        ("--warmup", args.warmup, 0),
        ("--threads", args.threads, 0),
    ):
        if value < minimum:
            raise FamkdError(f"{setting} must be >= {minimum}, got {value}")


def benchmark(
    args: argparse.Namespace,
    methods: list[str],
    device: torch.device,
    *,
    step: TrainingStep | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Time every method round-robin and return one result dict per method (peak_mem_mb None on cpu).

    `step` takes one method's step (default: training_step), and `clock` (seconds) times it.
    """
    step = step or training_step
    torch.manual_seed(args.seed)
    images, labels = random_batch(args.batch_size, args.image_size, args.num_classes, device, args.channels_last)
    teacher = create_model(args.teacher, num_classes=args.num_classes, image_size=args.image_size).to(device)
    if args.channels_last:
        to_channels_last(teacher)
    runs = [build_method(args, method, teacher, device) for method in methods]
    # The batch's positions in the training set (distinct, as in a real epoch), for the methods that take them;
    # drawn after the models are built, so that their weights depend on the seed alone.
    indices = torch.randperm(TRAIN_SET_SIZE)[: args.batch_size].to(device)
    autocast = autocast_factory(args.amp, device)
    for round_index in range(args.warmup + args.steps):
        shift = round_index % len(runs)
        for bench_run in runs[shift:] + runs[:shift]:
            timed = round_index >= args.warmup
            measure_memory = timed and device.type == "cuda"
            if measure_memory:
                resident_before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = clock()
            step(bench_run, images, labels, indices, autocast)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = clock() - start
            if timed:
                bench_run.times_s.append(elapsed)
            if measure_memory:
                own = resident_bytes(bench_run) + images.nbytes + labels.nbytes
                peak = torch.cuda.max_memory_allocated(device) - resident_before + own
                bench_run.peak_bytes = max(bench_run.peak_bytes, peak)
    return summarize(args, runs, device, images.shape[0])


def random_batch(
    batch_size: int, image_size: int, num_classes: int, device: torch.device, channels_last: bool
) -> tuple[Tensor, Tensor]:
    """Normalised-looking random images (B, 3, S, S), S = image_size, and labels (B,)."""
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(num_classes, (batch_size,), device=device)
    return images.contiguous(memory_format=memory_format(channels_last)), labels


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def build_method(args: argparse.Namespace, method: str, teacher, device: torch.device) -> MethodRun:
    """The method's distiller around a fresh student, with the trainer's optimiser."""
    student = create_model(args.student, num_classes=args.num_classes, image_size=args.image_size)
    labels = torch.arange(TRAIN_SET_SIZE) % args.num_classes  # a balanced training set, for memory banks
    distiller = create_distiller(
        method,
        student=student,
        teacher=teacher,
        image_size=args.image_size,
        num_samples=TRAIN_SET_SIZE,
        labels=labels,
    )
    distiller.to(device)
    if args.channels_last:
        to_channels_last(distiller)
    distiller.train()
    optimizer = build_optimizer(distiller, TrainConfig())
    grad_scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    step_model = torch.compile(distiller) if args.compile else distiller
    return MethodRun(method, distiller, step_model, optimizer, grad_scaler)


def training_step(bench_run: MethodRun, images: Tensor, labels: Tensor, indices: Tensor, autocast: Autocast) -> None:
    """One optimiser step, as the trainer takes it; `indices` (the images' training-set positions) go to
    the methods that need them."""
    arguments = (images, labels, BENCH_EPOCH, *((indices,) if bench_run.distiller.needs_sample_indices else ()))
    optimizer_step(bench_run.step_model, bench_run.optimizer, bench_run.grad_scaler, autocast, arguments)


def resident_bytes(bench_run: MethodRun) -> int:
    """Bytes of the tensors the method keeps between steps: parameters, gradients, buffers, optimiser state."""
    tensors = list(bench_run.distiller.parameters()) + list(bench_run.distiller.buffers())
    tensors += [p.grad for p in bench_run.distiller.parameters() if p.grad is not None]
    for state in bench_run.optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def summarize(args: argparse.Namespace, runs: list[MethodRun], device: torch.device, batch_size: int) -> list[dict]:
    medians = {r.method: statistics.median(r.times_s) for r in runs}
    kd_median = medians.get("kd")
    results = []
    for bench_run in runs:
        median = medians[bench_run.method]
        results.append(
            {
                "method": bench_run.method,
                "ms_per_step": 1000.0 * median,
                "images_per_s": batch_size / median,
                "peak_mem_mb": bench_run.peak_bytes / 2**20 if device.type == "cuda" and args.memory else None,
                "ratio_to_kd": median / kd_median if kd_median is not None else None,
                "ms_per_step_min": 1000.0 * min(bench_run.times_s),
                "ms_per_step_max": 1000.0 * max(bench_run.times_s),
                "head_params": bench_run.distiller.num_head_parameters(),
                **settings_record(args, device),
            }
        )
    return results


def settings_record(args: argparse.Namespace, device: torch.device) -> dict:
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    )
    return {
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": str(device),
        "device_name": device_name,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_mem_measure": MEMORY_NOTE[device.type] if args.memory else "not measured",
    }


def child_max_rss_mb(args: argparse.Namespace, method: str) -> dict[str, float]:
    """Max RSS (MiB) of a fresh process that builds `method` alone and runs two training steps,
    and that process's max RSS after its imports, before building anything (baseline_rss_mb)."""
    settings = dict(vars(args), methods=method, steps=MEMORY_CHILD_STEPS, warmup=0, device="cpu", json="")
    settings.pop("run", None)
    code = "import sys; from famkd.bench import memory_child_main; sys.exit(memory_child_main())"
    completed = subprocess.run([sys.executable, "-c", code], input=json.dumps(settings), capture_output=True, text=True)
    if completed.returncode != 0:
        raise FamkdError(f"the memory measurement of {method!r} failed:\n{completed.stderr.strip()}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def memory_child_main() -> int:
    """Entry point of the memory-measuring process: settings as JSON on stdin, max RSS as JSON on stdout."""
    args = argparse.Namespace(**json.loads(sys.stdin.read()))
    retain_freed_memory()  # as the famkd command does
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline_mb = max_rss_mb()
    benchmark(args, [args.methods], torch.device("cpu"))
    print(json.dumps({"max_rss_mb": max_rss_mb(), "baseline_rss_mb": baseline_mb}))
    return 0


def max_rss_mb() -> float:
    """This process's maximum resident set size so far, MiB.

    Linux: VmHWM of /proc/self/status, which belongs to the current program image; getrusage's
    ru_maxrss would also count the parent's memory, since it survives fork + exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 1024  # macOS reports bytes, others KiB


def pair_and_batch(result: dict) -> str:
    """ "<teacher> -> <student>, batch B, SxS images" of a result record, for the tables' headers."""
    size = result["image_size"]
    return f"{result['teacher']} -> {result['student']}, batch {result['batch_size']}, {size}x{size} images"


def format_table(results: list[dict]) -> str:
    first = results[0]
    header = (
        f"famkd bench: {pair_and_batch(first)}, {first['num_classes']} classes, "
        f"{first['device']} ({first['device_name']}), {first['threads']} threads, amp {first['amp']}, "
        f"channels_last {first['channels_last']}, compile {first['compile']}, torch {first['torch']}; "
        f"median of {first['steps']} steps after {first['warmup']} warm-up"
    )
    lines = [header, f"{'method':<14}{'ms/step':>10}{'img/s':>10}{'peak MiB':>10}{'x kd':>8}"]
    for r in results:
        memory = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        ratio = f"{r['ratio_to_kd']:.2f}" if r["ratio_to_kd"] is not None else "-"
        lines.append(f"{r['method']:<14}{r['ms_per_step']:>10.1f}{r['images_per_s']:>10.1f}{memory:>10}{ratio:>8}")
    lines.append(f"peak memory: {first['peak_mem_measure']}")
    return "\n".join(lines)


# ---- --competitor: the step beside a busy process ------------------------------------------------

BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


class Competitor:
    """A CPU-bound process (a Python busy loop) pinned to `cpu`, started paused; `busy(True|False)` runs or
    pauses it (SIGCONT, SIGSTOP). A context manager: it is killed on exit."""

    def __init__(self, cpu: int):
        self.cpu = cpu
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)])
        self.busy(False)

    def busy(self, running: bool) -> None:
        os.kill(self.process.pid, signal.SIGCONT if running else signal.SIGSTOP)
        if running:
            time.sleep(0.02)  # let the scheduler see it before the step starts
            return
        stat, deadline = Path(f"/proc/{self.process.pid}/stat"), time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the stop is delivered asynchronously: wait until it took
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
                    return
            except (OSError, IndexError):
                return
            time.sleep(0.001)

    def __enter__(self) -> Competitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def competitor_cpu() -> int:
    """The last CPU of this process's affinity mask (the machine's last CPU where there is no mask)."""
    try:
        return max(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS): not pinned where it cannot be
        raise FamkdError("--competitor needs CPU affinity (Linux)") from None


def parse_thread_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise FamkdError(f"--competitor-threads must list thread counts >= 1, e.g. 1,2; got {text!r}")
    return counts


def run_competitor(args: argparse.Namespace, methods: list[str], device: torch.device) -> int:
    if device.type != "cpu":
        raise FamkdError("--competitor measures the CPU step: use --device cpu")
    counts = parse_thread_counts(args.competitor_threads)
    with Competitor(competitor_cpu()) as competitor:
        results = competitor_benchmark(args, methods, counts, competitor.busy)
        for result in results:
            result["competitor_cpu"] = competitor.cpu
    print(format_competitor_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def competitor_benchmark(
    args: argparse.Namespace,
    methods: list[str],
    thread_counts: list[int],
    set_busy: Callable[[bool], None],
    *,
    step: TrainingStep | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """For each thread count, every method's median step time with the competitor paused and running
    (`set_busy(False | True)`), the two phases alternating round by round; one result per count and method."""
    step = step or training_step
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    images, labels = random_batch(args.batch_size, args.image_size, args.num_classes, device, args.channels_last)
    teacher = create_model(args.teacher, num_classes=args.num_classes, image_size=args.image_size)
    if args.channels_last:
        to_channels_last(teacher)
    runs = [build_method(args, method, teacher, device) for method in methods]
    indices = torch.randperm(TRAIN_SET_SIZE)[: args.batch_size]
    autocast = autocast_factory(args.amp, device)
    previous_threads = torch.get_num_threads()
    results = []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            times: dict[tuple[str, bool], list[float]] = {(r.method, busy): [] for r in runs for busy in (False, True)}
            for round_index in range(args.warmup + args.steps):
                phases = (False, True) if round_index % 2 == 0 else (True, False)
                for busy in phases:
                    set_busy(busy)
                    shift = round_index % len(runs)
                    for bench_run in runs[shift:] + runs[:shift]:
                        start = clock()
                        step(bench_run, images, labels, indices, autocast)
                        if round_index >= args.warmup:
                            times[bench_run.method, busy].append(clock() - start)
                set_busy(False)
            for bench_run in runs:
                alone = statistics.median(times[bench_run.method, False])
                beside = statistics.median(times[bench_run.method, True])
                results.append(
                    {
                        "method": bench_run.method,
                        "threads": threads,
                        "ms_per_step_alone": 1000.0 * alone,
                        "ms_per_step_with_competitor": 1000.0 * beside,
                        "slowdown": beside / alone,
                        **{k: v for k, v in settings_record(args, device).items() if k not in ("threads",)},
                        "peak_mem_measure": "not measured",
                    }
                )
    finally:
        torch.set_num_threads(previous_threads)
    return results


def format_competitor_table(results: list[dict]) -> str:
    first = results[0]
    header = (
        f"famkd bench --competitor: {pair_and_batch(first)}, cpu ({first['device_name']}), {os.cpu_count()} CPUs, "
        f"a busy loop pinned to CPU {first.get('competitor_cpu', '?')}; "
        f"median of {first['steps']} steps per phase after {first['warmup']} warm-up rounds"
    )
    lines = [header, f"{'threads':>7}  {'method':<14}{'alone ms':>10}{'beside ms':>11}{'slowdown':>10}"]
    for r in results:
        lines.append(
            f"{r['threads']:>7}  {r['method']:<14}{r['ms_per_step_alone']:>10.1f}"
            f"{r['ms_per_step_with_competitor']:>11.1f}{r['slowdown']:>9.2f}x"
        )
    return "\n".join(lines)
