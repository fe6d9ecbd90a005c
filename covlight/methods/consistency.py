"""Small pieces shared by the semi-supervised and domain-adaptation methods: schedules, EMA, gradient reversal."""

from __future__ import annotations

import math

import torch
from torch import nn


def sigmoid_rampup(step: float, length: float) -> float:
    """Laine & Aila's ramp-up exp(-5 (1 - t)^2), t = step / length clipped to [0, 1]; 1 at once if length <= 0."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky's schedule 2 / (1 + exp(-gamma p)) - 1 for training progress p in [0, 1]: 0 -> ~1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student for parameters; buffers (e.g. BN statistics) copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s, 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -scale (DANN's gradient-reversal layer)."""
    return _GradientReversal.apply(x, scale)


def entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) along `dim`, e.g. per voxel of (B, K, *spatial) class probabilities."""
    return -(probabilities * probabilities.clamp_min(1e-8).log()).sum(dim)


def uncertainty_mask(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """Voxels whose predictive entropy is below `threshold` (UA-MT keeps the consistency loss only there)."""
    return entropy(probabilities) < threshold


def full_resolution(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a net's output (the first of a deep-supervision list)."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs
