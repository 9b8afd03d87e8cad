"""The export formats: writing a student, reading it back as a predictor, and the card carried with it.

- onnx: torch's exporter (`torch.onnx.export`, dynamo), a dynamic batch by default; the card in the model's
  metadata (key "famkd"). Read back with onnxruntime. Classification students only: torch.export cannot
  follow a torchvision Faster R-CNN's data-dependent shapes (tried with torch 2.14).
- torchscript: traced (classification) or scripted (detection, as torchvision supports it); the card as the
  extra file famkd.json. Read back with torch.jit.load.
- safetensors: the student's state dict; the card in the file's metadata. Read back into a fresh model.

Every format also gets the card as JSON beside the file (`<file>.json`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from famkd.deploy.student import Student, build_model
from famkd.detection.models import for_inference as inference_detector
from famkd.errors import FamkdError

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": ".safetensors"}
MODULES = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "torchscript": (), "safetensors": ("safetensors",)}
CARD_KEY = "famkd"
Predictor = Callable[[Tensor], Any]


def check_format(name: str) -> str:
    """`name` when it is a format whose packages are installed, else one line saying what to do."""
    if name not in SUFFIXES:
        raise FamkdError(f"unknown format {name!r}: choose {', '.join(SUFFIXES)}")
    for module in MODULES[name]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            raise FamkdError(
                f"{name} needs the Python package {module}, which is not installed: pip install 'famkd[export]'"
            ) from None
    return name


def format_of(path: Path) -> str:
    """The format of an exported file, by its suffix."""
    for name, suffix in SUFFIXES.items():
        if path.name.endswith(suffix):
            return check_format(name)
    raise FamkdError(f"{path}: not a famkd export (a file ending in {', '.join(SUFFIXES.values())}) nor a run folder")


def write_export(student: Student, name: str, path: Path, example: Tensor, opset: int, dynamic_batch: bool) -> None:
    """Write `student` in format `name` to `path` (with its card inside), and its card to `path`.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    card_text = json.dumps(student.card, indent=2)
    detection = student.card.get("task") == "detection"
    if name == "onnx":
        if detection:
            raise FamkdError(
                "a Faster R-CNN student does not export to ONNX: torch's exporter (torch.export) cannot follow its "
                "data-dependent shapes; use --format torchscript or safetensors"
            )
        write_onnx(student.model, path, example, opset, dynamic_batch, card_text)
    elif name == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the zoo's shape checks, constant once traced
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch; asked for by name
            module = (
                torch.jit.script(inference_detector(student.model))
                if detection
                else torch.jit.trace(student.model, example)
            )
            torch.jit.save(module, str(path), _extra_files={f"{CARD_KEY}.json": card_text})
    else:
        from safetensors.torch import save_file

        state = {key: value.contiguous() for key, value in student.model.state_dict().items()}
        save_file(state, str(path), metadata={CARD_KEY: card_text})
    Path(f"{path}.json").write_text(card_text + "\n")


def write_onnx(model: nn.Module, path: Path, example: Tensor, opset: int, dynamic_batch: bool, card: str) -> None:
    import onnx

    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports its passes on stdout
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset, dynamic_shapes=shapes, external_data=False
        )
    assert program is not None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {CARD_KEY: card})
    onnx.save(proto, str(path))


def read_export(path: Path) -> tuple[Predictor, dict[str, Any]]:
    """A predictor of the exported file at `path` (images (N, 3, H, W) -> the model's outputs) and its card."""
    if not path.is_file():
        raise FamkdError(f"{path}: no such file")
    name = format_of(path)
    try:
        if name == "onnx":
            return read_onnx(path)
        if name == "torchscript":
            extra = {f"{CARD_KEY}.json": ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            return no_grad(module.eval()), json.loads(extra[f"{CARD_KEY}.json"])
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as file:
            card = json.loads(file.metadata()[CARD_KEY])
        model = build_model(card)
        model.load_state_dict(load_file(str(path)))
        return no_grad(model.eval()), card
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FamkdError(f"cannot read {path} as a famkd {name} export: {first_line}") from error


def read_onnx(path: Path) -> tuple[Predictor, dict[str, Any]]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map[CARD_KEY])
    input_name = session.get_inputs()[0].name

    def predict(images: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {input_name: images.numpy()})[0])

    return predict, card


def no_grad(model: nn.Module) -> Predictor:
    def predict(images: Tensor) -> Any:
        with torch.no_grad():
            return model(images)

    return predict
