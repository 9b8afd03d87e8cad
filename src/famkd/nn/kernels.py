"""Pure-tensor kernels that run compiled (torch.compile) when that pays off, eagerly otherwise.

A `Kernel` wraps a function of tensors whose eager form is already correct; compiling it only
fuses its elementwise work into one loop (C++/OpenMP through a C++ compiler on CPU, Triton on
CUDA). It compiles when the batch's activations have at least `COMPILE_MIN_NUMEL` elements (the
first tensor argument; below that, as in unit tests, compiling costs more than it saves), the
device has a compiler, and the environment variable FAMKD_COMPILE_KERNELS allows it:

    auto    (default) compile large inputs where a compiler is available
    always  compile every call (tests use it to check the compiled form)
    never   always eager

Each input shape and dtype compiles once per process, or once for all shapes with `dynamic`
(seconds on CPU; torch keeps the result in its on-disk cache for later processes), up to
torch.compile's limit of specialisations per function (torch._dynamo.config.recompile_limit);
inputs of further shapes run eagerly. If compilation fails the kernel warns once and stays eager.
Inside an outer torch.compile the plain function is traced.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from typing import Callable

import torch
from torch import Tensor

KernelOutput = Tensor | tuple[Tensor, ...]
COMPILE_MIN_NUMEL = 1 << 18
COMPILE_SETTING = "FAMKD_COMPILE_KERNELS"
COMPILE_CHOICES = ("auto", "always", "never")
# Inductor stores an intermediate that several expressions read (in its own loop, read back by a
# second one) once it reads more than 4 inputs. The kernels here are elementwise sums over a 3x3
# window, where recomputing such a value in registers is far cheaper than the memory round trip.
COMPILE_OPTIONS = {"realize_reads_threshold": 1000}
# torch.compile keeps a bounded number of specialisations (shapes, strides) per function; with
# fullgraph, one more raises this (in the torch versions that name it; older ones fall back themselves).
RECOMPILE_LIMIT_HIT = (torch._dynamo.exc.FailOnRecompileLimitHit,) if hasattr(torch._dynamo.exc, "FailOnRecompileLimitHit") else ()


def compile_setting() -> str:
    setting = os.environ.get(COMPILE_SETTING, "auto").strip().lower() or "auto"
    if setting not in COMPILE_CHOICES:
        raise ValueError(f"{COMPILE_SETTING}={setting!r}: choose one of {', '.join(COMPILE_CHOICES)}")
    return setting


@functools.cache
def device_has_compiler(device_type: str) -> bool:
    """Whether torch.compile's default backend can generate code for `device_type` here."""
    if device_type == "cpu":
        return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name)
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return False


class Kernel:
    """Callable wrapper of `function`, compiled per the module docstring's rules."""

    def __init__(self, function: Callable[..., KernelOutput], dynamic: bool = False):
        self.function = function
        self.dynamic = dynamic  # one compiled kernel for every shape, rather than one per shape
        self.compiled: Callable[..., KernelOutput] | None = None  # built on first use: importing the compiler takes seconds
        self.failed = False
        self.eager_layouts: set[tuple] = set()  # inputs past torch.compile's specialisation limit
        functools.update_wrapper(self, function)

    def use_compiled(self, first: Tensor) -> bool:
        if self.failed or torch.compiler.is_compiling():
            return False
        setting = compile_setting()
        if setting == "never":
            return False
        if setting == "auto" and first.numel() < COMPILE_MIN_NUMEL:
            return False
        return device_has_compiler(first.device.type)

    def __call__(self, *tensors: Tensor) -> KernelOutput:
        if not self.use_compiled(tensors[0]):
            return self.function(*tensors)
        if self.eager_layouts and input_layout(tensors) in self.eager_layouts:
            return self.function(*tensors)
        if self.compiled is None:
            self.compiled = torch.compile(self.function, dynamic=self.dynamic, fullgraph=True, options=COMPILE_OPTIONS)
        try:
            return self.compiled(*tensors)
        except RECOMPILE_LIMIT_HIT:  # the shapes compiled so far stay compiled; these run eagerly
            self.eager_layouts.add(input_layout(tensors))
            return self.function(*tensors)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            self.failed = True
            warnings.warn(f"famkd: compiling {self.function.__name__} failed, running it eagerly ({error})", stacklevel=2)
            return self.function(*tensors)


def input_layout(tensors: tuple) -> tuple:
    """What torch.compile specialises a kernel on: each tensor's shape, strides, dtype and device."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.device) if isinstance(t, Tensor) else t for t in tensors)
