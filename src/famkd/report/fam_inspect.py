"""What FAM learns: gamma1/gamma2 per level, the learned filters' spectra, and the high-pass masks.

    famkd inspect RUN_DIR_OR_CHECKPOINT [--out DIR]

prints one row per FAM head (level, size, channels, gamma1, gamma2) and writes
`fam_filter_spectra.png` (mean |K_eff| per frequency, DC at the centre) and
`highpass_masks.png` (ideal, Gaussian and Butterworth masks side by side).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from famkd.config import config_from_dict
from famkd.data import dataset_image_size
from famkd.distill import Distiller, create_distiller, needs_teacher
from famkd.engine.checkpoint import load_checkpoint
from famkd.engine.run_dir import RunDir
from famkd.errors import FamkdError
from famkd.fam import FrequencyAttention, highpass_mask, negated_indices
from famkd.models import create_model


def fam_heads(distiller: nn.Module) -> list[tuple[str, FrequencyAttention]]:
    """Every FrequencyAttention in the distiller's heads, with its module path."""
    return [(name, m) for name, m in distiller.named_modules() if isinstance(m, FrequencyAttention)]


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


@torch.no_grad()
def filter_spectrum(fam: FrequencyAttention) -> Tensor:
    """Mean over channel pairs of |K_eff(k)| on the full (S, S) grid, fftshifted so DC is central."""
    half = fam.effective_half_filter().abs().mean(dim=(0, 1))
    size = fam.size
    full = torch.empty(size, size, dtype=half.dtype)
    full[:, : half.shape[1]] = half
    columns = torch.arange(half.shape[1], size)
    full[:, columns] = half[negated_indices(size)][:, (-columns) % size]  # |K_eff(-k)| = |K_eff(k)|
    return torch.fft.fftshift(full)


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend, or a FamkdError saying how to install it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise FamkdError(
            "famkd inspect draws its figures with matplotlib, which is not installed: "
            "pip install 'famkd[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_filter_spectra(distiller: nn.Module, path: Path) -> None:
    plt = pyplot()
    heads = fam_heads(distiller)
    figure, axes = plt.subplots(1, len(heads), figsize=(3 * len(heads), 3), squeeze=False)
    for axis, (name, fam) in zip(axes[0], heads):
        image = axis.imshow(filter_spectrum(fam).numpy(), cmap="viridis")
        axis.set_title(f"{name}\nS={fam.size} g1={fam.gamma1.item():.2f} g2={fam.gamma2.item():.2f}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle("mean |K_eff| per frequency (DC at centre)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_highpass_masks(
    path: Path, size: int = 32, cutoff: float = 0.1, smooth_cutoff: float = 0.3, order: int = 2
) -> None:
    """The ideal (published rule, `cutoff`), Gaussian and Butterworth (D0 = `smooth_cutoff`) masks."""
    plt = pyplot()
    masks = {
        f"ideal (cutoff {cutoff})": highpass_mask("ideal", size, cutoff),
        f"gaussian (D0 {smooth_cutoff})": highpass_mask("gaussian", size, smooth_cutoff),
        f"butterworth (D0 {smooth_cutoff}, n={order})": highpass_mask("butterworth", size, smooth_cutoff, order),
    }
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for axis, (title, mask) in zip(axes, masks.items()):
        axis.imshow(torch.fft.fftshift(mask).numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("kx (DC at centre)")
        axis.set_ylabel("ky")
    figure.suptitle(f"high-pass masks at S={size}; D0 in normalised frequency (Nyquist = 1)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def distiller_from_checkpoint(path: str | Path) -> Distiller:
    """Rebuild a run's distiller (teacher with random weights: only its shapes matter) and load its heads."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).checkpoint()
    checkpoint = load_checkpoint(path)
    if "heads" not in checkpoint or "config" not in checkpoint:
        raise FamkdError(
            f"{path} is not a famkd run checkpoint (it has no heads/config); "
            "pass a run directory or its checkpoints/last.pt"
        )
    cfg = config_from_dict(checkpoint["config"])
    num_classes = next(v for k, v in reversed(checkpoint["student"].items()) if k.endswith("weight")).shape[0]
    student = create_model(cfg.student, num_classes=num_classes)
    teacher = create_model(cfg.teacher.name, num_classes=num_classes) if needs_teacher(cfg.method) else None
    distiller = create_distiller(
        cfg.method, student=student, teacher=teacher, image_size=dataset_image_size(cfg.data), **cfg.distill
    )
    student.load_state_dict(checkpoint["student"])
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
    if not fam_heads(distiller):
        raise FamkdError(f"{path}: method has no FAM heads to inspect (use a fam_kd, fam_kd_l2l or fam_reviewkd run)")
    out_dir = Path(out_dir)
    pyplot()  # fail before creating the output folder when matplotlib is missing
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_filter_spectra(distiller, out_dir / "fam_filter_spectra.png")
    plot_highpass_masks(out_dir / "highpass_masks.png")
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
