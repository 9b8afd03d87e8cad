"""Data: CIFAR-100 in both on-disk formats, subsets, missing-data errors, batched augmentation,
the loader's determinism, and the synthetic demo set. References are the arrays written to disk
and direct per-sample numpy loops."""

from __future__ import annotations

import json
import os
import pickle
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from famkd.config import load_config
from famkd.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchLoader,
    DataFormatError,
    DataNotFoundError,
    ImageDataset,
    SyntheticSpec,
    build_datasets,
    data_options,
    dataset_image_size,
    synthetic_datasets,
)
from famkd.data.cifar100 import load_cifar100
from famkd.data.loader import CROP_PADDING
from famkd.data.sampling import epoch_generator
from famkd.data.synthetic import synthetic_datasets_from_config
from famkd.data.transforms import (
    crop_offsets,
    crop_padded,
    flip_mask,
    flip_where,
    normalization_constants,
    pad_images,
)
from famkd.errors import ConfigError, FamkdError
from real_data import REAL_CIFAR100, REAL_CIFAR100_WHERE
from tiny_cifar import tiny_cifar_arrays, write_tiny_cifar

UNKNOWN_DATASET = (
    r"data.dataset='cifar10' is not allowed \(did you mean 'cifar100'\?\); choose one of: "
    "cifar100, imagefolder, imagenet, synthetic"
)
HOW_TO_GET = "download cifar-100-python.tar.gz (torchvision.datasets.CIFAR100(root, download=True))"


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def load(root, **changes) -> tuple[ImageDataset, ImageDataset]:
    return build_datasets(data_options(root=str(root), download=False, **changes))


# CIFAR-100 on disk


@pytest.mark.parametrize("fmt", ["npy", "pickle"])
def test_cifar_loads_exactly_what_was_written(fmt, tiny_cifar_npy, tiny_cifar_pickle):
    root = {"npy": tiny_cifar_npy, "pickle": tiny_cifar_pickle}[fmt]
    reference = tiny_cifar_arrays()
    train, test = load(root)
    for dataset, split in ((train, "train"), (test, "test")):
        assert dataset.images.dtype == torch.uint8 and dataset.images.is_contiguous()
        assert torch.equal(dataset.images, nchw(reference[f"{split}_images"]))
        assert torch.equal(dataset.labels, torch.from_numpy(reference[f"{split}_labels"]))
        assert dataset.num_classes == 100 and len(dataset.class_names) == 100
        # the published normalisation: mdistiller's mdistiller/dataset/cifar100.py, RepDistiller's dataset/cifar100.py
        assert (dataset.mean, dataset.std) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
        assert f"CIFAR-100 ({fmt} layout at " in dataset.description
        assert dataset.description.endswith(f", {split}, {len(reference[f'{split}_labels'])} images")


def test_both_formats_give_identical_tensors(tiny_cifar_npy, tiny_cifar_pickle):
    for from_npy, from_pickle in zip(load(tiny_cifar_npy), load(tiny_cifar_pickle), strict=True):
        assert torch.equal(from_npy.images, from_pickle.images)
        assert torch.equal(from_npy.labels, from_pickle.labels)
        assert from_npy.class_names == from_pickle.class_names


def test_pickle_directory_itself_or_its_parent_is_accepted(tiny_cifar_pickle):
    from_parent, _ = load(tiny_cifar_pickle)
    from_directory, _ = load(tiny_cifar_pickle / "cifar-100-python")
    assert torch.equal(from_parent.images, from_directory.images)


def test_npy_layout_in_a_cifar100_child_is_found(tmp_path):
    write_tiny_cifar(tmp_path / "cifar100", "npy", num_classes=2, train_per_class=2, test_per_class=1)
    train, _ = load(tmp_path)
    assert len(train) == 4 and str(tmp_path / "cifar100") in train.description


