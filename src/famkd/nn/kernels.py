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

The errors torch.compile raises are private torch names (torch._dynamo.exc), which newer torch
versions may move or drop: they are looked up through `private_torch_attribute` at a kernel's first
compilation (importing torch._dynamo takes time, so not when famkd is imported). Where this torch
lacks torch.compile or those errors, kernels warn once and run eagerly.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import torch
from torch import Tensor

KernelOutput = TypeVar("KernelOutput", bound=Tensor | tuple[Tensor, ...])
COMPILE_MIN_NUMEL = 1 << 18
COMPILE_SETTING = "FAMKD_COMPILE_KERNELS"
COMPILE_CHOICES = ("auto", "always", "never")
# Inductor stores an intermediate that several expressions read (in its own loop, read back by a
# second one) once it reads more than 4 inputs. The kernels here are elementwise sums over a 3x3
# window, where recomputing such a value in registers is far cheaper than the memory round trip.
COMPILE_OPTIONS: dict[str, Any] = {"realize_reads_threshold": 1000}
ExceptionTypes = tuple[type[BaseException], ...]


def private_torch_attribute(module_name: str, attribute: str) -> Any | None:
    """`attribute` of the private torch module `module_name` (imported on this call), or None where
    this torch version lacks the module or the attribute. Every private torch name famkd uses goes
    through here."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, attribute, None)


def exception_types(module_name: str, *names: str) -> ExceptionTypes:
    """The exception classes among `module_name`'s `names` that this torch version has."""
    found = (private_torch_attribute(module_name, name) for name in names)
    return tuple(error for error in found if isinstance(error, type) and issubclass(error, BaseException))


class CompileErrors(NamedTuple):
    """The torch.compile errors a kernel handles."""

    # torch.compile keeps a bounded number of specialisations (shapes, strides) per function; with
    # fullgraph, one more raises this (in the torch versions that name it; older ones fall back themselves).
    recompile_limit_hit: ExceptionTypes
    backend_failed: ExceptionTypes


def compile_errors() -> CompileErrors | None:
    """The errors to catch around a compiled kernel, or None where this torch cannot tell a failed
    compilation apart (it lacks BackendCompilerFailed): kernels then stay eager."""
    backend_failed = exception_types("torch._dynamo.exc", "BackendCompilerFailed")
    if not backend_failed:
        return None
    return CompileErrors(exception_types("torch._dynamo.exc", "FailOnRecompileLimitHit"), backend_failed)


@functools.cache
def warn_compile_unavailable() -> None:
    """Say once per process that kernels run eagerly because this torch lacks what compiling them needs."""
    warnings.warn(
        f"famkd: torch {torch.__version__} lacks torch.compile or the torch._dynamo errors famkd handles; "
        "kernels run eagerly",
        stacklevel=4,
    )


@functools.cache
def import_cpp_extension_quietly() -> None:
    """Import torch.utils.cpp_extension, which compiling a kernel for the CPU imports, with its logger
    quieted: on a machine with a CUDA toolkit but no GPU its import logs "No CUDA runtime is found, using
    CUDA_HOME=...", in the middle of famkd's progress bar. Imported once, it never logs that again."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")
    finally:
        logger.setLevel(previous)


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
        has_triton = private_torch_attribute("torch.utils._triton", "has_triton")
        return has_triton is not None and bool(has_triton())
    return False


class Kernel(Generic[KernelOutput]):
    """Callable wrapper of `function`, compiled per the module docstring's rules."""

    def __init__(self, function: Callable[..., KernelOutput], dynamic: bool = False) -> None:
        self.function = function
        self.dynamic = dynamic  # one compiled kernel for every shape, rather than one per shape
        # Built on first use: importing the compiler takes seconds.
        self.compiled: Callable[..., KernelOutput] | None = None
        self.failed = False
        self.errors = CompileErrors((), ())  # looked up with the first compilation
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
            self.compiled = self.compile()
            if self.compiled is None:
                return self.function(*tensors)
        try:
            return self.compiled(*tensors)
        except self.errors.recompile_limit_hit:  # the shapes compiled so far stay compiled; these run eagerly
            self.eager_layouts.add(input_layout(tensors))
            return self.function(*tensors)
        except self.errors.backend_failed as error:
            self.failed = True
            warnings.warn(
                f"famkd: compiling {self.function.__name__} failed, running it eagerly ({error})", stacklevel=2
            )
            return self.function(*tensors)

    def compile(self) -> Callable[..., KernelOutput] | None:
        """torch.compile of `function`, or None (and eager from now on) where this torch cannot compile it."""
        errors = compile_errors()
        if errors is None or not hasattr(torch, "compile"):
            self.failed = True
            warn_compile_unavailable()
            return None
        self.errors = errors
        import_cpp_extension_quietly()
        return torch.compile(self.function, dynamic=self.dynamic, fullgraph=True, options=COMPILE_OPTIONS)


def input_layout(tensors: tuple) -> tuple:
    """What torch.compile specialises a kernel on: each tensor's shape, strides, dtype and device."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.device) if isinstance(t, Tensor) else t for t in tensors)
