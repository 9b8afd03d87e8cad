"""Kernel's guarded use of private torch names: without them it runs eagerly, and importing famkd does not
pull in torch._dynamo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

from famkd.nn import kernels

SRC = Path(__file__).resolve().parents[1] / "src"


def scaled_sum(a: Tensor, b: Tensor) -> Tensor:
    return 3 * a - b / 2


def without_private_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "private_torch_attribute", lambda module_name, attribute: None)


def without_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "compile")


@pytest.mark.parametrize("remove_compile_pieces", [without_private_names, without_torch_compile])
def test_kernel_without_the_compile_pieces_runs_eagerly_and_warns_once(monkeypatch, remove_compile_pieces):
    monkeypatch.setenv(kernels.COMPILE_SETTING, "always")
    monkeypatch.setattr(kernels, "device_has_compiler", lambda device_type: True)
    remove_compile_pieces(monkeypatch)
    kernels.warn_compile_unavailable.cache_clear()
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    kernel = kernels.Kernel(scaled_sum)
    with pytest.warns(UserWarning, match="kernels run eagerly"):
        out = kernel(a, b)
    assert torch.equal(out, scaled_sum(a, b))
    assert kernel.compiled is None and kernel.failed
    other = kernels.Kernel(scaled_sum)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the process was told once already
        assert torch.equal(kernel(b, a), scaled_sum(b, a))
        assert torch.equal(other(a, a), scaled_sum(a, a))
    assert other.compiled is None and other.failed
    kernels.warn_compile_unavailable.cache_clear()


def test_private_torch_attribute_finds_existing_names_only():
    import torch._dynamo.exc

    assert kernels.private_torch_attribute("torch._dynamo.exc", "BackendCompilerFailed") is (
        torch._dynamo.exc.BackendCompilerFailed
    )
    assert kernels.private_torch_attribute("torch._dynamo.exc", "NoSuchErrorInAnyTorch") is None
    assert kernels.private_torch_attribute("torch._no_such_private_module", "BackendCompilerFailed") is None


def test_compile_errors_are_exception_types_or_missing(monkeypatch):
    import torch._dynamo.exc

    errors = kernels.compile_errors()
    assert errors is not None and errors.backend_failed == (torch._dynamo.exc.BackendCompilerFailed,)
    assert all(issubclass(error, BaseException) for error in errors.recompile_limit_hit)
    monkeypatch.setattr(torch._dynamo.exc, "BackendCompilerFailed", "renamed")  # not an exception type any more
    assert kernels.compile_errors() is None


def test_importing_famkd_kernels_does_not_import_dynamo():
    script = (
        "import json, sys\n"
        "import torch\n"
        "by_torch = 'torch._dynamo' in sys.modules\n"
        "import famkd.nn.kernels, famkd.fam\n"
        "print(json.dumps([by_torch, 'torch._dynamo' in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    imported_by_torch, imported_by_famkd = json.loads(result.stdout.strip().splitlines()[-1])
    if imported_by_torch:
        pytest.skip("this torch imports torch._dynamo itself")
    assert not imported_by_famkd
