"""Uncertainty-aware mean teacher (Yu et al., MICCAI 2019)."""

from __future__ import annotations

import math

import torch

from covlight.methods.consistency import uncertainty_mask
from covlight.methods.mean_teacher import MeanTeacher


class UncertaintyAwareMeanTeacher(MeanTeacher):
    """Mean teacher whose consistency counts only where the teacher is sure.

    The teacher's prediction is the mean of `mc_samples` stochastic passes (MC dropout, so give the net
    `dropout` > 0, plus input noise); a voxel counts when the entropy of that mean is below a threshold that
    rises with the ramp-up from 0.75 to 1 x ln(K), the maximum entropy of K classes (as in the paper).
    """

    def __init__(self, net, *, mc_samples: int = 8, **kwargs):
        super().__init__(net, **kwargs)
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.mc_samples = mc_samples

    def consistency(self, student: torch.Tensor, unlabelled: torch.Tensor) -> torch.Tensor:
        teacher = torch.stack([self.teacher_probabilities(unlabelled) for _ in range(self.mc_samples)]).mean(0)
        threshold = (0.75 + 0.25 * self.rampup()) * math.log(student.shape[1])
        mask = uncertainty_mask(teacher, threshold)
        squared = ((student - teacher) ** 2).mean(1)
        self.log("train/certain_fraction", mask.float().mean(), on_step=True, on_epoch=True,
                 batch_size=unlabelled.shape[0])
        return (squared * mask).sum() / mask.sum().clamp_min(1)
