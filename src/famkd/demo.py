"""`famkd demo`: a teacher and one student trained three ways, compared in one table.

    famkd demo [--data DIR] [--out DIR]

Without --data the images come from the synthetic embedded dataset (generated from a seed,
not real images; see famkd.data.synthetic), so the demo runs offline with nothing to
download. With --data pointing at CIFAR-100 (cifar-100-python or the .npy layout), a class
subset of the real images is used instead.

The demo trains the teacher (method vanilla), then the student as vanilla, kd and fam_kd,
each distilling from the teacher's best weights, all through `famkd.classification.train`
with fixed seeds and deterministic kernels. The output directory holds one run folder per
run (teacher/, vanilla/, kd/, fam_kd/: config.yaml, metrics.jsonl, summary.json, checkpoints)
and the comparison as demo_summary.json and results.md; the table is also printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from famkd.config import Config, config_from_dict
from famkd.distill import needs_teacher
from famkd.errors import FamkdError

STUDENT_METHODS = ("vanilla", "kd", "fam_kd")
SUMMARY_FILE = "demo_summary.json"
RESULTS_FILE = "results.md"
SYNTHETIC_NAME = "synthetic embedded dataset (generated, not real images)"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains, on how much data, for how long.

    classes / train_per_class: data.classes and data.train_per_class (0 = the dataset's own).
    Epoch counts and lr_milestones are in epochs; lr is the initial SGD learning rate.
    distill: per method, options for its distiller (fam_kd's warm-up must fit the short run).
    expected_minutes: the wall time measured on 2 CPU cores, shown in the header.
    """

    teacher: str
    student: str
    classes: int
    train_per_class: int
    teacher_epochs: int
    student_epochs: int
    lr: float
    teacher_lr_milestones: tuple[int, ...]
    student_lr_milestones: tuple[int, ...]
    batch_size: int = 64
    max_steps_per_epoch: int = 0
    distill: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    expected_minutes: float = 0.0


# The teacher gets twice the students' epochs (and a decayed last epoch) so that it is clearly
# the stronger model; the students train at a constant lr so that two epochs learn as much as they can.
SYNTHETIC_DEMO = DemoSettings(
    teacher="resnet14",
    student="resnet8",
    classes=9,
    train_per_class=800,
    teacher_epochs=4,
    student_epochs=2,
    lr=0.1,
    teacher_lr_milestones=(3,),
    student_lr_milestones=(),
    distill={"fam_kd": {"warmup_epochs": 1}},
    expected_minutes=3.5,
)

CIFAR_DEMO = dataclasses.replace(SYNTHETIC_DEMO, classes=10, train_per_class=500)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a teacher, then a student three ways (vanilla, kd, fam_kd), and print a table of their "
        "best and last test accuracy and time. Without --data it uses the synthetic embedded dataset "
        f"(generated, not real images) and takes about {SYNTHETIC_DEMO.expected_minutes:g} minutes on 2 CPU cores."
    )
    parser.add_argument(
        "--data",
        default="",
        metavar="DIR",
        help="CIFAR-100 root (cifar-100-python or the .npy layout): use a subset of its first "
        f"{CIFAR_DEMO.classes} classes instead of the synthetic dataset",
    )
    parser.add_argument(
        "--out", default="", metavar="DIR", help="output directory, new or empty (default: ./famkd-demo-<timestamp>)"
    )


def run(args: argparse.Namespace) -> int:
    out_dir = args.out or f"famkd-demo-{datetime.now():%Y%m%d-%H%M%S}"
    run_demo(out_dir, data_root=args.data or None)
    return 0


def run_demo(
    out_dir: str | Path,
    data_root: str | Path | None = None,
    settings: DemoSettings | None = None,
    stream: TextIO | None = None,
) -> dict:
    """Run the whole demo into `out_dir` and return what demo_summary.json holds.

    data_root None: the synthetic dataset with SYNTHETIC_DEMO; else CIFAR-100 at data_root with
    CIFAR_DEMO. `settings` replaces the preset (tests shrink the run with it). The header and
    the final table go to `stream` (default stdout); the engine prints its own progress.
    """
    if settings is None:
        settings = SYNTHETIC_DEMO if data_root is None else CIFAR_DEMO
    stream = sys.stdout if stream is None else stream
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FamkdError(f"--out {out_dir} already exists and is not empty; choose a new directory or delete it")
    data = data_section(data_root, settings)
    print(header(out_dir, data_root, settings), file=stream, flush=True)

    start = time.perf_counter()
    summaries = {"teacher": train_run(out_dir, "teacher", data, settings, stream)}
    teacher_weights = out_dir / "teacher" / "student_best.pt"
    for method in STUDENT_METHODS:
        summaries[method] = train_run(out_dir, method, data, settings, stream, teacher_weights)
    result = demo_summary(summaries, data_root, settings, time.perf_counter() - start)

    (out_dir / SUMMARY_FILE).write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / RESULTS_FILE).write_text(results_markdown(result))
    print("\n" + results_table(result), file=stream)
    print(f"\nrun folders, demo_summary.json and results.md are in {out_dir}", file=stream, flush=True)
    return result


def data_section(data_root: str | Path | None, settings: DemoSettings) -> dict:
    """The config's `data` section: the synthetic set, or CIFAR-100 at data_root (never downloaded)."""
    subset = {"classes": settings.classes, "train_per_class": settings.train_per_class}
    if data_root is None:
        return {"dataset": "synthetic", **subset}
    return {"dataset": "cifar100", "root": str(data_root), "download": False, **subset}


