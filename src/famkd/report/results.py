"""Results over seeds: best and last top-1 per (method, teacher, student), mean and std.

    famkd results RUN_DIR [RUN_DIR ...]

Each RUN_DIR (or any folder below it) holding a summary.json counts as one run; runs of the
same method, teacher and student are grouped (typically one per run.seed), and each group is
reported as best and last accuracy, mean +- sample std over its runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from famkd.engine.run_dir import SUMMARY_FILE
from famkd.errors import FamkdError


def find_summaries(paths: list[str | Path]) -> list[dict]:
    """Every completed run's summary.json under `paths`, sorted by path."""
    found = sorted({f for path in paths for f in Path(path).rglob(SUMMARY_FILE)})
    summaries = [json.loads(f.read_text()) for f in found]
    return [s for s in summaries if s.get("status", "completed") == "completed"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group_results(summaries: list[dict]) -> list[dict]:
    """One row per (method, teacher, student): runs, best and last accuracy mean and std."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for summary in summaries:
        groups[(summary["method"], summary.get("teacher") or "-", summary["student"])].append(summary)
    rows = []
    for (method, teacher, student), runs in sorted(groups.items()):
        best_mean, best_std = mean_std([r["best_acc"] for r in runs])
        last_mean, last_std = mean_std([r["last_acc"] for r in runs])
        rows.append(
            {
                "method": method,
                "teacher": teacher,
                "student": student,
                "runs": len(runs),
                "best_mean": best_mean,
                "best_std": best_std,
                "last_mean": last_mean,
                "last_std": last_std,
            }
        )
    return rows


def format_results(rows: list[dict]) -> str:
    lines = ["| method | teacher | student | runs | best top-1 (%) | last top-1 (%) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['teacher']} | {r['student']} | {r['runs']} | "
            f"{r['best_mean']:.2f} ± {r['best_std']:.2f} | {r['last_mean']:.2f} ± {r['last_std']:.2f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run folders (searched recursively for summary.json)"
    )
    parser.add_argument("--json", default="", metavar="FILE", help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    summaries = find_summaries(args.runs)
    if not summaries:
        raise FamkdError(f"no completed run (summary.json) found under {', '.join(args.runs)}")
    rows = group_results(summaries)
    print(format_results(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0
