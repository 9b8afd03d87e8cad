"""`famkd report` and the FAM logging it reads, against direct computations.

Tiny runs (resnet8 teacher, resnet8 fam_kd student with spectra every epoch) on a tiny CIFAR-100; the
report's numbers are checked against the float64 oracle of the FAM (direct_global_branch), the checkpoint's
gammas and `famkd results`; a headless Chromium renders the page (installed with apt-get when absent:
the test fails, saying why, when it cannot be; FAMKD_SKIP_BROWSER_TEST=1 skips it, saying so).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
import yaml

from famkd.classification.fam_log import spectra_due
from famkd.cli import main
from famkd.config import load_config
from famkd.errors import ConfigError
from famkd.fam import (
    FrequencyAttention,
    direct_global_branch,
    frequency_radius,
    highpass_mask,
    radial_power_spectrum,
)
from famkd.report.fam_inspect import distiller_from_checkpoint
from famkd.report.run_view import FamHead
from famkd.weights import load_checkpoint

SHORT_RUN = [
    "student=resnet8",
    "device=cpu",
    "train.epochs=2",
    "train.batch_size=8",
    "train.max_steps_per_epoch=2",
    "train.lr_milestones=[1]",
    "train.log_interval=2",
    "run.deterministic=true",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- runs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_cifar_npy):
    run_dir = tmp_path_factory.mktemp("report_teacher") / "vanilla"
    argv = ["train", *SHORT_RUN, f"data.root={tiny_cifar_npy}", "run.tensorboard=false", f"run.dir={run_dir}"]
    assert main(argv) == 0
    return run_dir


@pytest.fixture(scope="module")
def fam_run(tmp_path_factory, tiny_cifar_npy, teacher_run):
    run_dir = tmp_path_factory.mktemp("report_fam") / "fam_kd"
    argv = [
        "train",
        *SHORT_RUN,
        "method=fam_kd",
        "teacher.name=resnet8",
        f"teacher.checkpoint={teacher_run / 'student_best.pt'}",
        f"data.root={tiny_cifar_npy}",
        "distill.hpf=gaussian",
        "distill.cutoff=0.3",
        "run.spectra_every=1",
        f"run.dir={run_dir}",
    ]
    assert main(argv) == 0
    return run_dir


def report(tmp_path: Path, *runs: Path) -> Path:
    """Run `famkd report` on `runs` into tmp_path/report; returns that folder."""
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def checkpoint_heads(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["heads"]


def fam_paths(run_dir: Path) -> list[str]:
    return sorted(key.removesuffix(".gamma1") for key in checkpoint_heads(run_dir) if key.endswith(".fam.gamma1"))


class PageParser(HTMLParser):
    """The page's image sources, link targets, script tags, and every table as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"])
        elif tag == "a":
            self.links.append(values["href"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse_page(out: Path) -> tuple[str, PageParser]:
    text = (out / "index.html").read_text()
    parser = PageParser()
    parser.feed(text)
    return text, parser


# ---- the spectra, against direct computations -------------------------------------------------------


@pytest.mark.parametrize(("size", "ky", "kx"), [(32, 3, 4), (32, 0, 7), (15, 4, 0), (8, 2, 2)])
def test_radial_spectrum_of_a_sinusoid_peaks_at_its_frequency(size, ky, kx):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    wave = torch.cos(2 * torch.pi * (ky * y + kx * x) / size + 0.3)
    maps = wave.expand(2, 3, size, size)  # every image and channel the same wave
    spectrum = radial_power_spectrum(maps)
    radius = round((ky**2 + kx**2) ** 0.5)
    assert spectrum.shape == (size // 2 + 1,) and int(spectrum.argmax()) == radius
    others = torch.cat([spectrum[:radius], spectrum[radius + 1 :]])
    assert others.abs().max() < 1e-9 * spectrum[radius]
    # The bin's mean power times its frequency count is the wave's energy, sum of cos^2 = S^2 / 2 (Parseval).
    count = (frequency_radius(size).round() == radius).sum()
    assert float(spectrum[radius] * count) == pytest.approx(size * size / 2, rel=1e-5)


def test_radial_spectrum_rejects_maps_that_are_not_square():
    with pytest.raises(ValueError, match="square"):
        radial_power_spectrum(torch.zeros(2, 8, 6))


def oracle_filter_magnitude(global_filter: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Centred mean over channel pairs of |K_eff|, read off the literal global branch in float64.

    For an impulse at pixel (0, 0) in input channel i, the ortho FFT2 of direct_global_branch's output
    channel o is K_eff[i, o](k) / S, since the impulse's spectrum is 1/S everywhere.
    """
    kernel = torch.view_as_complex(global_filter.double().contiguous())
    c_in, size = kernel.shape[0], kernel.shape[-1]
    impulses = torch.zeros(c_in, c_in, size, size, dtype=torch.float64)
    impulses[torch.arange(c_in), torch.arange(c_in), 0, 0] = 1.0
    response = direct_global_branch(impulses, kernel, mask)  # (C_in as batch, C_out, S, S)
    effective = size * torch.fft.fft2(response, norm="ortho")
    return torch.fft.fftshift(effective.abs().mean(dim=(0, 1)))


@pytest.mark.parametrize(("size", "hpf"), [(8, "ideal"), (7, "butterworth"), (32, "ideal")])
def test_oracle_is_the_literal_definition_of_k_eff(size, hpf):
    torch.manual_seed(0)
    fam = FrequencyAttention(3, 2, size, hpf=hpf, cutoff=0.2).double()
    kernel = torch.view_as_complex(fam.global_filter.detach())
    masked = fam.mask * kernel
    negated = torch.roll(torch.flip(masked, (-2, -1)), (1, 1), (-2, -1))  # index k -> -k mod S
    literal = torch.fft.fftshift((0.5 * (masked + negated.conj())).abs().mean(dim=(0, 1)))
    assert torch.allclose(oracle_filter_magnitude(fam.global_filter.detach(), fam.mask), literal, atol=1e-13)


def test_report_filters_equal_the_float64_oracle_of_the_checkpoint(fam_run, tmp_path):
    out = report(tmp_path, fam_run)
    heads = checkpoint_heads(fam_run)
    rows = read_csv(out / "run1_filters.csv")
    assert {row["head"] for row in rows} == set(fam_paths(fam_run))
    for path in fam_paths(fam_run):
        size = int(next(row["size"] for row in rows if row["head"] == path))
        reported = torch.zeros(size, size, dtype=torch.float64)
        for row in (row for row in rows if row["head"] == path):
            reported[int(row["ky"]) + size // 2, int(row["kx"]) + size // 2] = float(row["mean_abs_k_eff"])
        oracle = oracle_filter_magnitude(heads[f"{path}.global_filter"], highpass_mask("gaussian", size, 0.3))
        assert torch.allclose(reported, oracle, rtol=2e-5, atol=1e-9), path
        assert (oracle.max() > 0) == (size > 1)  # the gaussian mask removes DC, the 1x1 level's only frequency


# ---- gammas and spectra logged in training -----------------------------------------------------------


def test_spectra_are_due_every_n_epochs_and_at_the_last():
    assert [epoch for epoch in range(1, 8) if spectra_due(epoch, 3, 7)] == [3, 6, 7]
    assert not any(spectra_due(epoch, 0, 7) for epoch in range(1, 8))
    assert load_config(None).run.spectra_every == 10
    with pytest.raises(ConfigError, match="run.spectra_every"):
        load_config(None, ["run.spectra_every=-1"])


def test_training_logs_gammas_every_epoch_and_spectra_files(fam_run):
    records = [json.loads(line) for line in (fam_run / "metrics.jsonl").read_text().splitlines()]
    heads = checkpoint_heads(fam_run)
    paths = fam_paths(fam_run)
    assert len(paths) == 4
    for record in records:
        assert {f"gamma{n}/{path}" for n in (1, 2) for path in paths} <= set(record)
    for path in paths:
        assert records[-1][f"gamma1/{path}"] == heads[f"{path}.gamma1"].item()
        assert records[-1][f"gamma2/{path}"] == heads[f"{path}.gamma2"].item()
    assert records[0][f"gamma1/{paths[0]}"] != records[-1][f"gamma1/{paths[0]}"]  # they are learned

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fam_run / "tensorboard"))
    events.Reload()
    assert [s.value for s in events.Scalars(f"epoch/gamma1/{paths[0]}")] == pytest.approx(
        [r[f"gamma1/{paths[0]}"] for r in records]
    )

    assert sorted(p.name for p in (fam_run / "spectra").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    snapshot = torch.load(fam_run / "spectra" / "epoch_0002.pt", weights_only=True)
    assert snapshot["epoch"] == 2 and snapshot["images"] == 30  # the whole tiny test set (< 64 images)
    distiller = distiller_from_checkpoint(fam_run)
    for path, fam in ((p, distiller.get_submodule(p)) for p in paths):
        logged = snapshot["heads"][path]
        assert logged["size"] == fam.size and logged["filter"].shape == (fam.size, fam.size)
        assert torch.allclose(logged["filter"].double(), oracle_filter_magnitude(fam.global_filter, fam.mask.float()))
        for curve in ("teacher", "student", "fam"):
            assert logged[curve].shape == (fam.size // 2 + 1,) and (logged[curve] >= 0).all()


# ---- the page ---------------------------------------------------------------------------------------


def test_report_gammas_equal_the_checkpoints(fam_run, tmp_path):
    out = report(tmp_path, fam_run)
    heads = checkpoint_heads(fam_run)
    rows = read_csv(out / "run1_gammas.csv")
    assert sorted(row["head"] for row in rows) == fam_paths(fam_run)
    for row in rows:
        assert float(row["gamma1"]) == heads[f"{row['head']}.gamma1"].item()
        assert float(row["gamma2"]) == heads[f"{row['head']}.gamma2"].item()
        assert row["source"] == "checkpoints/last.pt, epoch 2"
    # The page's table: rows gamma1, gamma2; one column per head, shallow (largest S) first.
    _, page = parse_page(out)
    table = next(t for t in page.tables if t[1][0] == "gamma1")
    sizes = [int(row["size"]) for row in rows]
    ordered = [row for _, row in sorted(zip(sizes, rows), key=lambda pair: -pair[0])]
    assert table[0][1:] == [FamHead(row["head"], int(row["size"]), 0, 0).label for row in ordered]
    for number in (1, 2):
        expected = [f"{heads[row['head'] + f'.gamma{number}'].item():.4f}" for row in ordered]
        assert table[number] == [f"gamma{number}", *expected]


def test_report_comparison_table_is_famkd_results_table(fam_run, teacher_run, tmp_path, capsys):
    assert main(["results", str(teacher_run), str(fam_run)]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert main(["results", str(teacher_run), str(fam_run), "--format", "csv"]) == 0
    results_csv = capsys.readouterr().out
    out = report(tmp_path, teacher_run, fam_run)
    _, page = parse_page(out)
    table = next(t for t in page.tables if t[0][0] == "method")
    expected = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown if line.startswith("|")]
    del expected[1]  # the markdown rule under the header
    assert table == expected and len(table) == 4  # header, teacher, vanilla, fam_kd
    assert (out / "comparison.csv").read_text() == results_csv


def test_report_works_from_logs_alone(fam_run, tmp_path):
    copy = tmp_path / "copied" / "fam_kd"
    shutil.copytree(fam_run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    out = report(tmp_path, copy)
    text, _ = parse_page(out)
    assert "no checkpoints/last.pt" in text
    heads = checkpoint_heads(fam_run)
    for row in read_csv(out / "run1_gammas.csv"):  # the last epoch's logged gammas: the checkpoint's
        assert float(row["gamma1"]) == heads[f"{row['head']}.gamma1"].item()
        assert row["source"] == "metrics.jsonl, epoch 2"
    with_checkpoint = report(tmp_path / "with", fam_run)
    assert read_csv(out / "run1_filters.csv") == read_csv(with_checkpoint / "run1_filters.csv")
    assert "From spectra/epoch_0002.pt" in text


def test_report_of_a_run_in_progress_says_so(fam_run, tmp_path):
    copy = tmp_path / "running"
    shutil.copytree(fam_run, copy)
    (copy / "summary.json").unlink()
    first_epoch = (copy / "metrics.jsonl").read_text().splitlines()[0]
    (copy / "metrics.jsonl").write_text(first_epoch + '\n{"epoch": 2, "glo')  # a line being written
    out = report(tmp_path, copy)
    text, _ = parse_page(out)
    assert "no summary.json: in progress" in text and "1 line(s) of metrics.jsonl are not JSON records" in text
    assert "1 of 2" in text


def run_card_value(out: Path, key: str) -> str:
    """The value beside `key` in the page's (first) run card."""
    _, parser = parse_page(out)
    return next(row[1] for table in parser.tables for row in table if len(row) == 2 and row[0] == key)


def test_run_card_shows_the_device_the_run_used(teacher_run, tmp_path):
    copy = tmp_path / "auto" / "vanilla"
    shutil.copytree(teacher_run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["device"] = "auto"  # as configured; summary.json says what "auto" became
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert run_card_value(report(tmp_path, copy), "seed / device / amp") == f"{config['run']['seed']} / cpu / off"
    (copy / "summary.json").unlink()  # in progress: only the config's device is known
    assert run_card_value(report(tmp_path / "running", copy), "seed / device / amp").split(" / ")[1] == "auto"


@pytest.mark.parametrize("case", ["not a run", "missing folder", "no epoch yet", "not a FAM method"])
def test_bad_input_gives_a_clear_message_or_says_what_is_missing(case, teacher_run, fam_run, tmp_path, capsys):
    target = tmp_path / "target"
    if case == "not a run":
        (target / "notes").mkdir(parents=True)
        (target / "notes" / "readme.txt").write_text("hello")
    elif case == "no epoch yet":  # train wrote its config and nothing else yet
        target.mkdir()
        shutil.copy(fam_run / "config.yaml", target / "config.yaml")
    elif case == "not a FAM method":
        target = teacher_run
    code = main(["report", str(target), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if case in ("not a run", "missing folder"):
        assert code == 1 and err.count("\n") == 1 and err.startswith("famkd: error: ")
        assert ("not a famkd run folder" if case == "not a run" else "is not a folder") in err
        assert not (tmp_path / "out").exists()
        return
    assert code == 0
    text, _ = parse_page(tmp_path / "out")
    if case == "no epoch yet":
        assert "no epoch completed yet" in text and "No run has completed an epoch yet" in text
        assert "High-pass masks" in text  # the masks need only the config
    else:
        assert "method vanilla has no FAM heads" in text and "Training curves" in text


def test_report_without_matplotlib_says_which_extra_to_install(fam_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    assert main(["report", str(fam_run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'famkd[plot]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---- in a browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when absent; the test fails saying why when it cannot be."""
    if os.environ.get("FAMKD_SKIP_BROWSER_TEST") == "1":
        pytest.skip("FAMKD_SKIP_BROWSER_TEST=1: the page is not rendered in a browser")
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail("chromium is not installed and cannot be (needs apt-get as root); FAMKD_SKIP_BROWSER_TEST=1 skips")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-500:]}")
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("apt-get installed chromium but it is not on PATH")
    return found


def test_page_renders_in_a_browser_with_every_image(chromium, fam_run, teacher_run, tmp_path):
    out = report(tmp_path, fam_run, teacher_run)
    text, page = parse_page(out)
    assert page.scripts == 0 and "http://" not in text and "https://" not in text
    assert [Path(source).stem for source in page.images] == [
        "curves",
        *(f"run1_{name}" for name in ("gammas", "filters", "feature_spectra", "masks")),
    ]
    for source in page.images + page.links:
        assert "/" not in source and (out / source).is_file(), source
    for source in page.images:
        data = (out / source).read_bytes()
        if source.endswith(".png"):
            assert data.startswith(PNG_SIGNATURE)
        else:
            assert source.endswith(".svg") and ElementTree.fromstring(data).tag.endswith("svg")
    screenshot = tmp_path / "screenshot.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={screenshot}",
        "--window-size=1200,3000",
        (out / "index.html").as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and screenshot.is_file(), done.stderr[-1000:]
    from matplotlib.image import imread

    pixels = torch.from_numpy(imread(screenshot)[..., :3].copy())
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 0.05  # not blank
    assert (pixels.mean(dim=-1) < 0.9).float().mean() > 0.02  # some of the page is drawn, not just white
    coloured = (pixels.max(dim=-1).values - pixels.min(dim=-1).values) > 0.25
    assert coloured.float().mean() > 0.01  # the figures are drawn (plots, heatmaps), not only the black text
