"""A trained student and its card (student.json), from a run folder or a famkd checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from famkd.engine.run_dir import STUDENT_CARD, RunDir
from famkd.errors import FamkdError
from famkd.weights import load_checkpoint


@dataclass
class Student:
    """The student (on the CPU, in eval mode), its card, the file its weights came from, and the run's config
    values (None for a file without one)."""

    model: nn.Module
    card: dict[str, Any]
    weights: Path
    config: dict[str, Any] | None


def build_model(card: dict[str, Any]) -> nn.Module:
    """A fresh model of the card's architecture and classes (random weights)."""
    if card.get("task") == "detection":
        from famkd.detection.models import build_detector

        return build_detector(card["arch"], card["num_classes"], card["min_size"], card["max_size"])
    from famkd.models import create_model

    return create_model(card["arch"], num_classes=card["num_classes"], image_size=card.get("input_size"))


def load_student(source: Path, which: str = "best") -> Student:
    """The student of a run folder (its student_<which>.pt) or of a famkd training checkpoint."""
    if source.is_dir():
        run = RunDir(source)
        if not run.config_file.is_file():
            raise FamkdError(
                f"{source} is not a famkd run folder (it has no config.yaml); pass a run folder or a checkpoint"
            )
        weights = run.student(best=which == "best")
        if not weights.is_file():
            raise FamkdError(
                f"{source} holds no {weights.name} yet: the run has not finished an evaluation; "
                f"export student_{'last' if which == 'best' else 'best'}.pt with --which, or train on"
            )
        state, values, card_file = (
            load_checkpoint(weights),
            yaml.safe_load(run.config_file.read_text()),
            run.student_card,
        )
    else:
        checkpoint = load_checkpoint(source)
        if not isinstance(checkpoint.get("student"), dict) or not isinstance(checkpoint.get("config"), dict):
            raise FamkdError(f"{source} is not a famkd training checkpoint (it has no student and config)")
        weights, state, values = source, checkpoint["student"], checkpoint["config"]
        card_file = source.parent.parent / STUDENT_CARD  # checkpoints/ sits in the run folder
    card = json.loads(card_file.read_text()) if card_file.is_file() else card_from_config(values)
    model = build_model(card)
    model.load_state_dict(state)
    return Student(model.eval(), card, weights, values)


def card_from_config(values: dict[str, Any]) -> dict[str, Any]:
    """The card of a classification run made before runs wrote student.json, from its data."""
    from famkd.classification import TASK
    from famkd.config import config_from_dict
    from famkd.data import build_datasets

    cfg = config_from_dict(values)
    train_set, _ = build_datasets(cfg.data)
    return TASK.student_card(cfg, train_set)


def check_images(student: Student, count: int) -> tuple[torch.Tensor, str]:
    """Up to `count` of the run's test images as the student takes them, or random ones where the run's data is
    not at hand; and what they are."""
    card = student.card
    if card.get("task") == "detection":
        return torch.rand(1, 3, card["min_size"], card["min_size"]), "a random image"
    try:
        from famkd.config import config_from_dict
        from famkd.data import LoaderSettings, build_datasets, build_loader

        assert student.config is not None
        cfg = config_from_dict(student.config)
        _, test_set = build_datasets(cfg.data)
        images = next(iter(build_loader(test_set, cfg.data, count, False, LoaderSettings())))[0]
        return images, f"{len(images)} test images of {cfg.data.dataset}"
    except (FamkdError, AssertionError, OSError) as error:
        side = card["input_size"]
        reason = str(error).splitlines()[0] if str(error) else "no config"
        return torch.randn(count, 3, side, side), f"{count} random images (the run's data is not at hand: {reason})"