def test_famkd_data_then_dot_data_are_searched_when_root_is_empty(tmp_path, monkeypatch):
    env_root = write_tiny_cifar(tmp_path / "env", "npy", num_classes=2, train_per_class=3, test_per_class=1)
    default_root = write_tiny_cifar(
        tmp_path / "cwd" / "data", "pickle", num_classes=3, train_per_class=2, test_per_class=1
    )
    monkeypatch.chdir(default_root.parent)
    monkeypatch.setenv("FAMKD_DATA", str(env_root))
    train, _ = load("")
    assert len(train) == 6 and "npy layout" in train.description
    monkeypatch.delenv("FAMKD_DATA")
    train, _ = load("")
    assert len(train) == 6 and "pickle layout" in train.description and str(default_root) in train.description


def test_first_n_per_class_keeps_the_original_order(tiny_cifar_npy):
    labels = tiny_cifar_arrays()["train_labels"]
    seen: dict[int, int] = {}
    expected = []
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= 4:
            expected.append(index)
    full, full_test = load(tiny_cifar_npy)
    train, test = load(tiny_cifar_npy, train_per_class=4)
    assert torch.equal(train.images, full.images[expected])
    assert torch.equal(train.labels, full.labels[expected])
    assert torch.bincount(train.labels).tolist() == [4] * 10
    assert torch.equal(test.images, full_test.images)  # the test split is never thinned
    assert train.description.endswith(", train, first 4 per class, 40 images")


def test_class_subset_keeps_labels_below_k_in_both_splits(tiny_cifar_pickle):
    reference = tiny_cifar_arrays()
    train, test = load(tiny_cifar_pickle, classes=3, train_per_class=2)
    assert train.num_classes == test.num_classes == 3
    test_keep = [i for i, label in enumerate(reference["test_labels"]) if label < 3]
    assert torch.equal(test.images, nchw(reference["test_images"][test_keep]))
    assert test.labels.tolist() == [int(reference["test_labels"][i]) for i in test_keep]
    firsts = [
        i
        for i, label in enumerate(reference["train_labels"])
        if label < 3 and list(reference["train_labels"][:i]).count(label) < 2
    ]
    assert torch.equal(train.images, nchw(reference["train_images"][firsts]))
    assert train.class_names == ("fine_class_00", "fine_class_01", "fine_class_02")


def test_class_subset_larger_than_the_dataset_is_an_error(tiny_cifar_npy):
    with pytest.raises(ValueError, match="data.classes=101 but the dataset has only 100 classes"):
        load(tiny_cifar_npy, classes=101)


def test_missing_explicit_root_lists_it_and_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FAMKD_DATA", str(tmp_path / "env"))
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        load(missing)
    message = str(err.value)
    assert f"{missing} (data.root" in message and "does not exist" in message
    assert "$FAMKD_DATA and ./data were not searched because data.root is set" in message
    assert "download disabled (data.download=false)" in message
    assert HOW_TO_GET in message and "point data.root / FAMKD_DATA at" in message


