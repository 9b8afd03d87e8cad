"""One run folder as `famkd report` sees it: what it logged, what its checkpoint holds, and what is missing.

A run folder is one holding config.yaml, metrics.jsonl, summary.json or checkpoints/last.pt (famkd.engine.run_dir).
Everything is optional: a run in progress has no summary.json yet, a run copied without its checkpoints
is read from its logs alone, a run with no epoch yet has no metrics. What cannot be shown is said in the
view's `notes`, never raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from famkd.classification.fam_log import SpectraSnapshot, read_spectra, spectra_epochs
from famkd.config import Config, config_from_dict
from famkd.distill import Distiller
from famkd.engine.run_dir import CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE, RunDir
from famkd.errors import FamkdError
from famkd.fam import fam_heads, filter_spectrum, highpass_mask
from famkd.report.fam_inspect import build_distiller, distiller_from_state
from famkd.weights import load_checkpoint

RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, LAST_CHECKPOINT)
FAM_METHODS_HINT = "fam_kd, fam_kd_l2l or fam_reviewkd"


@dataclass(frozen=True)
class FamHead:
    """One FrequencyAttention of the run's distiller: its module path, side S and channels."""

    path: str
    size: int
    in_channels: int
    out_channels: int

    @property
    def label(self) -> str:
        return f"{self.path} (S={self.size})"


@dataclass
class RunView:
    """What the report shows of one run; each part empty (with a note saying why) when it is not available.

    gammas: (gamma1, gamma2) by head path; filters: centred mean |K_eff| by head path; `*_source` says where
    each came from (the checkpoint, or the logs when there is none).
    """

    folder: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_epoch: str = ""
    heads: list[FamHead] = field(default_factory=list)
    fam_options: dict[str, Any] = field(default_factory=dict)
    gammas: dict[str, tuple[float, float]] = field(default_factory=dict)
    gamma_source: str = ""
    filters: dict[str, Tensor] = field(default_factory=dict)
    filter_source: str = ""
    spectra: SpectraSnapshot | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return str(self.config.get("method") or (self.summary or {}).get("method") or "?")

    def centred_mask(self, size: int) -> Tensor:
        """The run's high-pass mask at side `size`, DC at the centre."""
        options = self.fam_options
        mask = highpass_mask(options["hpf"], size, options["cutoff"], options["order"])
        return torch.fft.fftshift(mask)


# ---- finding runs ------------------------------------------------------------------------------


def is_run_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_run_folders(paths: list[str]) -> list[Path]:
    """The run folders given, or found below the folders given; FamkdError for a path with none."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.is_dir():
            raise FamkdError(f"{path} is not a folder; give famkd run folders (the run.dir famkd train wrote)")
        below = [path] if is_run_folder(path) else sorted({p.parent for p in path.rglob(CONFIG_FILE)})
        if not below:
            raise FamkdError(
                f"{path} is not a famkd run folder (it has no {', '.join(RUN_MARKERS)}) and holds none; "
                "give the run.dir famkd train wrote, or a folder holding such runs"
            )
        found += [folder for folder in below if folder not in found]
    return found


# ---- reading one run -----------------------------------------------------------------------------


def read_run_view(folder: Path) -> RunView:
    """Everything the report shows of the run in `folder` (see RunView)."""
    view = RunView(folder)
    run_dir = RunDir(folder)
    view.summary = read_json_or_note(run_dir.summary_file, view.notes)
    view.metrics = read_epoch_records(run_dir.metrics_file, view.notes)
    checkpoint = read_checkpoint_or_note(run_dir, view.notes)
    view.config = read_config(run_dir.config_file, checkpoint, view.notes)
    if view.summary is None:
        view.notes.append(
            f"no {SUMMARY_FILE} yet: the run is in progress, or stopped before writing it "
            f"({len(view.metrics)} epoch(s) logged)"
        )
    if not view.metrics:
        view.notes.append(f"no epoch completed yet ({METRICS_FILE} holds no record): no training curves")
    distiller = run_distiller(view, checkpoint, folder / LAST_CHECKPOINT)
    if distiller is None:
        return view
    heads = fam_heads(distiller)
    view.heads = sorted(
        (FamHead(path, fam.size, fam.in_channels, fam.out_channels) for path, fam in heads),
        key=lambda head: (-head.size, head.path),
    )
    if not heads:
        view.notes.append(
            f"method {view.method} has no FAM heads: no gammas, filters or spectra (they belong to "
            f"{FAM_METHODS_HINT} runs)"
        )
        return view
    first = heads[0][1]  # every head has the method's filter options
    view.fam_options = {"hpf": first.hpf, "cutoff": first.cutoff, "order": first.order}
    read_fam_state(view, distiller if checkpoint is not None else None, run_dir)
    return view


def read_json_or_note(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The JSON mapping in `path`, or None (with a note when the file exists but cannot be read)."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        notes.append(f"{path.name} cannot be read ({error}); it is left out")
        return None
    return values if isinstance(values, dict) else None


def read_epoch_records(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl; a line that is not a JSON record (one being written) is skipped."""
    if not path.is_file():
        return []
    records, unreadable = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = None
            unreadable += 1
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    if unreadable:
        notes.append(f"{unreadable} line(s) of {path.name} are not JSON records (being written?); skipped")
    return records


