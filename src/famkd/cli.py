"""The `famkd` command.

    famkd train CONFIG [key=value ...] [--print-config]   train a teacher (method vanilla) or a student
    famkd train --resume RUN_DIR [key=value ...]          continue an interrupted run
    famkd eval CHECKPOINT [--data DIR] [--model NAME]     top-1 / top-5 on the test split
    famkd demo ...                                        (famkd.demo)
    famkd bench ...                                       (famkd.bench)
    famkd inspect RUN_DIR [--out DIR]                     (famkd.report.fam_inspect)
    famkd results RUN_DIR [RUN_DIR ...]                   (famkd.report.results)
    famkd sweep CONFIG --seeds 0,1,2 [key=value ...]      (famkd.sweep)
    famkd report RUN_DIR [RUN_DIR ...] --out DIR          (famkd.report.page)
    famkd detect train|eval ...                           (famkd.detection.cli)
    famkd export RUN_DIR --format onnx|torchscript|safetensors  (famkd.deploy.export)
    famkd predict MODEL IMAGE_OR_FOLDER... [--top-k 5]    (famkd.deploy.predict)

Subcommands living in other modules provide `add_arguments(parser)` and `run(args) -> int`;
they are imported only when chosen, so `famkd --help` stays fast. Importing this module, before torch
is loaded, shortens the spinning of idle OpenMP threads on a busy machine (`short_openmp_spins`); every
command first has malloc keep freed memory (famkd.engine.host_memory). Errors the user can fix (famkd.errors.FamkdError)
are printed as one line on stderr with exit status 1, famkd's warnings as one line each; Ctrl-C
exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

SHARED_SPIN_ROUNDS = "1000"  # libgomp's own spin count where its threads outnumber the CPUs
BUSY_CPUS = 0.5  # other processes using this much of this process's CPUs, or more: the CPUs are shared
BUSY_SAMPLE_S = 0.1  # how long famkd watches the CPUs at start
IDLE_FIELDS = (3, 4)  # idle and iowait among a /proc/stat cpu line's times; the others are busy (guest: in user)


def short_openmp_spins(environ: MutableMapping[str, str], busy_cpus: Callable[[], float]) -> None:
    """GOMP_SPINCOUNT=1000 where other processes keep this process's CPUs busy (`busy_cpus()`, e.g.
    `other_processes_busy_cpus`, called before famkd does any work, is at least BUSY_CPUS), unless GOMP_SPINCOUNT
    or OMP_WAIT_POLICY is set: then the CPUs are not watched at all.

    A thread of torch's OpenMP pool that waits at the end of a parallel region spins up to 300000 rounds
    (libgomp's default) before it sleeps. On a core shared with another busy process a spinning thread burns the
    share of the core the scheduler gives it, then waits behind that process for its next slice while the pool
    waits for it. Beside one busy loop on the 2-CPU development machine, resnet56 -> resnet20 fam_kd steps at 2
    threads were 3.8x slower than alone with libgomp's default and 2.4x with 1000 rounds; on the idle machine 1000
    rounds cost 3-5% (README, "Shared machines"), so an idle machine keeps libgomp's default. The OpenMP runtime
    reads the variable once, when torch is loaded: this runs when this module is imported, before `import torch`,
    for the `famkd` command, `python -m famkd` and torchrun's `-m famkd`."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return
    if busy_cpus() >= BUSY_CPUS:
        environ["GOMP_SPINCOUNT"] = SHARED_SPIN_ROUNDS


def cpu_times(stat: str, cpus: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of `cpus` since boot, from the text of /proc/stat."""
    busy = total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(field) for field in fields]
            total += sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guest is within user)
            busy += sum(ticks[:8]) - sum(ticks[index] for index in IDLE_FIELDS)
    return busy, total


def busy_cpus_between(before: str, after: str, cpus: set[int]) -> float:
    """How many of `cpus` were busy, on average, between two readings of /proc/stat."""
    (busy_before, total_before), (busy_after, total_after) = cpu_times(before, cpus), cpu_times(after, cpus)
    elapsed = total_after - total_before
    return len(cpus) * (busy_after - busy_before) / elapsed if elapsed > 0 else 0.0


def other_processes_busy_cpus() -> float:
    """The CPUs' worth of this process's CPUs (its affinity mask) that other processes use, watched for
    BUSY_SAMPLE_S seconds while this one sleeps; 0 where /proc/stat or the affinity mask cannot be read. A
    load average would count a famkd run that has just ended (a sweep's previous seed) as a busy neighbour."""
    try:
        cpus = os.sched_getaffinity(0)
        with open("/proc/stat") as file:
            before = file.read()
        time.sleep(BUSY_SAMPLE_S)
        with open("/proc/stat") as file:
            after = file.read()
    except (OSError, AttributeError, ValueError):
        return 0.0
    return busy_cpus_between(before, after, cpus)


short_openmp_spins(os.environ, other_processes_busy_cpus)

from famkd.errors import FamkdDeprecationWarning, FamkdError, TrainingInterrupted  # noqa: E402

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

# name -> (module providing add_arguments/run, one-line help)
MODULE_COMMANDS = {
    "demo": ("famkd.demo", "train a teacher and three students on a small dataset and compare them"),
    "bench": ("famkd.bench", "time the training step of several distillation methods side by side"),
    "inspect": ("famkd.report.fam_inspect", "show what FAM learned in a run: gamma per level, filter spectra, masks"),
    "results": ("famkd.report.results", "best and last accuracy over seeds (mean and std) from run folders"),
    "sweep": ("famkd.sweep", "train one config over several seeds (restartable), then show the results table"),
    "report": ("famkd.report.page", "a web page of one or several runs: curves, gammas, FAM filters and spectra"),
    "detect": ("famkd.detection.cli", "train and evaluate Faster R-CNN students on MS-COCO (famkd detect train|eval)"),
    "export": ("famkd.deploy.export", "write a run's student as ONNX, TorchScript or safetensors, checked against it"),
    "predict": ("famkd.deploy.predict", "the top-k classes of image files with a run's or an exported student"),
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG [key=value ...]",
        help="a YAML config (e.g. configs/cifar100/fam_kd/resnet56_resnet20.yaml; without one the defaults "
        "are used) then overrides such as train.epochs=2 data.root=/data teacher.checkpoint=PATH; "
        "with --resume, overrides only",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")


def run_train(args: argparse.Namespace) -> int:
    from famkd.classification import TASK, train
    from famkd.config import load_config
    from famkd.engine import resume_point
    from famkd.settings import dump_settings

    config_path, overrides = split_train_items(args.items, resuming=args.resume is not None)
    if args.resume is not None:
        if args.print_config:
            print(dump_settings(resume_point(TASK, args.resume, overrides)[0]), end="")
            return 0
        train(None, resume_dir=args.resume, overrides=overrides)
    else:
        cfg = load_config(config_path, overrides)  # checks every key and method option before any data is read
        if args.print_config:
            print(dump_settings(cfg), end="")
            return 0
        train(cfg)  # process 0 prints the final line
    return 0


def split_train_items(items: list[str], resuming: bool) -> tuple[str | None, list[str]]:
    """(config path or None, overrides): the first item is the config unless it is a key=value override.

    Without a config file the defaults are the base (e.g. `famkd train student=resnet8 train.epochs=1`).
    """
    if resuming:
        stray = [item for item in items if "=" not in item]
        if stray:
            raise FamkdError(
                f"with --resume, give only key=value overrides (the run's saved config is used), got {stray[0]!r}"
            )
        return None, items
    if not items or ("=" in items[0] and not Path(items[0]).is_file()):
        config_path, overrides = None, items
    else:
        config_path, overrides = items[0], items[1:]
    stray = [item for item in overrides if "=" not in item]
    if stray:
        raise FamkdError(f"expected key=value overrides after the config file, got {stray[0]!r}")
    return config_path, overrides


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="a famkd run directory or checkpoint, an exported student_*.pt, or a community {'model': ...} file",
    )
    parser.add_argument(
        "--data", default="", metavar="DIR", help="dataset root (default: data.root, $FAMKD_DATA, ./data)"
    )
    parser.add_argument(
        "--model", default="", metavar="NAME", help="architecture, needed when the file does not record it"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=256)


def run_eval(args: argparse.Namespace) -> int:
    from famkd.classification.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.data, args.model, args.device, args.batch_size)
    print(f"checkpoint: {result['checkpoint']} ({result['arch']})")
    print(f"data: {result['data']}")
    print(f"top-1: {result['top1']:.2f}%")
    print(f"top-5: {result['top5']:.2f}%")
    return 0


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; a module subcommand's own arguments are added only when it is `chosen`."""
    parser = argparse.ArgumentParser(
        prog="famkd", description="Knowledge distillation with Frequency Attention (FAM-KD) and its baselines."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="train a teacher or distil a student from a config",
        description="Train a teacher (method vanilla) or distil a student.",
    )
    add_train_arguments(train)
    train.set_defaults(run=run_train)
    evaluate = commands.add_parser(
        "eval",
        help="print top-1 and top-5 test accuracy of a checkpoint",
        description="Evaluate a checkpoint on the test split.",
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(run=run_eval)
    for name, (module_name, help_text) in MODULE_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def show_famkd_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """famkd's own warnings as one line on stderr ("famkd: warning: ..."), others as Python shows them."""
    if issubclass(category, FamkdDeprecationWarning):
        print(f"famkd: warning: {message}", file=sys.stderr if file is None else file)
    else:
        default_showwarning(message, category, filename, lineno, file, line)


default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((item for item in argv if not item.startswith("-")), None)
    parser = build_parser(chosen)
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "items", None), list) and all("=" in item for item in extra):
        args.items += extra  # overrides after an option, e.g. CONFIG --print-config key=value
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from famkd.engine.host_memory import retain_freed_memory

    retain_freed_memory()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_famkd_warning
            return run_command(args)
    except TrainingInterrupted as stopped:
        print(f"famkd: {stopped}", file=sys.stderr)
        return stopped.exit_status
    except KeyboardInterrupt:
        print("famkd: aborted by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FamkdError as error:
        print(f"famkd: error: {error}", file=sys.stderr)
        return EXIT_ERROR


def run_command(args: argparse.Namespace) -> Any:
    return args.run(args)
