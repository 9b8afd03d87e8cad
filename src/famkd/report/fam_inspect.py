"""What FAM learns: gamma1/gamma2 per level, the learned filters' spectra, and the high-pass masks.

    famkd inspect RUN_DIR_OR_CHECKPOINT [--out DIR]

prints one row per FAM head (level, size, channels, gamma1, gamma2) and writes
`fam_filter_spectra.png` (mean |K_eff| per frequency beside the head's mask, DC at the centre) and
`highpass_masks.png` (ideal, Gaussian and Butterworth masks at the heads' sizes and the run's cutoff).
`famkd report` (famkd.report.page) shows the same and more as a web page, for one run or several.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from famkd.config import Config, config_from_dict
from famkd.data import dataset_image_size
from famkd.distill import Distiller, create_distiller, needs_teacher
from famkd.engine.run_dir import RunDir
from famkd.errors import FamkdError
from famkd.fam import fam_heads, filter_spectrum
from famkd.models import create_model
from famkd.report.figures import filter_figure, masks_figure, pyplot, write_png
from famkd.weights import load_checkpoint


def gamma_rows(distiller: nn.Module) -> list[dict[str, Any]]:
    """One row per FAM head: its path, size S, C_in -> C_out, gamma1 (global) and gamma2 (local)."""
    return [
        {
            "head": name,
            "size": fam.size,
            "in": fam.in_channels,
            "out": fam.out_channels,
            "gamma1": fam.gamma1.item(),
            "gamma2": fam.gamma2.item(),
        }
        for name, fam in fam_heads(distiller)
    ]


def format_gamma_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'FAM head':<22}{'S':>4}{'C_in->C_out':>14}{'gamma1':>10}{'gamma2':>10}"]
    for row in rows:
        channels = f"{row['in']}->{row['out']}"
        lines.append(f"{row['head']:<22}{row['size']:>4}{channels:>14}{row['gamma1']:>10.4f}{row['gamma2']:>10.4f}")
    return "\n".join(lines)


def filter_panels(distiller: nn.Module) -> list[tuple[str, Tensor, Tensor]]:
    """(title, mean |K_eff|, mask) of each FAM head, both centred, for `famkd.report.figures.filter_figure`."""
    return [
        (
            f"{name} S={fam.size}\ng1={fam.gamma1.item():.3f} g2={fam.gamma2.item():.3f}",
            filter_spectrum(fam).float(),
            torch.fft.fftshift(fam.mask),
        )
        for name, fam in fam_heads(distiller)
    ]


def build_distiller(cfg: Config, num_classes: int) -> Distiller:
    """The distiller `cfg` trains, its models freshly initialised (a teacher's weights are not loaded)."""
    image_size = dataset_image_size(cfg.data)
    student = create_model(cfg.student, num_classes=num_classes, image_size=image_size)
    teacher = None
    if needs_teacher(cfg.method):
        teacher = create_model(cfg.teacher.name, num_classes=num_classes, image_size=image_size)
    return create_distiller(
        cfg.method,
        student=student,
        teacher=teacher,
        image_size=image_size or 0,
        student_taps=cfg.student_taps,
        teacher_taps=cfg.teacher_taps,
        **cfg.distill,
    )


def distiller_from_checkpoint(path: str | Path) -> Distiller:
    """Rebuild a run's distiller (teacher with random weights: only its shapes matter) and load its heads."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).checkpoint()
    return distiller_from_state(load_checkpoint(path), path)


def distiller_from_state(checkpoint: dict[str, Any], path: Path) -> Distiller:
    """The distiller of a loaded run checkpoint (read from `path`), its student and heads loaded."""
    if "heads" not in checkpoint or "config" not in checkpoint:
        raise FamkdError(
            f"{path} is not a famkd run checkpoint (it has no heads/config); "
            "pass a run directory or its checkpoints/last.pt"
        )
    cfg = config_from_dict(checkpoint["config"])
    num_classes = next(v for k, v in reversed(checkpoint["student"].items()) if k.endswith("weight")).shape[0]
    distiller = build_distiller(cfg, num_classes)
    distiller.student.load_state_dict(checkpoint["student"])
    missing = set(distiller.head_state_dict()) - set(checkpoint["heads"])
    if missing:
        raise FamkdError(
            f"{path}: heads in the checkpoint do not match method {cfg.method!r} (missing e.g. {sorted(missing)[:3]})"
        )
    distiller.load_state_dict(checkpoint["heads"], strict=False)
    return distiller


def inspect_run(path: str | Path, out_dir: str | Path) -> str:
    """Print-ready gamma table; writes the spectra and mask figures into `out_dir`."""
    distiller = distiller_from_checkpoint(path)
    heads = fam_heads(distiller)
    if not heads:
        raise FamkdError(f"{path}: method has no FAM heads to inspect (use a fam_kd, fam_kd_l2l or fam_reviewkd run)")
    out_dir = Path(out_dir)
    pyplot()  # fail before creating the output folder when matplotlib is missing
    out_dir.mkdir(parents=True, exist_ok=True)
    write_png(filter_figure(filter_panels(distiller)), out_dir / "fam_filter_spectra.png")
    options = heads[0][1]  # every head has the method's filter options
    sizes = sorted({fam.size for _, fam in heads if fam.size > 1}, reverse=True)  # a 1x1 map has DC alone
    write_png(masks_figure(sizes, options.cutoff, options.order), out_dir / "highpass_masks.png")
    return format_gamma_table(gamma_rows(distiller))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_path", metavar="RUN_DIR", help="a famkd run directory (or its checkpoints/last.pt / best.pt)"
    )
    parser.add_argument(
        "--out", default="", metavar="DIR", help="where to write the figures (default: RUN_DIR/inspect)"
    )


def run(args: argparse.Namespace) -> int:
    run_path = Path(args.run_path)
    out_dir = Path(args.out) if args.out else (run_path if run_path.is_dir() else run_path.parent.parent) / "inspect"
    print(inspect_run(run_path, out_dir))
    print(f"figures: {out_dir / 'fam_filter_spectra.png'}, {out_dir / 'highpass_masks.png'}")
    return 0