def read_checkpoint_or_note(run_dir: RunDir, notes: list[str]) -> dict[str, Any] | None:
    """checkpoints/last.pt, or None with a note saying which figures need it."""
    if not run_dir.has_checkpoint():
        notes.append(
            f"no {LAST_CHECKPOINT} (a run copied without its checkpoints?): gammas and filters come from the "
            "logs where they hold them; what needs the weights is left out"
        )
        return None
    try:
        return load_checkpoint(run_dir.checkpoint())
    except FamkdError as error:
        notes.append(f"{error}; reading the logs alone")
        return None


def read_config(path: Path, checkpoint: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    """The run's config.yaml, else the config saved in its checkpoint, else {} (with a note)."""
    if path.is_file():
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            notes.append(f"{path.name} cannot be read ({str(error).splitlines()[0]})")
            values = None
        if isinstance(values, dict):
            return values
    if checkpoint is not None and isinstance(checkpoint.get("config"), dict):
        return checkpoint["config"]
    notes.append(f"no readable {CONFIG_FILE}: the run card lacks its options")
    return {}


def run_distiller(view: RunView, checkpoint: dict[str, Any] | None, path: Path) -> Distiller | None:
    """The run's distiller: with the checkpoint's weights when there is one, else its shapes alone (meta
    device, no memory); None (with a note) when the config cannot build one."""
    try:
        if checkpoint is not None:
            distiller = distiller_from_state(checkpoint, path)
            view.checkpoint_epoch = checkpoint_epoch_text(checkpoint)
            return distiller
        if not view.config:
            return None
        cfg: Config = config_from_dict(view.config)
        with torch.device("meta"):
            return build_distiller(cfg, num_classes=1)  # the heads' shapes do not depend on the classes
    except (FamkdError, RuntimeError) as error:  # RuntimeError: weights that do not fit the config's models
        first_line = str(error).strip().splitlines()[0]
        view.notes.append(f"the run's distiller cannot be rebuilt ({first_line}): no FAM figures")
        return None


def checkpoint_epoch_text(checkpoint: dict[str, Any]) -> str:
    """ "epoch 3", or "epoch 4, stopped after step 12" for a mid-epoch checkpoint."""
    partial = checkpoint.get("partial_period")
    if isinstance(partial, dict) and "epoch" in partial:
        return f"epoch {partial['epoch']}, stopped after step {partial.get('steps_done', '?')}"
    return f"epoch {checkpoint.get('epoch', '?')}"


def read_fam_state(view: RunView, distiller: Distiller | None, run_dir: RunDir) -> None:
    """Gammas and filters from the checkpoint's `distiller` (None: none), else from the logs; the latest spectra."""
    epochs = spectra_epochs(run_dir)
    if epochs:
        try:
            view.spectra = read_spectra(run_dir, epochs[-1])
        except FamkdError as error:
            view.notes.append(f"{error}: no feature spectra")
    else:
        view.notes.append(
            "no spectra logged (spectra/epoch_*.pt): the run has run.spectra_every=0, predates spectra logging, "
            "or has not reached a logged epoch; the feature spectra are left out"
        )
    if distiller is not None:
        source = f"{LAST_CHECKPOINT}, {view.checkpoint_epoch}"
        for path, fam in fam_heads(distiller):
            view.gammas[path] = (fam.gamma1.item(), fam.gamma2.item())
            view.filters[path] = filter_spectrum(fam).float()
        view.gamma_source = view.filter_source = source
        return
    read_logged_gammas(view)
    if view.spectra is not None:
        view.filters = {path: head["filter"] for path, head in view.spectra["heads"].items()}
        view.filter_source = f"spectra/epoch_{view.spectra['epoch']:04d}.pt"
    else:
        view.notes.append("the learned filters need the checkpoint or a spectra file: left out")


def read_logged_gammas(view: RunView) -> None:
    """The gammas of the last epoch record holding them (no checkpoint to read them from)."""
    keys = {head.path: (f"gamma1/{head.path}", f"gamma2/{head.path}") for head in view.heads}
    for record in reversed(view.metrics):
        if all(gamma1 in record and gamma2 in record for gamma1, gamma2 in keys.values()):
            view.gammas = {
                path: (float(record[gamma1]), float(record[gamma2])) for path, (gamma1, gamma2) in keys.items()
            }
            view.gamma_source = f"{METRICS_FILE}, epoch {record['epoch']}"
            return
    view.notes.append(
        f"no gammas: no checkpoint, and {METRICS_FILE} does not log them (the run predates gamma logging)"
    )
