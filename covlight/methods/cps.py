"""Cross pseudo supervision (Chen et al., CVPR 2021)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from covlight.methods.consistency import full_resolution
from covlight.methods.semi import SemiSupervisedSegmentation


class CrossPseudoSupervision(SemiSupervisedSegmentation):
    """Two networks of one architecture with different initialisations, both supervised on labelled patches;
    on unlabelled patches each learns (cross-entropy) from the other's hard pseudo-labels.

    `second_net` is given by its own config (the model config interpolates the first net's, so Hydra builds a
    second, independently initialised copy). `net` is the one tested.
    """

    def __init__(self, net: nn.Module, second_net: nn.Module, **kwargs):
        super().__init__(net, **kwargs)
        self.second_net = second_net

    def losses(self, image, target, unlabelled, batch):
        supervised = (self.supervised_loss(self.net(image), target)
                      + self.supervised_loss(self.second_net(image), target))
        first = full_resolution(self.net(unlabelled))
        second = full_resolution(self.second_net(unlabelled))
        cross = F.cross_entropy(first, second.argmax(1)) + F.cross_entropy(second, first.argmax(1))
        return supervised, cross
