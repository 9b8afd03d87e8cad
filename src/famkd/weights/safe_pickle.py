"""Reading `.pkl` weight files (Detectron2's model zoo) without ever running code from them.

Unpickling may call any importable function the file names, so `pickle.load` of a downloaded file
can run anything. `load_numpy_pickle` resolves only the few names a pickled dict of numpy arrays
needs and refuses every other one before it is imported:

- the functions numpy itself names when it pickles an array, a scalar or (protocol 5) a buffer,
  under both their numpy 1.x (`numpy.core.*`) and numpy 2.x (`numpy._core.*`) module names,
  and the classes `numpy.ndarray` and `numpy.dtype`;
- `collections.OrderedDict`;
- `_codecs.encode`, which protocol-2 pickles written by Python 3 use to rebuild `bytes`, and
  only with the "latin1" encoding those pickles use.

Dicts, lists, tuples, strings, bytes and numbers need no name at all. Python-2 pickles (the older
Detectron and Caffe2 files) are read with encoding "latin1", as Detectron2 reads them, so their
byte strings reach numpy unchanged.
"""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any

import numpy as np

from famkd.errors import FamkdError


class RefusedPickleError(FamkdError):
    """A pickle asked for a Python object famkd does not build from a weights file."""


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as protocol-2 pickles call it to rebuild bytes, refusing any other encoding."""
    if encoding != "latin1":
        raise RefusedPickleError(f"the pickle rebuilds bytes with the {encoding!r} codec; only 'latin1' is allowed")
    return text.encode("latin1")


def _numpy_pickle_functions() -> dict[str, Any]:
    """The functions the installed numpy names in its own pickles, by their names there."""
    return {
        "_reconstruct": np.zeros(1).__reduce__()[0],
        "scalar": np.float32(0).__reduce__()[0],
        "_frombuffer": np.zeros(1).__reduce_ex__(5)[0],
    }


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) as written in a pickle -> the object it stands for, for every name that is admitted."""
    numpy_functions = _numpy_pickle_functions()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = numpy_functions["_reconstruct"]
        allowed[(f"{core}.multiarray", "scalar")] = numpy_functions["scalar"]
        allowed[(f"{core}.numeric", "_frombuffer")] = numpy_functions["_frombuffer"]
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` and imports nothing."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickleError(
                f"it asks for {module}.{name}, which is not a numpy array or a plain container"
            ) from None


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """The object pickled in the file at `path`, provided it is made of numpy arrays and plain values.

    Raises `RefusedPickleError` (a `FamkdError`) naming the first other object the file asks for,
    before that object's module is even imported, and `FamkdError` for a file that is not a pickle.
    """
    try:
        with open(path, "rb") as file:
            return _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except RefusedPickleError as error:
        raise RefusedPickleError(
            f"refusing to load {path}: {error}. famkd never runs code from a checkpoint file; it reads only pickles "
            "of numpy arrays, dicts, lists, strings and numbers"
        ) from None
    except FileNotFoundError:
        raise FamkdError(f"checkpoint not found: {path}") from None
    except Exception as error:  # a corrupt or foreign file makes pickle raise many unrelated types
        raise FamkdError(f"cannot read {path} as a pickle of numpy arrays: {error!r}") from error
