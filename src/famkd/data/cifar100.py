"""CIFAR-100 from the `cifar-100-python` pickle directory or the `.npy` layout, decoded once into memory.

The pickle directory is what torchvision downloads (files `train`, `test`, `meta`; `data` is uint8
(N, 3072), each row a CHW image). The `.npy` layout holds `meta.json` (naming the image shards),
uint8 NHWC shards `train_images_*.npy` / `test_images_*.npy` and int64 `{train,test}_fine_labels.npy`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from famkd.data.datasets import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DataFormatError,
    DataNotFoundError,
    ImageDataset,
    SubsetOptions,
    subsets,
)
from famkd.data.loader import in_memory_loader
from famkd.data.registry import DatasetEntry, register_dataset

PICKLE_DIR_NAME = "cifar-100-python"
NPY_DIR_NAME = "cifar100"
IMAGE_SIZE = 32
HOW_TO_GET = (
    "download cifar-100-python.tar.gz (torchvision.datasets.CIFAR100(root, download=True))",
    "point data.root / FAMKD_DATA at a cifar-100-python directory or an .npy layout directory",
)


@dataclass
class Cifar100Options(SubsetOptions):
    """CIFAR-100 from data.root (else $FAMKD_DATA, else ./data); `download`: fetch cifar-100-python with torchvision
    when it is absent (never unasked)."""

    download: bool = False


def load_cifar100_subsets(options: Cifar100Options) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) CIFAR-100 reduced as `options` say (see `subsets`)."""
    return subsets(*load_cifar100(options.root, download=options.download), options)


register_dataset("cifar100")(
    DatasetEntry(Cifar100Options, load_cifar100_subsets, lambda _: IMAGE_SIZE, in_memory_loader)
)


