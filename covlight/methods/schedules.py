"""Learning-rate schedules."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class PolyLR(LambdaLR):
    """nnU-Net's polynomial decay, stepped every batch: lr = lr0 * (1 - step / total_steps) ** exponent."""

    def __init__(self, optimizer: Optimizer, total_steps: int, exponent: float = 0.9, last_epoch: int = -1):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.exponent = exponent
        super().__init__(optimizer, self._factor, last_epoch=last_epoch)

    def _factor(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total_steps) ** self.exponent
