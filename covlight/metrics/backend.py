"""The few array operations that differ between numpy and torch, so each algorithm is written once.

Numpy arrays are scored with numpy (fastest on a CPU); torch tensors with torch on their own device, so a
prediction on a GPU is scored there without copying the volume to the host. Torch is imported only when a
tensor is scored, so scoring files (covlight.evaluate) starts without it.
"""

from __future__ import annotations

import sys

import numpy as np


class NumpyOps:
    @staticmethod
    def zeros_uint8(shape, like: np.ndarray) -> np.ndarray:
        return np.zeros(shape, dtype=np.uint8)

    @staticmethod
    def zeros_bool(size: int, like: np.ndarray) -> np.ndarray:
        return np.zeros(size, dtype=bool)  # calloc: pages never written cost nothing

    @staticmethod
    def concatenate(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays)

    @staticmethod
    def any(mask: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
        return mask.any(axis=axis)

    @staticmethod
    def count(mask: np.ndarray) -> int:
        return int(np.count_nonzero(mask))

    @staticmethod
    def flatnonzero(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    @staticmethod
    def bincount(codes: np.ndarray) -> np.ndarray:
        """Occurrences of each byte value: host int64, length 256."""
        return np.bincount(codes, minlength=256)

    @staticmethod
    def to_numpy(array: np.ndarray) -> np.ndarray:
        return array


def is_tensor(array) -> bool:
    """Whether `array` is a torch tensor. Torch is never imported here: where it is not loaded, no tensor exists."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(array, torch.Tensor)


def ops_for(array) -> type:
    """The operations for `array`: NumpyOps, or TorchOps (importing torch) for a tensor."""
    if is_tensor(array):
        from covlight.metrics.torch_backend import TorchOps

        return TorchOps
    return NumpyOps
