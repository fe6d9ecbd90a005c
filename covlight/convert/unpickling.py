"""Reading another tool's pickles without running their code.

A pickle names the callables that rebuild its objects, so `pickle.load` of a crafted file runs anything. nnU-Net
v1's `plans.pkl` and `model_final_checkpoint.model.pkl` hold only builtin containers, OrderedDicts and numpy arrays,
scalars and dtypes: the unpickler here builds those and refuses every other name. Its `.model` file is a torch
checkpoint, read with `torch.load(weights_only=True)` and the same numpy names allowed.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import numpy as np

from covlight.errors import DatasetError

# (module, name) a pickle may rebuild. numpy moved its internals from numpy.core to numpy._core in 2.0; pickles
# written by either name each.
_NUMPY = [(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
          for name in ("_reconstruct", "scalar")]
ALLOWED = frozenset({
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *_NUMPY,
    *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str",
                                      "bytes", "complex", "slice", "range")),
})
_DTYPE_CLASSES = {type(np.dtype(code)).__name__ for code in "?bBhHiIlLqQefdgFDGSUVO"}


class _Restricted(pickle.Unpickler):
    def __init__(self, handle, path: Path):
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED or (module == "numpy.dtypes" and name in _DTYPE_CLASSES):
            return super().find_class(module, name)
        raise DatasetError(f"{self.path} asks to run {module}.{name} while it is read: a pickle of nnU-Net v1 holds "
                           "only containers and numpy arrays, so this file is refused. Download the model again "
                           "from its published record (Zenodo) and use that copy")


def load_pickle(path: Path):
    """A pickle's contents, built only from the allowed names (one clear error naming the file otherwise)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read it ({error.strerror}); check the model folder") from None
    try:
        return _Restricted(io.BytesIO(data), path).load()
    except DatasetError:
        raise
    except Exception as error:  # truncated or not a pickle
        raise DatasetError(f"{path} is damaged or not a pickle ({type(error).__name__}: {error}); download the "
                           "model again") from None


def torch_safe_globals() -> list:
    """The numpy callables `torch.load(weights_only=True)` may use for a v1 checkpoint (its training curves are
    numpy scalars)."""
    found = []
    for module, name in _NUMPY:
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    found += [np.ndarray, np.dtype, collections.OrderedDict]
    found += [getattr(np.dtypes, name) for name in sorted(_DTYPE_CLASSES) if hasattr(np.dtypes, name)]
    return found


def load_torch(path: Path) -> dict:
    """A torch checkpoint read with weights_only=True (and the numpy names above): a file carrying code is
    refused."""
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(torch_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(f"{path} cannot be read as a weights-only checkpoint ({reason}): it is damaged, or it "
                           "asks to run code; download the model again from its published record") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DatasetError(f"{path} holds no 'state_dict': not an nnU-Net v1 checkpoint (model_final_checkpoint"
                           ".model)")
    return checkpoint
