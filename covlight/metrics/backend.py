"""The few array operations that differ between numpy and torch, so each algorithm is written once.

Numpy arrays are scored with numpy (fastest on a CPU); torch tensors with torch on their own device, so a
prediction on a GPU is scored there without copying the volume to the host.
"""

from __future__ import annotations

import numpy as np
import torch


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


class TorchOps:
    @staticmethod
    def zeros_uint8(shape, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=torch.uint8, device=like.device)

    @staticmethod
    def zeros_bool(size: int, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(size, dtype=torch.bool, device=like.device)

    @staticmethod
    def concatenate(arrays: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(arrays)

    @staticmethod
    def any(mask: torch.Tensor, axis: tuple[int, ...]) -> torch.Tensor:
        # the max of the bytes: torch's `any` over several dims is several times slower on a CPU
        return mask.view(torch.uint8).amax(dim=axis) > 0

    @staticmethod
    def count(mask: torch.Tensor) -> int:
        return int(torch.count_nonzero(mask))

    @staticmethod
    def flatnonzero(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask.reshape(-1)).flatten()

    @staticmethod
    def bincount(codes: torch.Tensor) -> np.ndarray:
        return torch.bincount(codes, minlength=256).cpu().numpy()

    @staticmethod
    def to_numpy(array: torch.Tensor) -> np.ndarray:
        return array.cpu().numpy()


def ops_for(array) -> type[NumpyOps] | type[TorchOps]:
    return TorchOps if isinstance(array, torch.Tensor) else NumpyOps
