"""The figures of `famkd inspect` and `famkd report`, drawn with matplotlib (the `plot` extra).

Each `*_figure` function returns a matplotlib Figure (None when there is nothing to draw); `save_figure`
writes it as PNG or SVG, whichever is smaller, with no external fonts (SVG text is drawn as paths).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from famkd.errors import FamkdError
from famkd.fam import highpass_mask

DPI = 100
FIGURE_WIDTH = 11.0  # inches: 1100 px at DPI
CURVE_STYLES = {"teacher": ("tab:blue", "-"), "student": ("tab:orange", "--"), "fam": ("tab:green", "-.")}


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend, or a FamkdError saying how to install it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise FamkdError(
            "famkd inspect and famkd report draw their figures with matplotlib, which is not installed: "
            "pip install 'famkd[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, folder: Path, stem: str) -> str:
    """Write `figure` as `stem`.png or `stem`.svg into `folder`, whichever is smaller; returns the file name."""
    rendered = {}
    for suffix in ("png", "svg"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, dpi=DPI, metadata={"Date": None} if suffix == "svg" else None)
        rendered[suffix] = buffer.getvalue()
    pyplot().close(figure)
    suffix = min(rendered, key=lambda key: len(rendered[key]))
    (folder / f"{stem}.{suffix}").write_bytes(rendered[suffix])
    return f"{stem}.{suffix}"


def write_png(figure: Any, path: Path) -> None:
    """Write `figure` as a PNG file at `path` and close it."""
    figure.savefig(path, dpi=DPI)
    pyplot().close(figure)


def epoch_axis(axis: Any) -> None:
    """Label `axis`'s x axis "epoch", with whole-number ticks."""
    axis.set_xlabel("epoch", fontsize=8)
    axis.locator_params(axis="x", integer=True)
    axis.tick_params(labelsize=7)


