"""`famkd sweep`: train one config over several seeds, each in its own process, then show the results table.

    famkd sweep CONFIG --seeds 0,1,2 [--jobs N] [key=value ...]

Seed k runs `famkd train CONFIG key=value ... run.seed=k run.dir=ROOT/seed<k>` in a child process (N of them
at a time, default 1), its output appended to ROOT/seed<k>/train.log. ROOT is the config's (or the
overrides') run.dir, else runs/<method>/<teacher>_<student>-sweep (runs/<method>/<student>-sweep without a
teacher): no timestamp, so the same sweep run again finds its seeds. On every start, each seed is

- skipped when its summary.json says status "completed" with epochs_completed == epochs;
- resumed (`famkd train --resume ROOT/seed<k>`) when it has checkpoints/last.pt but has not completed; only
  the overrides of RESUME_OVERRIDES (device, data location, logging) are passed, the rest comes from its
  checkpoint;
- started fresh otherwise.

A seed folder that is skipped or resumed must hold a run made with this sweep's settings (its config.yaml
against the merged config; RESUME_OVERRIDES and run.dir left out), else the sweep stops before starting
anything: a run.dir reused by another experiment is never taken for this one. A failing seed does not stop
the others; it is reported with its exit status, its log and the log's last lines, and the sweep then exits
with an error naming the failed seeds. With N > 1 and OMP_NUM_THREADS unset, each process gets
OMP_NUM_THREADS = CPU cores // N.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from famkd.classification import missing_teacher_message
from famkd.config import Config, load_config
from famkd.distill import needs_teacher
from famkd.engine.run_dir import RunDir
from famkd.errors import FamkdError
from famkd.report.results import collect_runs, comparison_table, format_markdown
from famkd.settings import absolute_paths, settings_differences, settings_to_dict

LOG_FILE = "train.log"
RESUME_OVERRIDES = ("device", "data.root", "run.tensorboard", "train.log_interval")  # passed on resume too
TAIL_LINES = 5
SEEDS_EXAMPLE = "give distinct integers >= 0 separated by commas, e.g. --seeds 0,1,2"


@dataclass(frozen=True)
class SeedJob:
    """What the sweep does for one seed: "skip", "resume" or "start" (`command`, logged to `log`)."""

    seed: int
    folder: Path
    action: str
    command: list[str]

    @property
    def log(self) -> Path:
        return self.folder / LOG_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items",
        nargs="+",
        metavar="CONFIG [key=value ...]",
        help="a YAML config, then overrides as for famkd train; run.dir is the sweep's root "
        "(default runs/<method>/<teacher>_<student>-sweep), run.seed is set per seed",
    )
    parser.add_argument("--seeds", required=True, metavar="0,1,2", help="the seeds, distinct integers >= 0")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="seeds trained at a time (default 1)")


def run(args: argparse.Namespace) -> int:
    config_path, overrides = split_items(args.items)
    seeds = parse_seeds(args.seeds)
    if args.jobs < 1:
        raise FamkdError(f"--jobs {args.jobs}: give the number of seeds to train at a time, at least 1")
    cfg = load_config(config_path, overrides)  # a typo fails here, before any process starts
    check_teacher(cfg)
    root = sweep_root(cfg)
    jobs = [plan_seed(seed, root, config_path, overrides) for seed in seeds]
    print(f"famkd sweep: seeds {', '.join(map(str, seeds))} of {config_path} into {root}, {args.jobs} at a time")
    failures = run_jobs(jobs, args.jobs)
    show_results(root)
    if failures:
        raise FamkdError(
            f"{len(failures)} of {len(seeds)} seeds failed: {'; '.join(failures)}. Fix the cause and run the same "
            "famkd sweep again: completed seeds are skipped and interrupted ones resumed"
        )
    return 0


def split_items(items: list[str]) -> tuple[str, list[str]]:
    """(config path, overrides) from CONFIG key=value ...; run.seed belongs to --seeds."""
    config_path, overrides = items[0], items[1:]
    if "=" in config_path and not Path(config_path).is_file():
        raise FamkdError(
            f"famkd sweep needs a config file first, got {config_path!r}; "
            "e.g. famkd sweep configs/cifar100/kd/resnet56_resnet20.yaml --seeds 0,1,2 train.epochs=10"
        )
    for item in overrides:
        if "=" not in item:
            raise FamkdError(f"expected key=value overrides after the config file, got {item!r}")
        if item.partition("=")[0].strip() == "run.seed":
            raise FamkdError(f"{item!r}: the sweep sets run.seed for each seed; list the seeds with --seeds")
    return config_path, overrides


def parse_seeds(text: str) -> list[int]:
    """The seeds of "0,1,2" in the order given; a FamkdError saying what is wrong otherwise."""
    if not text.strip():
        raise FamkdError(f"--seeds is empty; {SEEDS_EXAMPLE}")
    seeds: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise FamkdError(f"--seeds {text!r} has an empty item (an extra comma); {SEEDS_EXAMPLE}")
        if not re.fullmatch(r"-?[0-9]+", item):
            raise FamkdError(f"--seeds {text!r}: {item!r} is not an integer; {SEEDS_EXAMPLE}")
        seed = int(item)
        if seed < 0:
            raise FamkdError(f"--seeds {text!r}: seed {seed} is negative; {SEEDS_EXAMPLE}")
        if seed in seeds:
            raise FamkdError(f"--seeds {text!r}: seed {seed} is given twice; {SEEDS_EXAMPLE}")
        seeds.append(seed)
    return seeds


def check_teacher(cfg: Config) -> None:
    """Stop before any process starts when the teacher file is missing (every seed would fail alike)."""
    if not needs_teacher(cfg.method):
        return
    if not cfg.teacher.checkpoint:
        raise FamkdError(missing_teacher_message(cfg))
    if not Path(cfg.teacher.checkpoint).is_file():
        raise FamkdError(
            f"teacher.checkpoint not found: {cfg.teacher.checkpoint}; fix the path in the config or "
            "override it with teacher.checkpoint=PATH"
        )


def sweep_root(cfg: Config) -> Path:
    """run.dir when set, else runs/<method>/<teacher>_<student>-sweep (<student>-sweep without a teacher name).

    Unlike a single run's default folder it has no timestamp, so running the same sweep again finds its seeds.
    """
    if cfg.run.dir:
        return Path(cfg.run.dir)
    pair = f"{cfg.teacher.name}_{cfg.student}" if needs_teacher(cfg.method) and cfg.teacher.name else cfg.student
    return Path("runs") / cfg.method / f"{pair}-sweep"


def plan_seed(seed: int, root: Path, config_path: str, overrides: list[str]) -> SeedJob:
    """Skip, resume or start seed `seed` in root/seed<seed> (see the module docstring)."""
    folder = root / f"seed{seed}"
    per_seed = [*overrides, f"run.seed={seed}", f"run.dir={folder}"]
    train = [sys.executable, "-m", "famkd", "train"]
    action = seed_action(RunDir(folder))
    if action != "start":
        check_same_settings(folder, load_config(config_path, per_seed))
    if action == "resume":
        kept = [item for item in overrides if item.partition("=")[0].strip() in RESUME_OVERRIDES]
        return SeedJob(seed, folder, action, [*train, "--resume", str(folder), *kept])
    return SeedJob(seed, folder, action, [*train, config_path, *per_seed])


def seed_action(run_dir: RunDir) -> str:
    """ "skip" for a run that completed all its epochs, "resume" for one with a checkpoint, else "start"."""
    try:
        summary = json.loads(run_dir.summary_file.read_text())
    except (OSError, ValueError):
        summary = None
    completed = isinstance(summary, dict) and summary.get("status") == "completed"
    if completed and summary.get("epochs_completed") == summary.get("epochs"):
        return "skip"
    return "resume" if run_dir.has_checkpoint() else "start"


def check_same_settings(folder: Path, expected: Config) -> None:
    """Refuse a seed folder whose run was made with settings other than `expected` (a reused run.dir)."""
    config_file = RunDir(folder).config_file
    try:
        saved = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise FamkdError(
            f"cannot read {config_file} ({error}), so the run in {folder} cannot be checked against this sweep; "
            "move that folder away or give the sweep another run.dir"
        ) from None
    ignored = {"run.dir", *RESUME_OVERRIDES} | (set() if expected.teacher.name else {"teacher.name"})
    expected = copy.deepcopy(expected)
    absolute_paths(expected)  # as a run records them
    shown = settings_differences(settings_to_dict(expected), saved if isinstance(saved, dict) else {}, ignored)
    if shown:
        raise FamkdError(
            f"{folder} holds a run made with other settings ({shown}); give this sweep its own run.dir=..., "
            "or run it with the settings of that run"
        )


def run_jobs(jobs: list[SeedJob], parallel: int) -> list[str]:
    """Skip or run every seed, `parallel` processes at a time; one description per failed seed."""
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(text, flush=True)

    for job in jobs:
        if job.action == "skip":
            say(f"seed {job.seed}: skipped, completed before ({job.folder})")
    env = child_environment(parallel)
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = [pool.submit(run_job, job, env, say) for job in jobs if job.action != "skip"]
        return [failure for future in futures if (failure := future.result())]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C no further seed starts


def child_environment(parallel: int) -> dict[str, str]:
    """The training processes' environment; with several at a time each gets its share of CPU threads."""
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def run_job(job: SeedJob, env: dict[str, str], say: Callable[[str], None]) -> str:
    """Run one seed's training process; "" when it succeeded, else which seed failed and where its log is."""
    job.folder.mkdir(parents=True, exist_ok=True)
    say(f"seed {job.seed}: {'resumed' if job.action == 'resume' else 'started'}, log {job.log}")
    start = time.monotonic()
    with job.log.open("a") as log:
        log.write(f"famkd sweep: {shlex.join(job.command)}\n")
        log.flush()
        status = subprocess.run(job.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - start
    if status.returncode == 0:
        say(f"seed {job.seed}: completed in {seconds:.0f} s")
        return ""
    tail = "".join(f"\n    {line}" for line in log_tail(job.log))
    say(f"seed {job.seed}: failed with exit status {status.returncode} after {seconds:.0f} s, log {job.log}:{tail}")
    return f"seed {job.seed} (exit status {status.returncode}, log {job.log})"


def log_tail(log: Path) -> list[str]:
    """The last TAIL_LINES non-empty lines of a log (progress-bar carriage returns count as line ends)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-TAIL_LINES:]


def show_results(root: Path) -> None:
    """Print the results table of every completed run under `root`."""
    runs, skipped = collect_runs([root])
    for message in skipped:
        print(f"famkd: warning: {message}", file=sys.stderr)
    print(format_markdown(comparison_table(runs)) if runs else f"no completed run under {root}")
