"""`famkd results`: completed runs grouped over seeds into a methods x (teacher -> student) table.

    famkd results RUN_DIR [RUN_DIR ...] [--format markdown|csv] [--reference] [--json FILE]

Every run under the given folders whose summary.json says status "completed" counts. Runs are averaged
together only when they share method, teacher, student and settings (`run_settings`): the epochs, the
training data (summary.json's description without the folder it was read from), the teacher's weights
(`teacher_identity`) and every setting of the run's config.yaml except those that say where and how it ran
rather than what it trained (IGNORED_SETTINGS: file locations, device, compilation, memory layout,
logging). A group gives one cell: best and last top-1, mean ± sample std over its runs, and n; a single run
has no std (shown as "-", null in JSON, empty in CSV).

Rows are methods, columns teacher -> student pairs. A run of method vanilla (a model trained alone) fills two
rows: "teacher" under every column whose teacher is that model, "vanilla" under every column whose student
is; a model trained alone that is in no pair gets a column of its own. When groups that differ in settings
fall in the same cell, their row splits into one row per group, labelled with the settings that tell them
apart (e.g. "kd [train.epochs=2]"): never a silent merge. A summary.json that cannot be read is skipped with a
warning; runs that did not complete (failed, interrupted) are listed below the table with their status and error.

`--reference` adds the published numbers of famkd.recipes as "(published: SOURCE, best|last)" rows: a best-epoch
number sits under famkd's best ("71.97 / -"), a last-epoch number under famkd's last ("- / 70.66"), so each is read
against its like. Every measured cell is then checked against the published setting (PUBLISHED_SETTINGS: the
epochs and the whole training set); a cell that differs is marked "(not comparable)", and a list below the table
gives every measured cell's epochs and data and, where it differs, how.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from famkd.engine.run_dir import CONFIG_FILE, SUMMARY_FILE
from famkd.errors import FamkdError
from famkd.files import write_text_atomic
from famkd.recipes import BEST, PUBLISHED_DISTILLATION_TOP1, PUBLISHED_VANILLA_TOP1, Source
from famkd.settings import flat_settings

VANILLA = "vanilla"
TEACHER_ROW = "teacher"
REQUIRED_KEYS = ("status", "method", "student", "best_acc", "last_acc", "epochs")
# Config keys left out of the comparison: the row and column, and where or how a run executed. The teacher
# and the data are compared by identity instead (`teacher_identity`, `data_identity`).
IGNORED_SETTINGS = {
    "method",
    "student",
    "device",
    "train.eval_batch_size",
    "train.log_interval",
    "train.compile",
    "train.channels_last",
}
IGNORED_SECTIONS = ("teacher.", "data.", "run.")
CAPTION = "best / last test top-1 (%): mean ± sample std over n runs (- : a single run has no std)"
REFERENCE_CAPTION = (
    'published rows: a best-epoch number under best ("71.97 / -"), a last-epoch number under last ("- / 70.66")'
)
NOT_COMPARABLE = "(not comparable)"


@dataclass(frozen=True)
class PublishedSetting:
    """The setting published numbers of a dataset were trained in: the epochs and the whole training set."""

    dataset: str  # how summary.json's data description begins
    epochs: int
    data: str  # a regular expression the data description (data_identity) matches in full


PUBLISHED_SETTINGS = (
    PublishedSetting("CIFAR-100", 240, r"CIFAR-100, train, 50000 images"),
    PublishedSetting("ImageNet", 100, r"ImageNet .*, train, 1281167 images of 1000 classes"),
)


@dataclass(frozen=True)
class Run:
    """One completed run: what it trained, its accuracies and the settings that must match to average it."""

    folder: Path
    method: str
    teacher: str | None
    student: str
    seed: int | None
    best_acc: float
    last_acc: float
    settings: dict[str, str]


@dataclass
class Group:
    """Runs averaged together: same method, teacher, student and settings."""

    method: str
    teacher: str | None
    student: str
    settings: dict[str, str]
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Cell:
    """One table cell: statistics over a group's runs, or a published number (n None; best_mean or last_mean)."""

    n: int | None
    best_mean: float | None
    best_std: float | None
    last_mean: float | None
    last_std: float | None
    seeds: list[int | None] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    setting: str = ""  # measured cells: the epochs and the training data
    not_comparable: str = ""  # with --reference: how the setting differs from the published one ("" if it does not)


@dataclass
class Row:
    """A table row: a method (or "teacher" / "vanilla"), the settings in its label, its cells by column."""

    label: str
    method: str
    published: bool
    settings: dict[str, str]
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Table:
    """Column names ("teacher -> student", or a model trained alone) and the rows in display order."""

    columns: list[str]
    rows: list[Row]
    reference: bool = False


