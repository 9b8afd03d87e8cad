"""What FAM learns, logged while a run trains: gammas every epoch, spectra every `run.spectra_every` epochs.

Every epoch record (metrics.jsonl, and TensorBoard under epoch/) gets `gamma1/<head>` and `gamma2/<head>`
for each FrequencyAttention of the distiller, <head> being its module path (e.g. `heads.3.fam`); a method
without FAM adds nothing. Every `run.spectra_every` epochs, and at the last epoch, process 0 writes
`spectra/epoch_<NNNN>.pt` (`SpectraSnapshot`, plain tensors, a few kB per head); 0 writes none.
`famkd report` reads both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypedDict, cast

import torch
from torch import Tensor

from famkd.config import Config
from famkd.distill import Distiller
from famkd.engine.checkpoint import save_checkpoint
from famkd.engine.run_dir import RunDir
from famkd.fam import FrequencyAttention, fam_heads, filter_spectrum, radial_power_spectrum
from famkd.models.taps import forward_features
from famkd.weights import load_checkpoint

SPECTRA_DIR = "spectra"
SPECTRA_IMAGES = 64  # the fixed batch: the first test images (fewer when the first test batch is smaller)
SPECTRA_FILE = re.compile(r"epoch_(\d+)\.pt")


class HeadSpectra(TypedDict):
    """One FAM head's spectra: its side S, the centred mean |K_eff| (S, S) (`famkd.fam.filter_spectrum`) and
    the radially averaged power (S//2 + 1,) (`famkd.fam.radial_power_spectrum`) of the teacher's and the
    student's stage output of side S (absent where the model has none) and of the FAM's output."""

    size: int
    filter: Tensor
    teacher: Tensor | None
    student: Tensor | None
    fam: Tensor


class SpectraSnapshot(TypedDict):
    """One spectra file: the epoch, the number of test images, and each FAM head's spectra by module path."""

    epoch: int
    images: int
    heads: dict[str, HeadSpectra]


def gamma_values(distiller: Distiller) -> dict[str, float]:
    """{"gamma1/<head>": ..., "gamma2/<head>": ...} for every FAM head ({} for a method without FAM)."""
    values = {}
    for name, fam in fam_heads(distiller):
        values[f"gamma1/{name}"] = fam.gamma1.item()
        values[f"gamma2/{name}"] = fam.gamma2.item()
    return values


def spectra_due(epoch: int, every: int, last_epoch: int) -> bool:
    """Whether epoch `epoch` writes spectra: every `every` epochs and at the last one; never when `every` is 0."""
    return every > 0 and (epoch % every == 0 or epoch == last_epoch)


def stage_map(maps: list[Tensor], size: int) -> Tensor | None:
    """The deepest map of side `size` among `maps` (stage outputs, then the pooled vector as a 1x1 map)."""
    return next((m for m in reversed(maps) if m.shape[-1] == size), None)


def optional_spectrum(maps: Tensor | None) -> Tensor | None:
    """The radial power spectrum of `maps` in float32, None for none."""
    return None if maps is None else radial_power_spectrum(maps).float()


@torch.no_grad()
def spectra_snapshot(distiller: Distiller, images: Tensor, labels: Tensor, epoch: int) -> SpectraSnapshot:
    """The spectra of every FAM head of `distiller` on `images` (evaluation mode, no autocast, float32).

    One distiller forward gives the FAM outputs (forward hooks); the student and the teacher are run once
    more for their stage outputs. The distiller's train/eval mode is restored afterwards.
    """
    heads = fam_heads(distiller)
    outputs: dict[str, Tensor] = {}

    def keep_output(name: str) -> Callable[..., None]:
        def hook(module: FrequencyAttention, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            outputs[name] = output

        return hook

    handles = [fam.register_forward_hook(keep_output(name)) for name, fam in heads]
    was_training = distiller.training
    distiller.eval()
    try:
        distiller(images, labels, epoch)
        student = forward_features(distiller.student, images)
        teacher = forward_features(distiller.teacher, images) if distiller.teacher is not None else None
    finally:
        distiller.train(was_training)
        for handle in handles:
            handle.remove()
    student_maps = [*student.stages, student.pooled[:, :, None, None]]
    teacher_maps = [*teacher.stages, teacher.pooled[:, :, None, None]] if teacher is not None else []
    return {
        "epoch": epoch,
        "images": images.shape[0],
        "heads": {
            name: {
                "size": fam.size,
                "filter": filter_spectrum(fam).float().cpu(),
                "teacher": optional_spectrum(stage_map(teacher_maps, fam.size)),
                "student": optional_spectrum(stage_map(student_maps, fam.size)),
                "fam": radial_power_spectrum(outputs[name]).float(),
            }
            for name, fam in heads
        },
    }


def spectra_path(run_dir: RunDir, epoch: int) -> Path:
    """spectra/epoch_<NNNN>.pt of the run."""
    return run_dir.path / SPECTRA_DIR / f"epoch_{epoch:04d}.pt"


def spectra_epochs(run_dir: RunDir) -> list[int]:
    """The epochs whose spectra file the run holds, in order."""
    folder = run_dir.path / SPECTRA_DIR
    found = (SPECTRA_FILE.fullmatch(path.name) for path in folder.glob("epoch_*.pt")) if folder.is_dir() else ()
    return sorted(int(match.group(1)) for match in found if match)


def read_spectra(run_dir: RunDir, epoch: int) -> SpectraSnapshot:
    """The spectra file of `epoch` (read safely: plain tensors only); FamkdError when it cannot be read."""
    return cast(SpectraSnapshot, load_checkpoint(spectra_path(run_dir, epoch)))


def fam_epoch_log(
    distiller: Distiller,
    test_loader: Iterable[tuple[Tensor, ...]],
    run_dir: RunDir,
    cfg: Config,
    epoch: int,
    write: bool,
) -> dict[str, float]:
    """The gammas to add to epoch `epoch`'s record; when `write` and spectra are due, also writes the spectra
    of the first SPECTRA_IMAGES images of `test_loader` (its first batch, so the same images every time)."""
    gammas = gamma_values(distiller)
    if gammas and write and spectra_due(epoch, cfg.run.spectra_every, cfg.train.epochs):
        images, labels, *_ = next(iter(test_loader))
        snapshot = spectra_snapshot(distiller, images[:SPECTRA_IMAGES], labels[:SPECTRA_IMAGES], epoch)
        save_checkpoint(spectra_path(run_dir, epoch), dict(snapshot))
    return gammas
