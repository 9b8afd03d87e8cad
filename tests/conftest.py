"""Shared fixtures: tiny CIFAR-100 copies on disk in both real formats (see tiny_cifar.py), and the test order.

Tests marked `heavy` (a step that needs most of the machine's memory) run first, while the test process
holds little memory: the memory a long session has touched stays with the process, and a heavy step on
top of it would add up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_cifar import write_tiny_cifar


@pytest.fixture(scope="session")
def tiny_cifar_npy(tmp_path_factory) -> Path:
    """Root of a tiny CIFAR-100 in the .npy layout (write_tiny_cifar defaults); pass it as data.root.

    Shared by the whole session: read it, never write into it.
    """
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar_npy"), "npy")


@pytest.fixture(scope="session")
def tiny_cifar_pickle(tmp_path_factory) -> Path:
    """Root holding cifar-100-python/ with the same images as `tiny_cifar_npy`; pass it as data.root.

    Shared by the whole session: read it, never write into it.
    """
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar_pickle"), "pickle")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module whose batches of a few small images are dominated by per-op threading
    overhead (on a shared 2-core machine two threads can be ~10x slower); the thread count found is put back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "heavy: needs most of the machine's memory; runs before every other test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: heavy first, order kept
