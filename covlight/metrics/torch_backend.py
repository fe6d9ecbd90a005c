"""The torch side of `covlight.metrics.backend`, imported only when a tensor is scored."""

from __future__ import annotations

import numpy as np
import torch


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
