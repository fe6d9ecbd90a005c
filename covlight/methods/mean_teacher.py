"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from covlight.methods.consistency import ema_update, full_resolution
from covlight.methods.semi import SemiSupervisedSegmentation


class MeanTeacher(SemiSupervisedSegmentation):
    """A teacher that is the exponential moving average of the student (`ema_decay` per step, no gradients);
    consistency = MSE between student and teacher class probabilities on differently noised unlabelled patches.

    The student (`net`) is the model that is tested; the teacher lives in the checkpoint beside it.
    """

    def __init__(self, net: nn.Module, *, ema_decay: float = 0.99, noise_std: float = 0.1, **kwargs):
        super().__init__(net, **kwargs)
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        self.ema_decay = ema_decay
        self.noise_std = noise_std
        self.teacher = copy.deepcopy(net).requires_grad_(False)

    def on_train_start(self) -> None:
        # A fresh start (possibly from init_from's weights, loaded after construction) begins with teacher = student;
        # a resumed run keeps the teacher of its checkpoint.
        if self.global_step == 0:
            self.teacher.load_state_dict(self.net.state_dict())

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        ema_update(self.teacher, self.net, self.ema_decay)

    def noisy(self, image: torch.Tensor) -> torch.Tensor:
        """Gaussian noise clipped to +-2 std (images are scaled to [0, 1])."""
        return image + (torch.randn_like(image) * self.noise_std).clamp(-2 * self.noise_std, 2 * self.noise_std)

    @torch.no_grad()
    def teacher_probabilities(self, unlabelled: torch.Tensor) -> torch.Tensor:
        return full_resolution(self.teacher(self.noisy(unlabelled))).softmax(1)

    def consistency(self, student: torch.Tensor, unlabelled: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, self.teacher_probabilities(unlabelled))

    def losses(self, image, target, unlabelled, batch):
        supervised = self.supervised_loss(self.net(image), target)
        student = full_resolution(self.net(self.noisy(unlabelled))).softmax(1)
        return supervised, self.consistency(student, unlabelled)
