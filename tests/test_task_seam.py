"""The seam between the engine and its tasks: a dataset registered from outside the package trains through
`famkd train`, reading a dataset does not pull in the methods, and the detection task keeps no training code
of its own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from famkd.cli import main
from famkd.config import load_config
from famkd.data import DataOptions, DatasetEntry, ImageDataset, register_dataset
from famkd.data.loader import in_memory_loader
from famkd.engine.run_log import read_metrics
from famkd.errors import ConfigError
from famkd.settings import setting

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src" / "famkd"
TOY_SIDE = 32


@dataclass
class ToyOptions(DataOptions):
    """Two classes of 32x32 images: dark (label 0) and bright (label 1), `per_class` of each per split."""

    dataset: str = "toy"
    per_class: int = setting(6, minimum=1)


def toy_split(per_class: int, seed: int, split: str) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(per_class)
    noise = torch.randint(0, 60, (2 * per_class, 3, TOY_SIDE, TOY_SIDE), generator=generator)
    images = (noise + 150 * labels[:, None, None, None]).to(torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return ImageDataset(images, labels, 2, mean, std, f"toy, {split}, {len(labels)} images", ("dark", "bright"))


def load_toy(options: ToyOptions) -> tuple[ImageDataset, ImageDataset]:
    return toy_split(options.per_class, 0, "train"), toy_split(2, 1, "test")


register_dataset("toy")(DatasetEntry(ToyOptions, load_toy, lambda options: TOY_SIDE, in_memory_loader))


def test_a_dataset_registered_in_a_test_file_trains_through_famkd_train(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["data.dataset=toy", "data.per_class=8", "student=resnet8", "train.epochs=2", "train.batch_size=4"]
    argv += ["device=cpu", f"run.dir={run_dir}", "run.tensorboard=false"]
    assert main(["train", *argv]) == 0
    records = read_metrics(run_dir)
    assert [record["epoch"] for record in records] == [1, 2]
    assert [record["global_step"] for record in records] == [4, 8]  # 16 images, batch 4
    assert all(record["test_images"] == 4 for record in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"] == "toy, train, 16 images"
    saved = load_config(run_dir / "config.yaml")
    assert isinstance(saved.data, ToyOptions) and saved.data.per_class == 8


def test_a_registered_datasets_options_are_checked_like_any_setting() -> None:
    with pytest.raises(ConfigError, match=r"data.per_class=0 is too small: it must be >= 1"):
        load_config(None, ["data.dataset=toy", "data.per_class=0"])
    with pytest.raises(ConfigError, match="unknown key 'data.crop_size'"):
        load_config(None, ["data.dataset=toy", "data.crop_size=32"])  # ImageNet's, not the toy set's


def imported_famkd_modules(statement: str) -> set[str]:
    """The famkd modules a fresh interpreter has loaded after `statement`."""
    code = f"{statement}; import sys; print(' '.join(m for m in sys.modules if m.startswith('famkd')))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_reading_a_dataset_does_not_import_the_methods_or_the_config() -> None:
    loaded = imported_famkd_modules("import famkd.data")
    assert "famkd.data.cifar100" in loaded  # the check sees the package's modules
    assert not {m for m in loaded if m.startswith(("famkd.distill", "famkd.config", "famkd.fam", "famkd.engine"))}


def test_there_is_one_trainer_and_detection_keeps_no_training_code() -> None:
    trainers, detection_imports = [], set()
    for path in SOURCE_ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        trainers += [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and "Trainer" in node.name]
        if "detection" in path.parts:
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    detection_imports.add(node.module)
                elif isinstance(node, ast.Import):
                    detection_imports.update(alias.name for alias in node.names)
    assert trainers == ["Trainer"]
    training_pieces = {"torch.optim", "torch.optim.lr_scheduler", "famkd.engine.checkpoint", "famkd.engine.run_log"}
    training_pieces |= {"famkd.engine.schedule", "famkd.engine.step"}
    assert detection_imports & training_pieces == set()
