"""Entropy minimisation (Grandvalet & Bengio, NeurIPS 2004; the direct term of ADVENT, Vu et al., CVPR 2019)."""

from __future__ import annotations

import math

from covlight.methods.consistency import entropy, full_resolution
from covlight.methods.semi import SemiSupervisedSegmentation


class EntropyMinimisation(SemiSupervisedSegmentation):
    """Makes predictions on unlabelled (target-domain) patches confident: the unsupervised loss is the mean
    per-voxel entropy of the class probabilities, divided by ln(K) so it lies in [0, 1] whatever the subtask."""

    def losses(self, image, target, unlabelled, batch):
        supervised = self.supervised_loss(self.net(image), target)
        probabilities = full_resolution(self.net(unlabelled)).softmax(1)
        return supervised, entropy(probabilities).mean() / math.log(probabilities.shape[1])
