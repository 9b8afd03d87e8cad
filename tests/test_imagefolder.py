"""famkd.data.imagefolder: any classes of images in folders, its options, errors and one training run on it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from famkd.cli import main
from famkd.config import load_config
from famkd.data import LoaderSettings, build_datasets, build_loader, data_options, dataset_image_size
from famkd.data import folders as folders_module
from famkd.data.datasets import DataFormatError, DataNotFoundError
from famkd.data.imagefolder import ImageFolderOptions
from famkd.errors import ConfigError
from tiny_imagefolder import write_tiny_imagefolder

SORTED_CLASSES = ("bird", "cat", "dog")  # the helper's ("cat", "dog", "bird"), sorted
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """The helper's default tree (train/ and val/); read it, never write into it."""
    return write_tiny_imagefolder(tmp_path_factory.mktemp("tiny_imagefolder"))


def splits(root: Path, **values):
    return build_datasets(data_options("imagefolder", root=str(root), **values))


def names(samples) -> list[tuple[str, int]]:
    return [(Path(path).name, label) for path, label in samples]


def normalized(image: Image.Image) -> torch.Tensor:
    return (TF.to_tensor(image) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


# ---- classes, samples, descriptions -----------------------------------------------------------------


def test_classes_are_the_sorted_folders_and_labels_their_positions(tiny_root):
    train, val = splits(tiny_root)
    assert train.classes == train.class_names == val.class_names == SORTED_CLASSES and train.num_classes == 3
    expected_train = [
        (f"{c}_{i}{'.png' if i % 2 else '.jpg'}", label) for label, c in enumerate(SORTED_CLASSES) for i in range(6)
    ]
    assert names(train.samples) == expected_train
    assert names(val.samples) == [
        (f"{c}_val_{i}{'.png' if i % 2 else '.jpg'}", label) for label, c in enumerate(SORTED_CLASSES) for i in range(2)
    ]
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert train.description == f"image folders at {tiny_root}, train, 18 images of 3 classes"
    assert val.description == f"image folders at {tiny_root}, val, 6 images of 3 classes"
    assert tuple(train.mean) == MEAN and tuple(train.std) == STD


def test_a_class_may_lack_a_val_folder(tmp_path):
    root = write_tiny_imagefolder(tmp_path)
    shutil.rmtree(root / "val" / "cat")
    train, val = splits(root)
    assert train.num_classes == val.num_classes == 3
    assert val.labels.tolist() == [0, 0, 2, 2]


def test_any_number_of_classes(tmp_path):
    classes = tuple(f"class{i:02d}" for i in range(12))
    train, val = splits(write_tiny_imagefolder(tmp_path, classes=classes[::-1], train_per_class=1, val_per_class=1))
    assert train.class_names == classes and len(train) == len(val) == 12
    assert val.labels.tolist() == list(range(12))


# ---- sizes and augmentation --------------------------------------------------------------------------


@pytest.mark.parametrize(("augment", "resize"), [("imagenet", 55), ("cifar", 48)])
def test_image_size_48_from_64_pixel_images(tiny_root, augment, resize):
    train, val = splits(tiny_root, image_size=48, augment=augment)
    assert train[0].image.shape == val[0].image.shape == (3, 48, 48) and train.image_size == 48
    path, _ = val.samples[0]
    with Image.open(path) as image:
        expected = normalized(TF.center_crop(TF.resize(image.convert("RGB"), resize), [48, 48]))
    torch.testing.assert_close(val[0].image, expected)


def test_cifar_augmentation_is_a_padded_shift_and_flip_of_the_resized_image(tiny_root):
    train, _ = splits(tiny_root, image_size=32, augment="cifar")
    path, _ = train.samples[0]
    with Image.open(path) as image:
        resized = normalized(TF.resize(image.convert("RGB"), 32))
    background = -torch.tensor(MEAN)[:, None, None] / torch.tensor(STD)[:, None, None]  # a zero pixel, normalised
    padded = background.expand(3, 40, 40).clone()  # padding 32 // 8 = 4
    padded[:, 4:36, 4:36] = resized
    candidates = [
        (flip, window.flip(2) if flip else window)
        for top in range(9)
        for left in range(9)
        for window in [padded[:, top : top + 32, left : left + 32]]
        for flip in (False, True)
    ]
    torch.manual_seed(0)
    flips = set()
    for _ in range(8):
        image = train[0].image
        matched = {flip for flip, candidate in candidates if (image - candidate).abs().max().item() < 1e-5}
        assert matched  # a padded shift of the resized image, mirrored or not
        flips |= matched
    assert flips == {False, True}  # some draws mirrored, some not


def test_imagenet_augmentation_crops_at_random_scales_not_padded_shifts(tiny_root):
    train, _ = splits(tiny_root, image_size=32)
    torch.manual_seed(0)
    images = [train[0].image for _ in range(4)]
    assert all(image.shape == (3, 32, 32) for image in images)
    assert not all(torch.equal(images[0], image) for image in images[1:])
    assert type(train.transform.transforms[0]).__name__ == "RandomResizedCrop"


def test_resize_size_defaults_follow_image_size_and_augmentation():
    assert data_options("imagefolder").image_size == 224 and data_options("imagefolder").resize_size == 256
    assert data_options("imagefolder", image_size=32).resize_size == 37  # round(32 * 256 / 224)
    assert data_options("imagefolder", image_size=32, augment="cifar").resize_size == 32
    assert data_options("imagefolder", image_size=32, resize_size=40).resize_size == 40
    with pytest.raises(ConfigError, match=r"data.image_size=48 exceeds data.resize_size=40"):
        data_options("imagefolder", image_size=48, resize_size=40)


def test_the_config_selects_imagefolder_with_every_option(tiny_root):
    cfg = load_config(None, ["data.dataset=imagefolder", f"data.root={tiny_root}", "data.image_size=32"])
    assert isinstance(cfg.data, ImageFolderOptions) and cfg.data.root == str(tiny_root)
    assert (cfg.data.image_size, cfg.data.resize_size, cfg.data.augment) == (32, 37, "imagenet")
    assert (cfg.data.val_fraction, cfg.data.workers) == (0.0, 4)
    assert dataset_image_size(cfg.data) == 32
    cfg = load_config(
        None, ["data.dataset=imagefolder", "data.augment=cifar", "data.workers=0", "data.val_fraction=0.2"]
    )
    assert (cfg.data.augment, cfg.data.workers, cfg.data.val_fraction, cfg.data.resize_size) == ("cifar", 0, 0.2, 224)
    with pytest.raises(ConfigError, match=r"data.augment='autoaugment' is not allowed.*imagenet, cifar"):
        load_config(None, ["data.dataset=imagefolder", "data.augment=autoaugment"])
    with pytest.raises(ConfigError, match=r"data.val_fraction=1.0 must be below 1"):
        load_config(None, ["data.dataset=imagefolder", "data.val_fraction=1"])
    with pytest.raises(ConfigError, match=r"data.val_fraction=-0.1 is too small"):
        load_config(None, ["data.dataset=imagefolder", "data.val_fraction=-0.1"])


# ---- val_fraction --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "held"),
    [(0.25, (0, 3)), (0.5, (0, 2, 4)), (0.01, (0,)), (0.99, (0, 1, 2, 3, 4))],  # of 6 files: round(6 f), >= 1, <= 5
)
def test_val_fraction_holds_out_evenly_spread_sorted_files_of_each_class(tmp_path, fraction, held):
    root = write_tiny_imagefolder(tmp_path, with_val=False)
    train, val = splits(root, val_fraction=fraction)
    files = {c: [f"{c}_{i}{'.png' if i % 2 else '.jpg'}" for i in range(6)] for c in SORTED_CLASSES}
    assert names(val.samples) == [(files[c][i], label) for label, c in enumerate(SORTED_CLASSES) for i in held]
    kept = [i for i in range(6) if i not in held]
    assert names(train.samples) == [(files[c][i], label) for label, c in enumerate(SORTED_CLASSES) for i in kept]
    assert val.description.endswith(f", val, {3 * len(held)} images of 3 classes")
    assert names(splits(root, val_fraction=fraction)[1].samples) == names(val.samples)  # the same every time