@dataclass(frozen=True)
class Column:
    """A teacher -> student pair, or (teacher None) a model trained alone that is in no pair."""

    teacher: str | None
    student: str

    @property
    def name(self) -> str:
        return f"{self.teacher} -> {self.student}" if self.teacher else self.student


# ---- reading runs ------------------------------------------------------------------------------


def collect_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """The completed runs under `paths` (searched recursively), and one message per summary.json skipped."""
    folders = [Path(path) for path in paths]
    for folder in folders:
        if not folder.is_dir():
            raise FamkdError(f"{folder} is not a folder; give run folders or folders that hold them")
    runs, skipped = [], []
    for summary_file in sorted({found.resolve() for folder in folders for found in folder.rglob(SUMMARY_FILE)}):
        try:
            run = read_run(summary_file)
        except ValueError as problem:
            skipped.append(f"skipped {summary_file}: {problem}")
            continue
        if run is not None:
            runs.append(run)
    return runs, skipped


def left_out_runs(paths: Iterable[str | Path]) -> list[str]:
    """One line per run under `paths` whose summary.json says it did not complete: its folder, status and error."""
    lines = []
    for summary_file in sorted({found.resolve() for path in paths for found in Path(path).rglob(SUMMARY_FILE)}):
        try:
            summary = read_mapping(summary_file, json.loads, "JSON")
        except ValueError:
            continue  # collect_runs reports it
        status = summary.get("status")
        if status is None or status == "completed":
            continue
        done = summary.get("epochs_completed")
        progress = f", {done} of {summary['epochs']} epochs" if done is not None and "epochs" in summary else ""
        error = f": {summary['error']}" if summary.get("error") else ""
        lines.append(f"{summary_file.parent}: {status}{progress}{error}")
    return lines


def read_run(summary_file: Path) -> Run | None:
    """The run of `summary_file` (None when it has not completed); ValueError saying what is wrong with it."""
    summary = read_mapping(summary_file, json.loads, "JSON")
    missing = [key for key in REQUIRED_KEYS if key not in summary]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)} (not a famkd summary?)")
    if summary["status"] != "completed":
        return None
    for key in ("best_acc", "last_acc"):
        if not isinstance(summary[key], (int, float)):
            raise ValueError(f"{key} is {summary[key]!r}, not a number")
    config_file = summary_file.parent / CONFIG_FILE
    config = read_mapping(config_file, yaml.safe_load, "YAML") if config_file.is_file() else {}
    return Run(
        folder=summary_file.parent,
        method=summary["method"],
        teacher=summary.get("teacher"),
        student=summary["student"],
        seed=summary.get("seed"),
        best_acc=float(summary["best_acc"]),
        last_acc=float(summary["last_acc"]),
        settings=run_settings(summary, config),
    )


def read_mapping(path: Path, parse: Callable[[str], Any], kind: str) -> dict:
    """The mapping `parse` reads from `path`; ValueError naming the file when it is not one."""
    try:
        values = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{path.name} is not valid {kind} ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path.name} holds a {type(values).__name__}, not a {kind} mapping")
    return values


def run_settings(summary: dict, config: dict) -> dict[str, str]:
    """What must match for runs to be averaged: config settings (IGNORED_* left out), epochs, data, teacher."""
    settings = {
        key: setting_text(value)
        for key, value in flat_settings(config).items()
        if key not in IGNORED_SETTINGS and not key.startswith(IGNORED_SECTIONS)
    }
    settings["train.epochs"] = str(summary["epochs"])
    settings["data"] = data_identity(summary)
    if summary.get("teacher"):
        settings["teacher"] = teacher_identity(summary, config)
    return settings


def setting_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def data_identity(summary: dict) -> str:
    """The training data as summary.json describes it, without where it was read from (the slice, the count)."""
    description = summary.get("dataset") or "unknown"
    return re.sub(r" \(\w+ layout at .*\)(?=, train, )", "", description)


def teacher_identity(summary: dict, config: dict) -> str:
    """The teacher's weights: their sha256 when recorded, else the checkpoint path and its measured test top-1."""
    teacher = config.get("teacher") or {}
    sha256 = summary.get("teacher_sha256") or teacher.get("sha256")
    if sha256:
        return f"sha256 {sha256[:12]}"
    accuracy = summary.get("teacher_acc")
    measured = f" (top-1 {accuracy:.2f})" if isinstance(accuracy, (int, float)) else ""
    return f"{teacher.get('checkpoint') or '?'}{measured}"