def panel_grid(count: int, columns: int, height: float) -> tuple[Any, list[Any]]:
    """A figure of `count` panels, `columns` per row, each `height` inches high; the unused panels hidden."""
    rows = -(-count // columns)
    figure, axes = pyplot().subplots(rows, columns, figsize=(FIGURE_WIDTH, height * rows), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def training_curves_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> Any | None:
    """Total loss, each loss term, lr, and train/test top-1 per epoch, the runs overlaid (None: no epochs)."""
    runs = [(label, records) for label, records in runs if records]
    if not runs:
        return None
    terms = list(dict.fromkeys(k for _, records in runs for r in records for k in r if k.startswith("loss_")))
    panels = ["loss", *terms, "lr", "accuracy"]
    figure, axes = panel_grid(len(panels), 3, 2.6)
    for index, (label, records) in enumerate(runs):
        color = f"C{index % 10}"
        epochs = [r["epoch"] for r in records]
        for axis, key in zip(axes, panels):
            if key == "accuracy":
                axis.plot(epochs, [r["test_acc"] for r in records], color=color, label=f"{label} test")
                axis.plot(
                    epochs, [r["train_acc"] for r in records], color=color, linestyle="--", label=f"{label} train"
                )
            elif any(key in r for r in records):
                axis.plot(epochs, [r.get(key, float("nan")) for r in records], color=color, marker=".", label=label)
    for axis, key in zip(axes, panels):
        axis.set_title("top-1 (%): test solid, train dashed" if key == "accuracy" else key, fontsize=9)
        epoch_axis(axis)
        if key == "lr":
            axis.set_yscale("log")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def gamma_trajectory_figure(records: list[dict[str, Any]], heads: Sequence[tuple[str, str]]) -> Any | None:
    """gamma1 and gamma2 of each head (path, label) per epoch, from the records' gamma keys (None: not logged)."""
    logged = [(path, label) for path, label in heads if any(f"gamma1/{path}" in r for r in records)]
    if not logged:
        return None
    figure, axes = panel_grid(2, 2, 2.8)
    for number, axis in zip((1, 2), axes):
        for path, label in logged:
            key = f"gamma{number}/{path}"
            points = [(r["epoch"], r[key]) for r in records if key in r]
            axis.plot(*zip(*points), marker=".", label=label)
        axis.set_title(f"gamma{number} ({'global' if number == 1 else 'local 1x1'} branch)", fontsize=9)
        axis.ticklabel_format(axis="y", useOffset=False)
        epoch_axis(axis)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def filter_figure(filters: Sequence[tuple[str, Tensor, Tensor]]) -> Any:
    """Per head (title, centred mean |K_eff|, centred mask): |K_eff| on the top row, its mask below it."""
    plt = pyplot()
    count = len(filters)
    figure, axes = plt.subplots(2, count, figsize=(min(FIGURE_WIDTH, 2.8 * count), 5.2), squeeze=False)
    for column, (title, magnitude, mask) in enumerate(filters):
        image = axes[0][column].imshow(magnitude.numpy(), cmap="viridis", extent=centred_extent(magnitude.shape[-1]))
        figure.colorbar(image, ax=axes[0][column], fraction=0.046).ax.tick_params(labelsize=6)
        axes[0][column].set_title(f"{title}\nmean |K_eff|", fontsize=8)
        axes[1][column].imshow(mask.numpy(), cmap="gray", vmin=0, vmax=1, extent=centred_extent(mask.shape[-1]))
        axes[1][column].set_title("high-pass mask M", fontsize=8)
        for axis in (axes[0][column], axes[1][column]):
            axis.tick_params(labelsize=6)
            axis.set_xlabel("kx", fontsize=7)
            axis.set_ylabel("ky", fontsize=7)
    figure.tight_layout()
    return figure


def centred_extent(size: int) -> tuple[float, float, float, float]:
    """imshow extent putting integer frequencies -S//2 .. at pixel centres, ky growing downwards."""
    low, high = -(size // 2) - 0.5, size - size // 2 - 0.5
    return (low, high, high, low)


def feature_spectra_figure(heads: Sequence[tuple[str, dict[str, Tensor | None]]]) -> Any:
    """Per head (title, {"teacher"|"student"|"fam": radial power or None}): each curve over its total, log y."""
    figure, axes = panel_grid(len(heads), min(len(heads), 4), 2.8)
    for axis, (title, curves) in zip(axes, heads):
        for name, curve in curves.items():
            if curve is not None:
                color, style = CURVE_STYLES[name]
                share = (curve / curve.sum()).numpy()
                axis.semilogy(range(len(share)), share, color=color, linestyle=style, marker=".", label=name)
        axis.set_title(title, fontsize=8)
        axis.set_xlabel("|k| (cycles per map side)", fontsize=7)
        axis.locator_params(axis="x", integer=True)
        axis.tick_params(labelsize=6)
    axes[0].set_ylabel("share of power", fontsize=7)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def mask_titles(size: int, cutoff: float, order: int) -> dict[str, str]:
    """The filters drawn by `masks_figure` with their cutoff's units at side `size`."""
    box = int(cutoff * (size // 2))
    return {
        "ideal": f"ideal, cutoff {cutoff:g} x floor(S/2)\n= box half-width {box} bin(s)",
        "gaussian": f"gaussian, D0 {cutoff:g}\n(Nyquist = 1, 1 bin = {2 / size:.3g})",
        "butterworth": f"butterworth n={order}, D0 {cutoff:g}\n(Nyquist = 1, 1 bin = {2 / size:.3g})",
    }


def masks_figure(sizes: Sequence[int], cutoff: float, order: int) -> Any:
    """The ideal, Gaussian and Butterworth masks (rows) at each side S (columns), DC at the centre."""
    plt = pyplot()
    figure, axes = plt.subplots(3, len(sizes), figsize=(min(FIGURE_WIDTH, 3.2 * len(sizes)), 8.4), squeeze=False)
    for column, size in enumerate(sizes):
        for row, (kind, title) in enumerate(mask_titles(size, cutoff, order).items()):
            mask = torch.fft.fftshift(highpass_mask(kind, size, cutoff, order))
            axes[row][column].imshow(mask.numpy(), cmap="gray", vmin=0, vmax=1, extent=centred_extent(size))
            axes[row][column].set_title(f"S={size}: {title}", fontsize=7)
            axes[row][column].tick_params(labelsize=6)
    figure.tight_layout()
    return figure