def test_val_fraction_keeps_a_one_image_class_in_training_and_reads_class_folders_in_the_root(tmp_path):
    root = write_tiny_imagefolder(tmp_path, with_val=False)
    write_tiny_imagefolder(tmp_path / "more", classes=("ant",), train_per_class=1, with_val=False)
    shutil.move(tmp_path / "more" / "train" / "ant", root / "train" / "ant")
    train, val = splits(root, val_fraction=0.25)
    assert train.class_names == ("ant", *SORTED_CLASSES)
    assert names(train.samples)[0] == ("ant_0.jpg", 0) and 0 not in val.labels.tolist()
    flat = tmp_path / "flat"
    shutil.copytree(root / "train", flat)
    flat_train, flat_val = splits(flat, val_fraction=0.25)
    assert names(flat_train.samples) == names(train.samples) and names(flat_val.samples) == names(val.samples)


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if an image is opened: the errors come from listing the folders."""

    def must_not_decode(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(folders_module, "default_loader", must_not_decode)


def test_a_missing_root_names_the_layout(tmp_path, no_decoding):
    with pytest.raises(DataNotFoundError, match=r"does not exist.*DIR/train/<class>/<images> and DIR/val/<class>"):
        splits(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data.dataset=imagefolder needs data.root="):
        build_datasets(data_options("imagefolder"))


def test_no_val_folder_without_val_fraction_says_what_to_do(tmp_path, no_decoding):
    root = write_tiny_imagefolder(tmp_path, with_val=False)
    with pytest.raises(DataNotFoundError, match=r"no val/ folder: add .*val/<class>/ .*or set data.val_fraction"):
        splits(root)


def test_a_val_folder_and_val_fraction_together_are_refused(tiny_root, no_decoding):
    with pytest.raises(ConfigError, match=r"has a val/ folder and data.val_fraction=0.2 is set: pick one"):
        splits(tiny_root, val_fraction=0.2)


def test_folders_without_classes_or_train_are_refused(tmp_path, no_decoding):
    (tmp_path / "val").mkdir()
    with pytest.raises(DataNotFoundError, match=r"no train/ folder"):
        splits(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataFormatError, match=r"train holds no class folders"):
        splits(tmp_path)
    (tmp_path / "val").rmdir()
    with pytest.raises(DataFormatError, match=r"holds no class folders"):
        splits(tmp_path, val_fraction=0.5)


def test_an_empty_class_and_a_val_class_not_in_train_are_named(tmp_path, no_decoding):
    root = write_tiny_imagefolder(tmp_path)
    (root / "train" / "fish").mkdir()
    with pytest.raises(DataFormatError, match=r"empty class folder\(s\) fish"):
        splits(root)
    (root / "train" / "fish").rmdir()
    shutil.copytree(root / "val" / "cat", root / "val" / "fish")
    with pytest.raises(DataFormatError, match=r"val classes not in train/: fish"):
        splits(root)


def test_an_unreadable_image_is_replaced_counted_and_reported(tmp_path):
    root = write_tiny_imagefolder(tmp_path)
    (root / "train" / "cat" / "x.jpg").write_bytes(b"not an image")
    options = data_options("imagefolder", root=str(root), image_size=32, workers=0)
    train, _ = build_datasets(options)
    broken = str(root / "train" / "cat" / "x.jpg")
    assert (broken, 1) in train.samples and len(train) == 19
    loader = build_loader(train, options, 4, False, LoaderSettings())
    assert loader.loader.num_workers == 0
    with pytest.warns(UserWarning, match=r"1 unreadable image file\(s\) in image folders at .*replaced.*x\.jpg"):
        batches = list(loader)
    assert loader.skipped == [broken] and [len(labels) for _, labels in batches] == [4, 4, 4, 4, 3]
    one_worker = build_loader(train, data_options("imagefolder", root=str(root), workers=1), 4, True, LoaderSettings())
    assert one_worker.loader.num_workers == 1  # data.workers decides (never iterated here)


# ---- end to end ------------------------------------------------------------------------------------------


def test_train_and_eval_a_student_on_image_folders_through_the_cli(tiny_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [
        "train",
        "method=vanilla",
        "student=resnet8",
        "data.dataset=imagefolder",
        f"data.root={tiny_root}",
        "data.image_size=32",
        "data.augment=cifar",
        "data.workers=0",
        "train.epochs=1",
        "train.batch_size=4",
        "device=cpu",
        "run.tensorboard=false",
        f"run.dir={run_dir}",
    ]
    assert main(argv) == 0
    card = json.loads((run_dir / "student.json").read_text())
    assert card["class_names"] == list(SORTED_CLASSES) and card["num_classes"] == 3
    assert (card["input_size"], card["resize"], card["dataset"]) == (32, 32, "imagefolder")
    assert card["mean"] == list(MEAN) and card["std"] == list(STD)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"].endswith("train, 18 images of 3 classes")
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    top1 = float(re.search(r"^top-1: ([\d.]+)%$", out, re.MULTILINE).group(1))
    assert top1 == pytest.approx(summary["best_acc"], abs=0.005)
