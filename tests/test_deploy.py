"""famkd export and famkd predict: each format written, read back and compared with the student, a corrupted file
caught, the card (classes, input size, normalisation) carried along, predictions on image files that agree with
the evaluation, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from famkd.classification import TASK
from famkd.classification.evaluation import evaluate
from famkd.cli import main
from famkd.config import load_config
from famkd.data import CIFAR100_MEAN, CIFAR100_STD, BatchLoader, ImageDataset, build_datasets
from famkd.deploy.export import check_export
from famkd.deploy.formats import SUFFIXES, read_export
from famkd.deploy.student import check_images, load_student
from famkd.errors import FamkdError
from famkd.models import create_model
from famkd.settings import dump_settings
from famkd.weights import load_model_weights
from real_data import REAL_CIFAR100, RESNET56_TEACHER

FORMATS = list(SUFFIXES)


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, tiny_cifar_npy: Path) -> Path:
    """A resnet8 trained for 3 steps on the tiny CIFAR-100 copy (10 classes)."""
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    argv = ["student=resnet8", f"data.root={tiny_cifar_npy}", "train.epochs=1", "train.batch_size=8"]
    argv += ["train.max_steps_per_epoch=3", "device=cpu", f"run.dir={run_dir}", "run.tensorboard=false"]
    assert main(["train", *argv]) == 0
    return run_dir


def trained_student(run_dir: Path, num_classes: int) -> torch.nn.Module:
    model = create_model("resnet8", num_classes=num_classes)
    model.load_state_dict(torch.load(run_dir / "student_best.pt", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_written_checked_and_read_back_with_its_card(student_run: Path, fmt: str, capsys) -> None:
    assert main(["export", str(student_run), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    assert "checked against the PyTorch student" in printed and "top-1 agreement 16/16" in printed
    out = student_run / "export" / f"student_best{SUFFIXES[fmt]}"
    predictor, card = read_export(out)
    assert card == json.loads((student_run / "student.json").read_text()) == json.loads(Path(f"{out}.json").read_text())
    train_set, _ = build_datasets(load_config(student_run / "config.yaml").data)
    assert (card["arch"], card["input_size"], card["resize"]) == ("resnet8", 32, None)
    assert card["mean"] == list(CIFAR100_MEAN) and card["std"] == list(CIFAR100_STD) and card["channel_order"] == "RGB"
    assert card["num_classes"] == train_set.num_classes == len(card["class_names"]) > 1
    assert card["class_names"] == list(train_set.class_names)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # another batch size too
    with torch.no_grad():
        expected = trained_student(student_run, card["num_classes"])(images)
    torch.testing.assert_close(torch.as_tensor(predictor(images)), expected, rtol=1e-4, atol=1e-4)


def corrupt(path: Path, fmt: str) -> None:
    """Change one weight of the exported file in place (its largest tensor's first value)."""
    if fmt == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata()
        state = load_file(str(path))
        name = max(state, key=lambda key: state[key].numel())
        state[name].view(-1)[0] += 5.0
        save_file(state, str(path), metadata=metadata)
    elif fmt == "torchscript":
        extra = {"famkd.json": ""}
        module = torch.jit.load(str(path), _extra_files=extra)
        weight = max(module.parameters(), key=lambda parameter: parameter.numel())
        with torch.no_grad():
            weight.view(-1)[0] += 5.0
        torch.jit.save(module, str(path), _extra_files=extra)
    else:
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path))
        tensor = max(proto.graph.initializer, key=lambda initializer: int(np.prod(initializer.dims)))
        values = numpy_helper.to_array(tensor).copy()
        values.reshape(-1)[0] += 5.0
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        onnx.save(proto, str(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_weight_changed_in_the_file_fails_the_check(student_run: Path, fmt: str, tmp_path: Path) -> None:
    out = tmp_path / f"student{SUFFIXES[fmt]}"
    assert main(["export", str(student_run), "--format", fmt, "--out", str(out)]) == 0
    student = load_student(student_run)
    images, what = check_images(student, 16)
    check_export(read_export(out)[0], student, images, what)  # passes before
    corrupt(out, fmt)
    with pytest.raises(FamkdError, match="the export does not compute the student: largest absolute difference"):
        check_export(read_export(out)[0], student, images, what)


def real_student_run(tmp_path: Path) -> Path:
    """A run folder holding the shared real resnet56 (69.29% on CIFAR-100) as its student."""
    run_dir = tmp_path / "real"
    run_dir.mkdir()
    cfg = load_config(None, ["student=resnet56", f"data.root={REAL_CIFAR100}", "device=cpu"])
    (run_dir / "config.yaml").write_text(dump_settings(cfg))
    model, _ = load_model_weights(RESNET56_TEACHER, num_classes=100)
    torch.save(model.state_dict(), run_dir / "student_best.pt")
    train_set, _ = build_datasets(cfg.data)
    (run_dir / "student.json").write_text(json.dumps(TASK.student_card(cfg, train_set)))
    return run_dir


def test_predict_names_the_classes_and_agrees_with_the_evaluation(student_run: Path, tmp_path: Path, capsys) -> None:
    """Real CIFAR-100 test images and the real resnet56 where they are here (the tiny copy and run elsewhere), as
    PNG files; predictions from the ONNX export; their top-1 accuracy equals famkd's evaluation of the images."""
    real = REAL_CIFAR100.is_dir() and RESNET56_TEACHER.is_file()
    run_dir = real_student_run(tmp_path) if real else student_run
    cfg = load_config(run_dir / "config.yaml")
    _, test_set = build_datasets(cfg.data)
    count = 40
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(count):
        image = test_set.images[index].permute(1, 2, 0).numpy()
        Image.fromarray(image).save(folder / f"{index:03d}_{int(test_set.labels[index])}.png")
    onnx_file = tmp_path / "student.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(onnx_file)]) == 0
    capsys.readouterr()
    assert main(["predict", str(onnx_file), str(folder), "--top-k", "3", "--csv", str(tmp_path / "p.csv")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = list(test_set.class_names)
    assert len(lines) == count and all(
        line.split(": ", 1)[1].split("  ")[0].rsplit(" ", 1)[0] in names for line in lines
    )
    top1 = [line.split(": ", 1)[1].split("  ")[0].rsplit(" ", 1)[0] for line in lines]
    labels = [int(Path(line.split(": ", 1)[0]).stem.split("_")[1]) for line in lines]
    predicted_acc = 100.0 * sum(names[label] == name for label, name in zip(labels, top1)) / count
    subset = ImageDataset(
        test_set.images[:count], test_set.labels[:count], test_set.num_classes, test_set.mean, test_set.std, "first"
    )
    model = load_student(run_dir).model
    assert evaluate(model, BatchLoader(subset, 16, train=False))["top1"] == pytest.approx(predicted_acc)
    if real:
        assert predicted_acc > 40  # a 69% model on 40 real images
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "image,rank,class,probability" and len(rows) == 1 + 3 * count


def test_predict_skips_unreadable_files_and_notes_a_resize_once(student_run: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, side in (("a.png", 32), ("b.png", 48), ("c.png", 64)):
        Image.fromarray(np.full((side, side, 3), 120, dtype=np.uint8)).save(folder / name)
    (folder / "d.png").write_bytes(b"not an image")
    assert main(["predict", str(student_run), str(folder), "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3
    assert err.count("resized") == 1 and "skipped 1 unreadable image file(s):" in err and "d.png" in err


def test_bad_input_gets_one_line(student_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    def one_error_line(argv: list[str]) -> str:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert "unknown format 'tflite': choose onnx, torchscript, safetensors" in one_error_line(
        ["export", str(student_run), "--format", "tflite"]
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text(yaml.safe_dump({"student": "resnet8"}))
    assert "holds no student_best.pt yet" in one_error_line(["export", str(empty), "--format", "safetensors"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    assert "pip install 'famkd[export]'" in one_error_line(["export", str(student_run), "--format", "onnx"])


def test_a_detection_student_exports_to_torchscript_and_safetensors(tmp_path: Path, capsys) -> None:
    from tiny_coco import write_tiny_coco

    coco = write_tiny_coco(tmp_path / "coco")
    run_dir = tmp_path / "detector"
    argv = ["detect", "train", "student=resnet18", "train.iterations=2", f"data.root={coco}", f"run.dir={run_dir}"]
    argv += ["data.min_size=64", "data.max_size=96", "data.workers=0", "device=cpu", "train.student_init=none"]
    argv += ["train.batch_size=2", "train.warmup_iters=0", "run.tensorboard=false"]
    config = tmp_path / "vanilla.yaml"
    config.write_text("method: vanilla\n")
    assert main([*argv[:2], str(config), *argv[2:]]) == 0
    card = json.loads((run_dir / "student.json").read_text())
    assert card["task"] == "detection" and card["class_names"][0] == "background" and card["num_classes"] == 4
    for fmt in ("torchscript", "safetensors"):
        assert main(["export", str(run_dir), "--format", fmt, "--which", "last"]) == 0
        assert "checked against the PyTorch student: largest absolute difference" in capsys.readouterr().out
        assert read_export(run_dir / "export" / f"student_last{SUFFIXES[fmt]}")[1] == card
    assert main(["export", str(run_dir), "--format", "onnx", "--which", "last"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --format torchscript or safetensors" in err
