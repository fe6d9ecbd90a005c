"""The base of the methods that learn from labelled and unlabelled patches in one step."""

from __future__ import annotations

import torch
from torch import nn

from covlight.errors import ConfigError
from covlight.methods.consistency import sigmoid_rampup
from covlight.methods.supervised import SupervisedSegmentation


class SemiSupervisedSegmentation(SupervisedSegmentation):
    """loss = supervised loss on labelled patches + weight(t) x the method's loss on unlabelled patches.

    Training batches are {"labelled": ..., "unlabelled": {"image", "dataset"}} (`data.unlabelled` set; the
    methods' model configs set it). weight(t) = `unsupervised_weight` x a sigmoid ramp-up over the first
    `rampup_fraction` of the optimizer steps (0: no ramp-up). A subclass implements `losses`.
    """

    def __init__(self, net: nn.Module, *, unsupervised_weight: float = 0.1, rampup_fraction: float = 0.25, **kwargs):
        super().__init__(net, **kwargs)
        self.unsupervised_weight = unsupervised_weight
        self.rampup_fraction = rampup_fraction

    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    def rampup(self) -> float:
        return sigmoid_rampup(self.global_step, self.rampup_fraction * self.total_steps())

    def losses(self, image: torch.Tensor, target: torch.Tensor, unlabelled: torch.Tensor,
               batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(supervised, unsupervised) losses; `image`/`unlabelled` are net inputs, `batch` the raw batch."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "unlabelled" not in batch:
            raise ConfigError(f"{type(self).__name__} needs unlabelled patches: set data.unlabelled (its model "
                              "config sets data.unlabelled.datasets=[mosmed_unlabelled]; was it removed?)")
        image, target = self.batch_tensors(batch["labelled"])
        unlabelled = self.net_input(batch["unlabelled"]["image"].float())
        supervised, unsupervised = self.losses(image, target, unlabelled, batch)
        weight = self.unsupervised_weight * self.rampup()
        loss = supervised + weight * unsupervised
        size = image.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict({"train/supervised_loss": supervised, "train/unsupervised_loss": unsupervised},
                      on_step=True, on_epoch=True, batch_size=size)
        self.log("train/unsupervised_weight", weight, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=size)
        return loss
