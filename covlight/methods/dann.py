"""Domain-adversarial training (DANN; Ganin et al., JMLR 2016) on the U-Net's bottleneck."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from covlight.benchmark import COVID
from covlight.methods.consistency import dann_lambda, grad_reverse
from covlight.methods.semi import SemiSupervisedSegmentation


def bottleneck_channels(net: nn.Module) -> int:
    """Channels of the deepest encoder stage of a covlight U-Net (the output of its last conv)."""
    convs = [m for m in net.encoder[-1].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return convs[-1].out_channels


class DomainAdversarial(SemiSupervisedSegmentation):
    """A domain classifier tells source patches from target patches by the bottleneck features of `net.encode`
    (averaged over space); a gradient-reversal layer between them makes the encoder learn features the
    classifier cannot separate.

    Target = every unlabelled patch (e.g. unlabelled COVID scans) and labelled patches of `target_datasets`
    (task 3's 4 COVID cases); source = the other labelled patches. The reversal scale follows Ganin's schedule
    2 / (1 + exp(-gamma p)) - 1 over training progress p; `unsupervised_weight` weighs the domain loss.
    """

    def __init__(self, net: nn.Module, *, gamma: float = 10.0,
                 target_datasets: Sequence[str] = (COVID,), **kwargs):
        super().__init__(net, **kwargs)
        self.gamma = gamma
        self.target_datasets = frozenset(target_datasets)
        channels = bottleneck_channels(net)
        self.discriminator = nn.Sequential(nn.Linear(channels, channels), nn.LeakyReLU(0.01), nn.Linear(channels, 1))

    def reversal_scale(self) -> float:
        return dann_lambda(self.global_step / self.total_steps(), self.gamma)

    def losses(self, image, target, unlabelled, batch):
        skips = self.net.encode(image)
        supervised = self.supervised_loss(self.net.decode(skips), target)
        features = torch.cat([skips[-1], self.net.encode(unlabelled)[-1]]).flatten(2).mean(2)
        is_target = [d in self.target_datasets for d in batch["labelled"]["dataset"]] + [True] * len(unlabelled)
        domain = torch.tensor(is_target, dtype=features.dtype, device=features.device)
        scale = self.reversal_scale()
        logits = self.discriminator(grad_reverse(features, scale))[:, 0]
        size = image.shape[0]
        self.log("train/domain_accuracy", ((logits > 0) == domain.bool()).float().mean(), on_step=True,
                 on_epoch=True, batch_size=size)
        self.log("train/reversal_scale", scale, on_step=True, on_epoch=False, batch_size=size)
        return supervised, F.binary_cross_entropy_with_logits(logits, domain)