def test_missing_data_lists_famkd_data_and_dot_data(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("FAMKD_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        load("")
    message = str(err.value)
    assert f"{tmp_path / 'env'} ($FAMKD_DATA" in message and "holds no cifar-100-python files" in message
    assert f"{tmp_path / 'data'} (./data, the default" in message
    assert HOW_TO_GET in message


def test_offline_download_failure_is_reported_with_the_places(tmp_path, monkeypatch):
    import torchvision.datasets

    class OfflineCIFAR100:
        def __init__(self, root, train, download):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", OfflineCIFAR100)
    with pytest.raises(DataNotFoundError) as err:
        load_cifar100(str(tmp_path / "target"), download=True)
    message = str(err.value)
    assert f"download into {tmp_path / 'target'} failed" in message and "no network" in message
    assert f"{tmp_path / 'target'} (data.root" in message and HOW_TO_GET in message


def test_download_goes_into_the_first_place_and_is_then_loaded(tmp_path, monkeypatch):
    import torchvision.datasets

    class FakeDownloadCIFAR100:
        def __init__(self, root, train, download):
            assert download
            write_tiny_cifar(root, "pickle", num_classes=2, train_per_class=1, test_per_class=1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeDownloadCIFAR100)
    monkeypatch.setenv("FAMKD_DATA", str(tmp_path / "env"))
    train, _ = load_cifar100("", download=True)
    assert len(train) == 2 and str(tmp_path / "env" / "cifar-100-python") in train.description


def record_torchvision_calls(
    monkeypatch: pytest.MonkeyPatch, fetch: Callable[[Path], object]
) -> list[tuple[str, bool, bool]]:
    """Replace torchvision's CIFAR100 by one that records (root, train, download), then runs `fetch(root)`."""
    import torchvision.datasets

    calls: list[tuple[str, bool, bool]] = []

    def fake_cifar100(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        fetch(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    return calls


def test_default_config_neither_downloads_nor_creates_a_missing_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_torchvision_calls(monkeypatch, fetch=lambda root: write_tiny_cifar(root, "pickle"))
    missing = tmp_path / "absent" / "cifar"
    assert data_options().download is False
    for load_with_defaults in (
        lambda: build_datasets(data_options(root=str(missing))),
        lambda: load_cifar100(str(missing)),
    ):
        with pytest.raises(DataNotFoundError) as err:
            load_with_defaults()
        message = str(err.value)
        assert f"  - {missing} (data.root; also its cifar-100-python/ and cifar100/): does not exist" in message
        assert message.endswith(f"or add data.download=true to fetch cifar-100-python with torchvision into {missing}.")
    assert calls == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [OSError("connection reset by peer"), RuntimeError("File not found or corrupted.")])
def test_failed_download_removes_the_folders_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def partial_download(root: Path) -> None:
        (root / "cifar-100-python").mkdir()
        (root / "cifar-100-python.tar.gz").write_bytes(b"first bytes")
        raise failure

    calls = record_torchvision_calls(monkeypatch, fetch=partial_download)
    target = tmp_path / "new" / "cifar"
    with pytest.raises(DataNotFoundError) as err:
        build_datasets(data_options(root=str(target), download=True))
    assert f"Then: download into {target} failed: {failure}." in str(err.value)
    assert "add data.download=true" not in str(err.value)
    assert calls == [(str(target), True, True)]
    assert list(tmp_path.iterdir()) == []


def test_failed_download_into_an_existing_folder_removes_only_what_it_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def partial_download(root: Path) -> None:
        (root / "cifar-100-python").mkdir()
        (root / "cifar-100-python" / "train").write_bytes(b"half a pickle")
        (root / "cifar-100-python.tar.gz").write_bytes(b"first bytes")
        raise OSError("connection reset by peer")

    record_torchvision_calls(monkeypatch, fetch=partial_download)
    (tmp_path / "notes.txt").write_text("kept")
    with pytest.raises(DataNotFoundError, match="failed: connection reset by peer"):
        load_cifar100(str(tmp_path), download=True)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_download_true_fetches_into_the_missing_data_root_and_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_torchvision_calls(monkeypatch, fetch=lambda root: write_tiny_cifar(root, "pickle"))
    target = tmp_path / "new" / "cifar"
    train, test = build_datasets(data_options(root=str(target), download=True, classes=4))
    assert calls == [(str(target), True, True)]
    reference = tiny_cifar_arrays()
    test_keep = reference["test_labels"] < 4
    assert torch.equal(test.images, nchw(reference["test_images"][test_keep]))
    assert test.labels.tolist() == reference["test_labels"][test_keep].tolist()
    assert (len(train), len(test), train.num_classes) == (24, 12, 4)
    assert f"CIFAR-100 (pickle layout at {target / 'cifar-100-python'}), train" in train.description
    build_datasets(data_options(root=str(target), download=True))
    assert len(calls) == 1  # found on disk the second time: not fetched again


def test_data_errors_are_famkd_errors_that_keep_their_standard_base(tiny_cifar_npy: Path) -> None:
    assert issubclass(DataNotFoundError, FamkdError) and issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(DataFormatError, FamkdError) and issubclass(DataFormatError, ValueError)
    with pytest.raises(ConfigError, match="data.classes=101 but the dataset has only 100 classes"):
        load(tiny_cifar_npy, classes=101)
    with pytest.raises(ConfigError, match="data.classes=10 but the synthetic dataset has only 9 classes"):
        build_datasets(data_options("synthetic", classes=10))
    with pytest.raises(ConfigError, match=UNKNOWN_DATASET):
        build_datasets(data_options("cifar10"))
    with pytest.raises(ConfigError, match="data.dataset=imagenet needs data.root=<folder holding train/ and val/>"):
        build_datasets(data_options("imagenet"))
    with pytest.raises(ConfigError, match="unknown key 'data.classes'"):  # a CIFAR subset option, not ImageNet's
        load_config(None, ["data.dataset=imagenet", "data.root=/x", "data.classes=3"])
    with pytest.raises(ConfigError, match="distractors must be 0, 1 or 2"):
        SyntheticSpec(distractors=3)


def test_npy_shard_of_the_wrong_dtype_is_a_format_error(tmp_path):
    root = write_tiny_cifar(tmp_path, "npy", num_classes=2, train_per_class=2, test_per_class=1)
    np.save(root / "test_images_0.npy", np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(DataFormatError, match="test_images_0.npy: expected dtype uint8, got float32"):
        load(root)


def test_npy_labels_that_do_not_match_the_images_are_a_format_error(tmp_path):
    root = write_tiny_cifar(tmp_path, "npy", num_classes=2, train_per_class=2, test_per_class=1)
    np.save(root / "train_fine_labels.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(DataFormatError, match=r"train_fine_labels.npy: expected shape \(4,\), got \(3,\)"):
        load(root)


def test_npy_nchw_shard_is_a_format_error(tmp_path):
    root = write_tiny_cifar(tmp_path, "npy", num_classes=2, train_per_class=2, test_per_class=1)
    np.save(root / "test_images_0.npy", np.zeros((2, 3, 32, 32), dtype=np.uint8))
    with pytest.raises(DataFormatError, match=r"expected uint8 \(N, 32, 32, 3\) NHWC images"):
        load(root)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    directory = write_tiny_cifar(tmp_path, "pickle", num_classes=2, train_per_class=1, test_per_class=1)
    (directory / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(DataFormatError, match="refusing to load"):
        load(directory)


def test_python3_pickles_with_str_keys_load_too(tmp_path):
    directory = write_tiny_cifar(tmp_path, "pickle", num_classes=2, train_per_class=2, test_per_class=1)
    reference = tiny_cifar_arrays(num_classes=2, train_per_class=2, test_per_class=1)
    images = reference["train_images"].transpose(0, 3, 1, 2).reshape(4, -1)
    content = {"data": images, "fine_labels": reference["train_labels"].tolist()}
    (directory / "cifar-100-python" / "train").write_bytes(pickle.dumps(content))
    train, _ = load(directory)
    assert torch.equal(train.images, nchw(reference["train_images"]))


@pytest.mark.skipif(
    not (REAL_CIFAR100 / "meta.json").is_file(), reason=f"no real CIFAR-100 .npy layout in {REAL_CIFAR100_WHERE}"
)
def test_real_cifar100_counts_and_published_channel_means():
    train, test = load(REAL_CIFAR100)
    assert (len(train), len(test), train.num_classes) == (50000, 10000, 100)
    assert torch.bincount(train.labels).tolist() == [500] * 100
    assert test.labels[:5].tolist() == [49, 33, 72, 51, 71]
    published = json.loads((REAL_CIFAR100 / "meta.json").read_text())["channel_stats_0_1"]
    pixel_sums = train.images.sum(dim=(0, 2, 3), dtype=torch.float64)
    means = (pixel_sums / (255.0 * 50000 * 32 * 32)).tolist()
    assert means == pytest.approx([0.5070751592371323, 0.48654887331495095, 0.4409178433670343], abs=1e-6)
    assert means == pytest.approx(published["train_mean"], abs=1e-6)
    # famkd normalises with the published code's constants (mdistiller, RepDistiller), which the teachers were
    # trained with; they are close to the data's own statistics (0.48655 vs 0.4867: 1.5e-4), not equal to them
    assert pytest.approx(published["train_mean"], abs=3e-4) == CIFAR100_MEAN
    assert pytest.approx(published["train_std"], abs=3e-4) == CIFAR100_STD


# batched augmentation against per-sample loops


def random_images(count=6, size=8, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def reference_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int) -> np.ndarray:
    """torchvision's RandomCrop(size, padding) then RandomHorizontalFlip, one image at a time."""
    count, channels, height, width = images.shape
    out = np.zeros_like(images)
    for b in range(count):
        padded = np.zeros((channels, height + 2 * padding, width + 2 * padding), dtype=images.dtype)
        padded[:, padding : padding + height, padding : padding + width] = images[b]
        top, left = offsets[b]
        crop = padded[:, top : top + height, left : left + width]
        out[b] = crop[:, :, ::-1] if flips[b] else crop
    return out


def test_crop_and_flip_match_a_per_sample_reference():
    images = random_images(count=40)
    generator = torch.Generator().manual_seed(3)
    offsets = crop_offsets(40, 2, generator)
    flips = flip_mask(40, generator)
    assert offsets.min() >= 0 and offsets.max() <= 4 and len(set(offsets.flatten().tolist())) == 5
    assert 0 < flips.sum() < 40
    indices = torch.arange(40)
    cropped = flip_where(crop_padded(pad_images(images, 2), indices, offsets, 8), flips)
    expected = reference_crop_flip(images.numpy(), offsets.numpy(), flips.numpy(), 2)
    assert np.array_equal(cropped.numpy(), expected)


def test_crop_reads_the_windows_of_the_indexed_images():
    images = random_images(count=5)
    indices = torch.tensor([4, 0, 4, 2])
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7]])
    cropped = crop_padded(pad_images(images, 4), indices, offsets, 8)
    no_flips = np.zeros(4, dtype=bool)
    expected = reference_crop_flip(images[indices].numpy(), offsets.numpy(), no_flips, 4)
    assert np.array_equal(cropped.numpy(), expected)
    assert torch.equal(cropped[2], images[4])  # offset (padding, padding) is the identity
    assert cropped[0, :, :4, :].eq(0).all() and cropped[1, :, 4:, :].eq(0).all()


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std as the loader computes it (one multiply-add)."""
    scale, shift = normalization_constants(mean, std)
    return images.to(torch.float32).mul_(scale).add_(shift)


def test_normalize_matches_a_float64_formula():
    images = random_images(count=4)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    out = normalize(images, mean, std)
    pixels = images.numpy().astype(np.float64) / 255.0
    expected = (pixels - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-6)


# the loader


def small_dataset(count=50, size=8, num_classes=5) -> ImageDataset:
    labels = torch.arange(count) % num_classes
    return ImageDataset(
        random_images(count, size, seed=1),
        labels,
        num_classes,
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.25, 0.3),
        description="random test images, 50 images",
    )


def reference_epoch(
    dataset: ImageDataset, seed: int, epoch: int, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches a train loader should yield, rebuilt from the documented (seed, epoch) draws."""
    generator = epoch_generator(seed, epoch)
    order = torch.randperm(len(dataset), generator=generator).numpy()
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (len(dataset), 2), generator=generator).numpy()
    flips = (torch.rand(len(dataset), generator=generator) < 0.5).numpy()
    images = reference_crop_flip(dataset.images.numpy()[order], offsets, flips, CROP_PADDING).astype(np.float64)
    mean, std = np.array(dataset.mean)[:, None, None], np.array(dataset.std)[:, None, None]
    normalised = (images / 255.0 - mean) / std
    labels = dataset.labels.numpy()[order]
    return [
        (normalised[s : s + batch_size], labels[s : s + batch_size])
        for s in range(0, len(dataset) - batch_size + 1, batch_size)
    ]


def test_train_batches_match_the_reference_epoch():
    dataset = small_dataset()
    loader = BatchLoader(dataset, 16, train=True, seed=7, device="cpu")
    loader.set_epoch(3)
    batches = list(loader)
    expected = reference_epoch(dataset, seed=7, epoch=3, batch_size=16)
    assert len(loader) == len(batches) == len(expected) == 3  # drop_last: 50 // 16
    for (images, labels), (ref_images, ref_labels) in zip(batches, expected, strict=True):
        assert images.dtype == torch.float32 and images.shape == (16, 3, 8, 8)
        np.testing.assert_allclose(images.numpy(), ref_images, rtol=0, atol=2e-6)
        assert np.array_equal(labels.numpy(), ref_labels)


def test_an_epoch_depends_only_on_seed_and_epoch():
    dataset = small_dataset()
    first = BatchLoader(dataset, 10, train=True, seed=1)
    second = BatchLoader(dataset, 10, train=True, seed=1)
    first.set_epoch(2)
    epoch_two = [batch for batch in first]
    first.set_epoch(5)
    list(first)
    second.set_epoch(2)  # a resumed run starts its loader directly at the epoch
    for (a, la), (b, lb) in zip(epoch_two, second, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    first.set_epoch(2)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(epoch_two, first, strict=True))


def test_epochs_and_seeds_differ_and_each_epoch_is_a_permutation():
    dataset = small_dataset()
    loader = BatchLoader(dataset, 10, train=True, seed=0)
    orders = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        labels = torch.cat([labels for _, labels in loader])
        assert sorted(labels.tolist()) == sorted(dataset.labels.tolist())
        orders.append(labels)
    assert not torch.equal(orders[0], orders[1])
    other_seed = BatchLoader(dataset, 10, train=True, seed=1)
    other_seed.set_epoch(1)
    assert not torch.equal(next(iter(other_seed))[0], next(iter(loader.__class__(dataset, 10, train=True, seed=0)))[0])


def test_eval_loader_keeps_order_no_augmentation_and_the_last_partial_batch():
    dataset = small_dataset()
    loader = BatchLoader(dataset, 16, train=False, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(labels) for _, labels in batches] == [16, 16, 16, 2]
    images = torch.cat([images for images, _ in batches])
    expected = normalize(dataset.images, dataset.mean, dataset.std)
    assert torch.equal(images, expected)
    assert torch.equal(torch.cat([labels for _, labels in batches]), dataset.labels)


def test_max_steps_caps_the_epoch():
    dataset = small_dataset()
    loader = BatchLoader(dataset, 8, train=True, seed=0, max_steps=2)
    loader.set_epoch(1)
    batches = list(loader)
    full = BatchLoader(dataset, 8, train=True, seed=0)
    full.set_epoch(1)
    assert len(loader) == len(batches) == 2 and len(full) == 6
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, full, strict=False))
    assert len(BatchLoader(dataset, 8, train=False, max_steps=100)) == 7
    assert len(BatchLoader(dataset, 8, train=True, drop_last=False)) == 7