def dataset_name(data_root: str | Path | None, settings: DemoSettings) -> str:
    """How the header names the data before it is loaded (0 in the settings: the dataset's own count)."""
    per_class = f"{settings.train_per_class} train images per class" if settings.train_per_class else "all train images"
    if data_root is None:
        classes = f"{settings.classes} classes" if settings.classes else "all its classes"
        return f"{SYNTHETIC_NAME}, {classes}, {per_class}"
    classes = f"classes 0-{settings.classes - 1}" if settings.classes else "all classes"
    return f"CIFAR-100 at {data_root} (real images), {classes}, {per_class}"


def header(out_dir: Path, data_root: str | Path | None, settings: DemoSettings) -> str:
    device = "a GPU" if _cuda_available() else "this CPU"
    return (
        f"famkd demo on the {dataset_name(data_root, settings)}\n"
        f"  1. teacher {settings.teacher} (method vanilla, {settings.teacher_epochs} epochs)\n"
        f"  2. student {settings.student} three ways, {settings.student_epochs} epochs each: "
        f"{', '.join(STUDENT_METHODS)} (kd and fam_kd distil from the teacher)\n"
        f"  expected duration: about {settings.expected_minutes:g} minutes on 2 CPU cores (running on {device}); "
        f"output in {out_dir}"
    )


def run_config(out_dir: Path, name: str, data: dict, settings: DemoSettings, teacher_weights: Path | None) -> Config:
    """The engine config of one demo run: `name` is "teacher" or a student method."""
    is_teacher = name == "teacher"
    method = "vanilla" if is_teacher else name
    values = {
        "method": method,
        "student": settings.teacher if is_teacher else settings.student,
        "distill": dict(settings.distill.get(method, {})),
        "data": data,
        "train": {
            "epochs": settings.teacher_epochs if is_teacher else settings.student_epochs,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "lr_milestones": list(settings.teacher_lr_milestones if is_teacher else settings.student_lr_milestones),
            "max_steps_per_epoch": settings.max_steps_per_epoch,
        },
        "run": {"dir": str(out_dir / name), "seed": settings.seed, "deterministic": True, "tensorboard": False},
    }
    if needs_teacher(method):
        values["teacher"] = {"name": settings.teacher, "checkpoint": str(teacher_weights)}
    return config_from_dict(values)


def train_run(
    out_dir: Path, name: str, data: dict, settings: DemoSettings, stream: TextIO, teacher_weights: Path | None = None
) -> dict:
    """Train one demo run with the engine and return its summary."""
    from famkd.classification import train

    position = ("teacher", *STUDENT_METHODS).index(name) + 1
    what = f"teacher {settings.teacher}" if name == "teacher" else f"student {settings.student}, method {name}"
    print(f"\n[{position}/{1 + len(STUDENT_METHODS)}] {what}", file=stream, flush=True)
    return train(run_config(out_dir, name, data, settings, teacher_weights))


def demo_summary(
    summaries: dict[str, dict], data_root: str | Path | None, settings: DemoSettings, total_time_s: float
) -> dict:
    """What demo_summary.json holds: the dataset, the settings and one row per run."""
    rows = [
        {
            "run": name,
            "method": summary["method"],
            "model": summary["student"],
            "best_acc": summary["best_acc"],
            "last_acc": summary["last_acc"],
            "best_epoch": summary["best_epoch"],
            "epochs": summary["epochs_completed"],
            "time_s": summary["wall_time_s"],
            "run_dir": summary["run_dir"],
        }
        for name, summary in summaries.items()
    ]
    return {
        "dataset": summaries["teacher"]["dataset"],
        "synthetic": data_root is None,
        "device": summaries["teacher"]["device"],
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        "total_time_s": total_time_s,
    }


TABLE_COLUMNS = ("run", "method", "model", "best acc (%)", "last acc (%)", "time (s)")


def table_cells(row: dict) -> list[str]:
    return [
        row["run"],
        row["method"],
        row["model"],
        f"{row['best_acc']:.2f}",
        f"{row['last_acc']:.2f}",
        f"{row['time_s']:.0f}",
    ]


def table_title(result: dict) -> str:
    """Names the data as the data module describes it (synthetic sets say so themselves)."""
    return f"famkd demo results, test top-1 accuracy; trained on the {result['dataset']}; device {result['device']}"


def comparison_lines(result: dict) -> list[str]:
    """Accuracy differences that the table implies, in points of best test accuracy."""
    best = {row["run"]: row["best_acc"] for row in result["rows"]}
    lines = [f"teacher - vanilla student: {best['teacher'] - best['vanilla']:+.2f} points"]
    lines += [
        f"{method} - vanilla student: {best[method] - best['vanilla']:+.2f} points" for method in STUDENT_METHODS[1:]
    ]
    lines.append(f"total time {result['total_time_s']:.0f} s")
    return lines


def results_table(result: dict) -> str:
    """The comparison as aligned plain text, with its title and the differences below it."""
    rows = [list(TABLE_COLUMNS)] + [table_cells(row) for row in result["rows"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    numeric = [False, False, False, True, True, True]
    lines = [table_title(result)]
    for row in rows:
        lines.append(
            "  ".join(c.rjust(w) if right else c.ljust(w) for c, w, right in zip(row, widths, numeric)).rstrip()
        )
    return "\n".join(lines + comparison_lines(result))


def results_markdown(result: dict) -> str:
    """results.md: the title, the table in Markdown and the differences."""
    lines = [f"# {table_title(result)}", "", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in result["rows"]]
    lines += [""] + [f"- {line}" for line in comparison_lines(result)]
    return "\n".join(lines) + "\n"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