# ---- grouping and statistics ---------------------------------------------------------------------


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs with the same method, teacher, student and settings, in first-seen order."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.method, run.teacher, run.student, tuple(sorted(run.settings.items())))
        groups.setdefault(key, Group(run.method, run.teacher, run.student, run.settings)).runs.append(run)
    return list(groups.values())


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_cell(group: Group, reference: bool = False) -> Cell:
    best_mean, best_std = mean_std([run.best_acc for run in group.runs])
    last_mean, last_std = mean_std([run.last_acc for run in group.runs])
    seeds = [run.seed for run in group.runs]
    folders = [str(run.folder) for run in group.runs]
    setting = f"{group.settings.get('train.epochs', '?')} epochs, data {group.settings.get('data', '?')}"
    gaps = "; ".join(published_setting_gaps(group.settings)) if reference else ""
    return Cell(len(group.runs), best_mean, best_std, last_mean, last_std, seeds, folders, setting, gaps)


def published_setting_gaps(settings: dict[str, str]) -> list[str]:
    """How a group's epochs and data differ from the setting of the published numbers (empty: comparable)."""
    data = settings.get("data", "")
    published = next((p for p in PUBLISHED_SETTINGS if data.startswith(p.dataset)), None)
    if published is None:
        return [f"data {data!r} is not a dataset with published numbers"]
    gaps = []
    if settings.get("train.epochs") != str(published.epochs):
        gaps.append(f"{settings.get('train.epochs')} epochs, published {published.epochs}")
    if not re.fullmatch(published.data, data):
        gaps.append(f"data {data}, published the whole {published.dataset} training set")
    return gaps


def comparison_table(runs: Iterable[Run], reference: bool = False) -> Table:
    """The methods x pairs table of `runs` (see the module docstring); `reference` adds published rows."""
    groups = group_runs(runs)
    columns = table_columns(groups)
    placed: dict[str, list[tuple[Group, Column]]] = defaultdict(list)
    for group in groups:
        for row_kind, column in placements(group, columns):
            placed[row_kind].append((group, column))
    methods = {group.method for group in groups} | {r.method for r in PUBLISHED_DISTILLATION_TOP1 if reference}
    rows = []
    for row_kind in (TEACHER_ROW, VANILLA, *sorted(methods - {VANILLA})):
        rows += split_rows(row_kind, placed[row_kind], reference)
        if reference:
            rows += published_rows(row_kind, columns)
    return Table([column.name for column in columns], rows, reference)


def table_columns(groups: list[Group]) -> list[Column]:
    """Every teacher -> student pair distilled, then each model trained alone that is in no pair."""
    pairs = {Column(g.teacher, g.student) for g in groups if g.method != VANILLA}
    in_pairs = {model for pair in pairs for model in (pair.teacher, pair.student)}
    alone = {Column(None, g.student) for g in groups if g.method == VANILLA and g.student not in in_pairs}
    return sorted(pairs, key=lambda c: (str(c.teacher), c.student)) + sorted(alone, key=lambda c: c.student)


def placements(group: Group, columns: list[Column]) -> list[tuple[str, Column]]:
    """(row kind, column) of every cell `group` fills."""
    if group.method != VANILLA:
        return [(group.method, column) for column in columns if column == Column(group.teacher, group.student)]
    as_teacher = [(TEACHER_ROW, column) for column in columns if column.teacher == group.student]
    return as_teacher + [(VANILLA, column) for column in columns if column.student == group.student]


def split_rows(row_kind: str, placed: list[tuple[Group, Column]], reference: bool = False) -> list[Row]:
    """The rows of one kind: one, or one per setting values that differ within some cell, labelled with them."""
    by_cell: dict[Column, list[Group]] = defaultdict(list)
    for group, column in placed:
        by_cell[column].append(group)
    label_keys = sorted({key for groups in by_cell.values() for key in differing_keys(groups)})
    rows: dict[str, Row] = {}
    for group, column in placed:
        shown = {key: group.settings.get(key, "-") for key in label_keys}
        label = row_label(row_kind, shown)
        rows.setdefault(label, Row(label, row_kind, False, shown)).cells[column.name] = group_cell(group, reference)
    return [rows[label] for label in sorted(rows)]


def row_label(row_kind: str, settings: dict[str, str]) -> str:
    """ "kd", or "kd [train.epochs=2, distill.temperature=4]" when settings tell its rows apart."""
    return row_kind + (" [" + ", ".join(f"{k}={v}" for k, v in settings.items()) + "]" if settings else "")


def differing_keys(groups: list[Group]) -> set[str]:
    keys = {key for group in groups for key in group.settings}
    return {key for key in keys if len({group.settings.get(key) for group in groups}) > 1}