def test_channels_last_output_has_the_same_values():
    dataset = small_dataset()
    plain = next(iter(BatchLoader(dataset, 8, train=True, seed=0)))[0]
    channels_last = next(iter(BatchLoader(dataset, 8, train=True, seed=0, channels_last=True)))[0]
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, channels_last)


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchLoader(small_dataset(), 0, train=True)
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        BatchLoader(small_dataset(), 4, train=True, max_steps=-1)


# the synthetic demo set

SMALL_SPEC = SyntheticSpec(num_classes=6, train_per_class=8, test_per_class=4, seed=3)


def test_synthetic_set_is_deterministic_and_says_it_is_synthetic():
    train, test = synthetic_datasets(SMALL_SPEC)
    again_train, again_test = synthetic_datasets(SMALL_SPEC)
    assert torch.equal(train.images, again_train.images) and torch.equal(test.images, again_test.images)
    assert train.images.shape == (48, 3, 32, 32) and test.images.shape == (24, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [8] * 6 and train.num_classes == 6
    assert "synthetic" in train.description and "not real images" in test.description
    assert not torch.equal(train.images[:24], test.images)
    other, _ = synthetic_datasets(SyntheticSpec(num_classes=6, train_per_class=8, test_per_class=4, seed=4))
    assert not torch.equal(train.images, other.images)


def test_synthetic_mean_and_std_are_those_of_its_train_images():
    train, test = synthetic_datasets(SMALL_SPEC)
    pixels = train.images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(train.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(train.std, pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    assert test.mean == train.mean


def test_synthetic_test_split_does_not_depend_on_the_train_size():
    train, test = synthetic_datasets(SMALL_SPEC)
    config = data_options("synthetic", classes=6, train_per_class=12)
    bigger_train, same_test = synthetic_datasets_from_config(config, SMALL_SPEC)
    assert len(bigger_train) == 72 and torch.equal(same_test.images, test.images)
    assert not torch.equal(bigger_train.images[:48], train.images)


def test_build_datasets_makes_the_synthetic_set_from_data_classes_and_train_per_class():
    train, test = build_datasets(data_options("synthetic", classes=2, train_per_class=3))
    assert (len(train), len(test), train.num_classes) == (6, 2 * SyntheticSpec().test_per_class, 2)
    assert "synthetic embedded dataset" in train.description


def test_dataset_image_size_is_the_side_of_the_built_images(tiny_cifar_npy: Path) -> None:
    for config in (data_options("synthetic", classes=2, train_per_class=1), data_options(root=str(tiny_cifar_npy))):
        train, test = build_datasets(config)
        assert dataset_image_size(config) == 32
        assert train.images.shape[-2:] == test.images.shape[-2:] == (32, 32)
    assert dataset_image_size(data_options("imagenet", crop_size=96, resize_size=110)) == 96
    with pytest.raises(ConfigError, match=UNKNOWN_DATASET):
        dataset_image_size(data_options("cifar10"))


def test_synthetic_class_names_describe_the_shape_pairs():
    train, _ = synthetic_datasets(SMALL_SPEC)
    assert len(set(train.class_names)) == 6
    assert all(name.startswith("red ") and name.endswith(" opposite") for name in train.class_names)
    colour, _ = synthetic_datasets(SyntheticSpec(layout="colour", num_classes=4, train_per_class=1, test_per_class=1))
    assert all(name.startswith("red ") and " + blue " in name for name in colour.class_names)


# Area of each shape at radius 1 (the float64 formulas of the shapes the generator draws).
UNIT_AREAS = {
    "disk": np.pi,
    "square": 1.6**2,
    "triangle": 1.6**2 / 2,
    "plus": 2 * 1.2 - 0.6**2,
    "ring": np.pi * 0.65,
    "cross": 2 * 1.2 - 0.6**2,
    "bar": 1.4,
    "half-disk": np.pi / 2 + 0.2,
}
CLEAN = dict(
    radius=(6.0, 6.0), max_rotation_deg=0.0, colour_jitter=0.0, object_texture=0.0, background_texture=0.0, noise=0.0
)


def pixels_of_colour(images: torch.Tensor, colour: tuple[float, float, float]) -> np.ndarray:
    """(N, 4) count of pixels within 1/255 of `colour` in each 16x16 cell (row-major cells)."""
    target = np.round(255 * np.array(colour)).reshape(1, 3, 1, 1)
    hits = (np.abs(images.numpy().astype(np.int64) - target) <= 1).all(axis=1)  # (N, 32, 32)
    count = len(images)
    return hits.reshape(count, 2, 16, 2, 16).sum(axis=(2, 4)).reshape(count, 4)


def assert_area(count: int, shape: str) -> None:
    expected = UNIT_AREAS[shape] * 36.0  # radius 6
    assert abs(count / expected - 1) < 0.25, (count, shape, expected)


def test_synthetic_colour_layout_draws_the_class_shapes_in_red_and_blue():
    from famkd.data.synthetic import KEY_COLOURS

    spec = SyntheticSpec(
        layout="colour", num_shapes=8, num_classes=64, distractors=2, train_per_class=2, test_per_class=1, **CLEAN
    )
    train, _ = synthetic_datasets(spec)
    red, blue = pixels_of_colour(train.images, KEY_COLOURS[0]), pixels_of_colour(train.images, KEY_COLOURS[1])
    for index, label in enumerate(train.labels.tolist()):
        red_shape, blue_shape = train.class_names[label][len("red ") :].split(" + blue ")
        assert (red[index] > 0).sum() == 1 and (blue[index] > 0).sum() == 1
        assert red[index].argmax() != blue[index].argmax()
        assert_area(red[index].max(), red_shape)
        assert_area(blue[index].max(), blue_shape)


def test_synthetic_diagonal_layout_puts_the_class_shape_opposite_the_red_object():
    from famkd.data.synthetic import DISTRACTOR_COLOURS, KEY_COLOURS

    spec = SyntheticSpec(
        layout="diagonal", num_classes=16, num_shapes=4, distractors=2, train_per_class=3, test_per_class=1, **CLEAN
    )
    train, _ = synthetic_datasets(spec)
    red = pixels_of_colour(train.images, KEY_COLOURS[0])
    others = np.stack([pixels_of_colour(train.images, c) for c in (KEY_COLOURS[1], *DISTRACTOR_COLOURS)], axis=1)
    for index, label in enumerate(train.labels.tolist()):
        red_shape, opposite_shape = train.class_names[label][len("red ") :].split(" + ")
        red_cell = int(red[index].argmax())
        assert (red[index] > 0).sum() == 1
        assert_area(red[index, red_cell], red_shape)
        colour = int(others[index].sum(axis=1).argmax())  # every non-red object shares one colour
        cells_with_colour = others[index, colour] > 0
        assert cells_with_colour.tolist() == [cell != red_cell for cell in range(4)]
        assert_area(others[index, colour, 3 - red_cell], opposite_shape.removesuffix(" opposite"))


def test_synthetic_spec_rejects_impossible_settings():
    with pytest.raises(ValueError, match="num_classes must be in"):
        SyntheticSpec(num_shapes=2, num_classes=5)
    with pytest.raises(ValueError, match="distractors must be"):
        SyntheticSpec(distractors=3)
    with pytest.raises(ValueError, match="layout must be 'colour' or 'diagonal'"):
        SyntheticSpec(layout="ring")


def test_loader_with_indices_yields_each_images_position_in_the_dataset():
    dataset = small_dataset()
    train = BatchLoader(dataset, 16, train=True, seed=7, with_indices=True)
    train.set_epoch(3)
    generator = epoch_generator(7, 3)
    order = torch.randperm(len(dataset), generator=generator)  # the documented draw, as in reference_epoch
    plain = BatchLoader(dataset, 16, train=True, seed=7)
    plain.set_epoch(3)
    for step, ((images, labels, indices), (plain_images, plain_labels)) in enumerate(zip(train, plain, strict=True)):
        assert torch.equal(indices, order[16 * step : 16 * (step + 1)])
        assert torch.equal(labels, dataset.labels[indices]) and torch.equal(labels, plain_labels)
        assert torch.equal(images, plain_images)
    evaluation = list(BatchLoader(dataset, 16, train=False, with_indices=True))
    assert torch.equal(torch.cat([indices for _, _, indices in evaluation]), torch.arange(len(dataset)))


def test_more_training_images_per_class_than_a_class_holds_is_refused(tiny_cifar_npy: Path) -> None:
    train, _ = load(tiny_cifar_npy)
    largest = int(torch.bincount(train.labels).max())
    assert len(load(tiny_cifar_npy, train_per_class=largest)[0]) == len(train)
    with pytest.raises(ConfigError, match=f"data.train_per_class={largest + 1} but the largest class has {largest}"):
        load(tiny_cifar_npy, train_per_class=largest + 1)