def load_cifar100(root: str = "", download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) CIFAR-100 from the first place that holds it; downloaded only when `download` is set.

    `root` set: only there (the directory itself, or its `cifar-100-python` / `cifar100` child).
    `root` empty: $FAMKD_DATA when set, then ./data. Without `download` nothing is created and the
    error says where it looked. With `download`, torchvision fetches cifar-100-python into the
    first of these places, creating it; a failed download removes again what it made.
    """
    places = candidate_roots(root)
    for place, _ in places:
        found = find_cifar100(place)
        if found is not None:
            return _load(*found)
    explicit_root = bool(root)
    if not download:
        note = "download disabled (data.download=false)"
        raise DataNotFoundError(_not_found_message(places, note, explicit_root, offer_download=True))
    target = places[0][0]
    try:
        _download(target)
    except (OSError, RuntimeError) as err:
        note = f"download into {target} failed: {err}"
        raise DataNotFoundError(_not_found_message(places, note, explicit_root, offer_download=False)) from err
    return _load(target / PICKLE_DIR_NAME, "pickle")


def candidate_roots(root: str) -> list[tuple[Path, str]]:
    """(absolute directory, where it came from) in search order."""
    if root:
        return [(Path(root).expanduser().absolute(), "data.root")]
    places = []
    env_root = os.environ.get("FAMKD_DATA", "")
    if env_root:
        places.append((Path(env_root).expanduser().absolute(), "$FAMKD_DATA"))
    places.append((Path("data").absolute(), "./data, the default"))
    return places


def find_cifar100(root: Path) -> tuple[Path, str] | None:
    """(directory, "npy" | "pickle") of a CIFAR-100 copy at `root` or in its usual child, else None."""
    for directory in (root, root / PICKLE_DIR_NAME, root / NPY_DIR_NAME):
        if (directory / "meta.json").is_file():
            return directory, "npy"
        if all((directory / name).is_file() for name in ("train", "test", "meta")):
            return directory, "pickle"
    return None


def _load(directory: Path, layout: str) -> tuple[ImageDataset, ImageDataset]:
    read = _read_npy_split if layout == "npy" else _read_pickle_split
    names = _read_npy_class_names(directory) if layout == "npy" else _read_pickle_class_names(directory)
    datasets = []
    for split in ("train", "test"):
        images, labels = read(directory, split)
        _check_labels(labels, len(names), directory, split)
        datasets.append(
            ImageDataset(
                images=images,
                labels=labels,
                num_classes=len(names),
                mean=CIFAR100_MEAN,
                std=CIFAR100_STD,
                description=f"CIFAR-100 ({layout} layout at {directory}), {split}, {len(labels)} images",
                class_names=tuple(names),
            )
        )
    return datasets[0], datasets[1]


def _check_labels(labels: torch.Tensor, num_classes: int, directory: Path, split: str) -> None:
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise DataFormatError(
            f"{directory}: {split} labels span [{int(labels.min())}, {int(labels.max())}] "
            f"but there are {num_classes} class names"
        )


def _read_npy_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 (N,) labels of one split of the .npy layout."""
    meta = _read_meta_json(directory)
    shard_names = meta.get(f"{split}_image_shards")
    if not isinstance(shard_names, list) or not shard_names:
        raise DataFormatError(f"{directory / 'meta.json'} must list the {split} images under '{split}_image_shards'")
    shards = [_open_npy(directory / name, np.uint8) for name in shard_names]
    for name, shard in zip(shard_names, shards, strict=True):
        if shard.ndim != 4 or shard.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataFormatError(f"{directory / name}: expected uint8 (N, 32, 32, 3) NHWC images, got {shard.shape}")
    labels_path = directory / f"{split}_fine_labels.npy"
    labels = _open_npy(labels_path, np.int64)
    count = sum(len(shard) for shard in shards)
    if labels.shape != (count,):
        raise DataFormatError(f"{labels_path}: expected shape ({count},), got {labels.shape}")
    images = torch.empty((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    start = 0
    for shard in shards:
        # One strided copy per shard from the memory map straight into NCHW memory.
        images.numpy()[start : start + len(shard)] = shard.transpose(0, 3, 1, 2)
        start += len(shard)
    return images, torch.from_numpy(np.array(labels))


def _read_meta_json(directory: Path) -> dict:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{directory / 'meta.json'} cannot be read as JSON: {err}") from None
    if not isinstance(meta, dict):
        raise DataFormatError(f"{directory / 'meta.json'} must hold a JSON object")
    return meta


def _read_npy_class_names(directory: Path) -> list[str]:
    names = _read_meta_json(directory).get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise DataFormatError(f"{directory / 'meta.json'} must list the class names under 'fine_label_names'")
    return [str(name) for name in names]


def _open_npy(path: Path, dtype: type) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{path}: cannot be read as an .npy array ({err})") from None
    if array.dtype != dtype:
        raise DataFormatError(f"{path}: expected dtype {np.dtype(dtype).name}, got {array.dtype}")
    return array


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only: a data file must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (files written by Python 2 or 3 alike)."""
    try:
        with open(path, "rb") as file:
            content = _ArrayUnpickler(file, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataFormatError(f"{path}: not a readable CIFAR pickle ({err})") from None
    if not isinstance(content, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {_text(key): value for key, value in content.items()}


def _text(value: str | bytes) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_pickle_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 (N,) fine labels of one cifar-100-python file."""
    path = directory / split
    content = _read_pickle(path)
    for key in ("data", "fine_labels"):
        if key not in content:
            raise DataFormatError(f"{path}: missing the '{key}' entry")
    data = np.asarray(content["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise DataFormatError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(content["fine_labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataFormatError(f"{path}: {len(data)} images but {labels.size} fine labels")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels.copy())


def _read_pickle_class_names(directory: Path) -> list[str]:
    names = _read_pickle(directory / "meta").get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise DataFormatError(f"{directory / 'meta'}: missing the 'fine_label_names' list")
    return [_text(name) for name in names]


def _download(target: Path) -> None:
    """Fetch and extract cifar-100-python into `target` with torchvision (network errors propagate).

    On failure what the download made is removed before the error propagates: the folders it
    created when `target` did not exist, else the entries it added to `target`.
    """
    from torchvision.datasets import CIFAR100

    created = _topmost_missing(target)
    entries_before = set() if created is not None else set(target.iterdir())
    try:
        target.mkdir(parents=True, exist_ok=True)
        CIFAR100(root=str(target), train=True, download=True)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        else:
            for entry in set(target.iterdir()) - entries_before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _topmost_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist (what mkdir(parents=True) creates), or None."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _not_found_message(
    places: list[tuple[Path, str]], download_note: str, explicit_root: bool, offer_download: bool
) -> str:
    lines = ["CIFAR-100 not found. Looked in:"]
    for place, origin in places:
        state = "does not exist" if not place.exists() else "holds no cifar-100-python files and no meta.json"
        lines.append(f"  - {place} ({origin}; also its {PICKLE_DIR_NAME}/ and {NPY_DIR_NAME}/): {state}")
    if explicit_root:
        lines.append("  ($FAMKD_DATA and ./data were not searched because data.root is set.)")
    lines.append(f"Then: {download_note}.")
    ways = list(HOW_TO_GET)
    if offer_download:
        ways.append(f"add data.download=true to fetch cifar-100-python with torchvision into {places[0][0]}")
    lines.append(f"To get it: {'; '.join(ways[:-1])}; or {ways[-1]}.")
    return "\n".join(lines)