def published_rows(row_kind: str, columns: list[Column]) -> list[Row]:
    """The published numbers (famkd.recipes) of one row kind for the table's columns: one row per variant and
    source, labelled with the source and whether its numbers are best- or last-epoch."""
    found: dict[tuple[str, Source], dict[str, float]] = defaultdict(dict)  # (variant, source) -> column -> top-1
    if row_kind in (TEACHER_ROW, VANILLA):
        for column in columns:
            model = column.teacher if row_kind == TEACHER_ROW else column.student
            for published in PUBLISHED_VANILLA_TOP1:
                if published.model == model:
                    found[("", published.source)][column.name] = published.top1
    else:
        for result in PUBLISHED_DISTILLATION_TOP1:
            pair = Column(result.teacher, result.student)
            if result.method == row_kind and pair in columns:
                found[(result.variant, result.source)][pair.name] = result.top1
    rows = []
    for (variant, source), values in sorted(found.items(), key=lambda item: (item[0][0], item[0][1].name)):
        option, _, value = variant.partition("=")
        settings = {f"distill.{option}": value} if variant else {}
        label = f"{row_label(row_kind, settings)} (published: {source.name}, {source.epoch})"
        best = source.epoch == BEST
        cells = {
            name: Cell(None, top1 if best else None, None, None if best else top1, None)
            for name, top1 in values.items()
        }
        rows.append(Row(label, row_kind, True, settings, cells))
    return rows


# ---- output ----------------------------------------------------------------------------------------


def cell_text(cell: Cell) -> str:
    """ "74.12 ± 0.21 / 73.90 ± 0.30 (n=3)", "(not comparable)" appended where the setting differs from the
    published one; a published number under best or last: "71.97 / -", "- / 70.66"."""
    if cell.n is None:
        return " / ".join("-" if value is None else f"{value:.2f}" for value in (cell.best_mean, cell.last_mean))

    def spread(std: float | None) -> str:
        return "-" if std is None else f"{std:.2f}"

    return (
        f"{cell.best_mean:.2f} ± {spread(cell.best_std)} / {cell.last_mean:.2f} ± {spread(cell.last_std)} (n={cell.n})"
        + (f" {NOT_COMPARABLE}" if cell.not_comparable else "")
    )


def format_markdown(table: Table, left_out: Iterable[str] = ()) -> str:
    """The table, then (with --reference) each measured cell's setting, then the runs left out."""
    caption = [CAPTION, REFERENCE_CAPTION] if table.reference else [CAPTION]
    lines = [*caption, "", "| method | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    for row in table.rows:
        cells = [cell_text(row.cells[name]) if name in row.cells else "" for name in table.columns]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    if table.reference:
        lines += ["", "Measured cells, their setting and whether it is the published one:"]
        for row in table.rows:
            for name, cell in row.cells.items():
                if cell.n is not None:
                    verdict = f"NOT comparable: {cell.not_comparable}" if cell.not_comparable else "comparable"
                    lines.append(f"- {row.label}, {name}: {cell.setting}; {verdict}")
    left_out = list(left_out)
    if left_out:
        lines += ["", "Left out (did not complete):", *(f"- {line}" for line in left_out)]
    return "\n".join(lines)


def format_csv(table: Table) -> str:
    """One line per filled cell: row, column, n, best_mean, best_std, last_mean, last_std (empty: none), and with
    --reference the measured cell's setting and how it differs from the published one."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = ["setting", "not_comparable"] if table.reference else []
    writer.writerow(["row", "column", "n", "best_mean", "best_std", "last_mean", "last_std", *extra])
    for row in table.rows:
        for name, cell in row.cells.items():
            numbers = (cell.n, cell.best_mean, cell.best_std, cell.last_mean, cell.last_std)
            notes = [cell.setting, cell.not_comparable] if table.reference else []
            writer.writerow([row.label, name, *("" if x is None else x for x in numbers), *notes])
    return out.getvalue().rstrip("\n")


def table_rows(table: Table) -> list[dict]:
    """The rows as plain data (for --json): label, method, published, settings, cells by column."""
    return [asdict(row) for row in table.rows]


# ---- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run folders or folders holding them (searched recursively)"
    )
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="table format")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="add the published numbers (CIFAR-100, ImageNet) with their source and best/last label, and mark "
        "measured cells whose epochs or data differ from the published setting",
    )
    parser.add_argument("--json", default="", metavar="FILE", help="also write the table rows as JSON")


def run(args: argparse.Namespace) -> int:
    runs, skipped = collect_runs(args.runs)
    for message in skipped:
        print(f"famkd: warning: {message}", file=sys.stderr)
    if not runs:
        raise FamkdError(
            f"no completed run (summary.json with status completed) under {', '.join(args.runs)}; "
            "give the folders famkd train or famkd sweep wrote (run.dir)"
        )
    table = comparison_table(runs, reference=args.reference)
    left_out = left_out_runs(args.runs)
    if args.format == "csv":
        print(format_csv(table))
        for line in left_out:
            print(f"famkd: note: left out {line}", file=sys.stderr)
    else:
        print(format_markdown(table, left_out))
    if args.json:
        write_text_atomic(args.json, json.dumps(table_rows(table), indent=2) + "\n")
    return 0
