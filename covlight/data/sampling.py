"""Patch sampling with nnU-Net's foreground oversampling."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
import torchio as tio
from torchio.data.sampler.sampler import RandomSampler


class ForegroundSampler(RandomSampler):
    """Random patches; a `foreground_fraction` of them is centred on a voxel of a foreground class.

    As in nnU-Net, the class is drawn uniformly among the foreground classes present in the case, so a rare
    class (small lesions) is seen as often as a large one. 2D training uses patches of z-size 1 from the same
    volumes, so slices get the same oversampling. Patches lie wholly inside the volume (pad it first).
    """

    def __init__(self, patch_size, foreground_fraction: float = 0.33, label_name: str = "label"):
        super().__init__(patch_size)
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.foreground_fraction = foreground_fraction
        self.label_name = label_name

    def _generate_patches(self, subject: tio.Subject, num_patches: int | None = None) -> Generator[tio.Subject]:
        shape = np.asarray(subject.spatial_shape)
        patch = np.asarray(self.patch_size, dtype=int)
        highest_start = shape - patch
        label = subject[self.label_name].data[0]
        foreground = None
        produced = 0
        while num_patches is None or produced < num_patches:
            start = None
            if torch.rand(()).item() < self.foreground_fraction:
                if foreground is None:
                    foreground = foreground_voxels(label)
                if foreground:
                    voxels = foreground[int(torch.randint(len(foreground), ()))]
                    centre = np.array(np.unravel_index(int(voxels[int(torch.randint(len(voxels), ()))]), shape))
                    start = np.clip(centre - patch // 2, 0, highest_start)
            if start is None:
                start = np.array([int(torch.randint(int(h) + 1, ())) for h in highest_start])
            yield self.extract_patch(subject, tuple(int(s) for s in start))
            produced += 1


def foreground_voxels(label: torch.Tensor) -> list[torch.Tensor]:
    """Flat (row-major) indices of the voxels of each foreground class present, classes in ascending order.

    One pass over the volume and one over its foreground (not `unique` + a `nonzero` per class over the whole
    volume, which took seconds per case at a CT's size); the same voxels in the same order as before.
    """
    flat = label.reshape(-1)
    where = torch.nonzero(flat).squeeze(1)
    values = flat[where].long()
    present = torch.bincount(values).nonzero().squeeze(1).tolist() if len(values) else []
    return [where[values == c] for c in present]
