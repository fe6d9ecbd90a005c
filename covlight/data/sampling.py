"""Patch sampling with nnU-Net's foreground oversampling."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
import torchio as tio
from torchio.data.sampler.sampler import RandomSampler

from covlight.benchmark import UNKNOWN_LABEL
from covlight.data.sparse import SUBJECT_KEY
from covlight.data.transforms import AffineRange


class ForegroundSampler(RandomSampler):
    """Random patches; a `foreground_fraction` of them is centred on a voxel of a foreground class.

    As in nnU-Net, the class is drawn uniformly among the foreground classes present in the case, so a rare
    class (small lesions) is seen as often as a large one. 2D training uses patches of z-size 1 from the same
    volumes, so slices get the same oversampling. Patches lie wholly inside the volume (pad it first).

    With `affine` (the augmentation's `AffineRange`) a patch that is to get the affine augmentation (drawn with its
    probability) comes with the context the affine reads from: it is drawn at `affine.drawn_size`, centred where the
    patch would be (so a foreground patch is
    still centred on its voxel once the augmentation has cropped it), and padded as the case is padded (image
    minimum, background) where it reaches beyond the case. With a `foreground_fraction` of 0 no label is read (an
    unlabelled case has none).

    In a partially annotated case (covlight.data.sparse) patches are drawn only where labels are known: foreground
    voxels are annotated ones, and a random patch is redrawn until it holds an annotated voxel (after
    `RANDOM_TRIES` misses, it is centred on an annotated voxel drawn uniformly).
    """

    RANDOM_TRIES = 20

    def __init__(self, patch_size, foreground_fraction: float = 0.33, label_name: str = "label",
                 affine: AffineRange | None = None):
        super().__init__(patch_size)
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.foreground_fraction = foreground_fraction
        self.label_name = label_name
        self.affine = affine

    def _generate_patches(self, subject: tio.Subject, num_patches: int | None = None) -> Generator[tio.Subject]:
        shape = np.asarray(subject.spatial_shape)
        patch = np.asarray(self.patch_size, dtype=int)
        highest_start = shape - patch
        foreground = None
        partial = SUBJECT_KEY in subject and self.label_name in subject
        known = None
        lowest: dict[str, float] = {}  # each image's minimum, to pad with beyond the case
        produced = 0
        while num_patches is None or produced < num_patches:
            start = None
            if torch.rand(()).item() < self.foreground_fraction:
                if foreground is None:
                    foreground = foreground_voxels(subject[self.label_name].data[0])
                if foreground:
                    voxels = foreground[int(torch.randint(len(foreground), ()))]
                    centre = np.array(np.unravel_index(int(voxels[int(torch.randint(len(voxels), ()))]), shape))
                    start = np.clip(centre - patch // 2, 0, highest_start)
            if start is None:
                start = np.array([int(torch.randint(int(h) + 1, ())) for h in highest_start])
                if partial:
                    label = subject[self.label_name].data[0]
                    for _ in range(self.RANDOM_TRIES):
                        if _holds_known(label, start, patch):
                            break
                        start = np.array([int(torch.randint(int(h) + 1, ())) for h in highest_start])
                    else:
                        if known is None:
                            known = torch.nonzero((label != UNKNOWN_LABEL).reshape(-1)).squeeze(1)
                        if len(known):
                            centre = np.array(np.unravel_index(int(known[int(torch.randint(len(known), ()))]),
                                                               shape))
                            start = np.clip(centre - patch // 2, 0, highest_start)
            yield self._with_context(subject, start, lowest)
            produced += 1

    def _with_context(self, subject: tio.Subject, start: np.ndarray, lowest: dict[str, float]) -> tio.Subject:
        """The patch at `start`, with the context the affine augmentation needs around it; beyond the case, each
        image is padded with its case's minimum (`lowest`, filled on first need) and a label with background."""
        patch = np.asarray(self.patch_size, dtype=int)
        if self.affine is None or torch.rand(()).item() >= self.affine.probability:
            return self.extract_patch(subject, tuple(int(s) for s in start))
        margin = (np.asarray(self.affine.drawn_size(patch, subject.spacing)) - patch) // 2
        shape = np.asarray(subject.spatial_shape)
        low, high = start - margin, start + patch + margin
        inside_low, inside_high = np.maximum(low, 0), np.minimum(high, shape)
        drawn = self.crop(subject, inside_low, inside_high - inside_low)
        beyond = [int(n) for pair in zip(inside_low - low, high - inside_high, strict=True) for n in pair]
        if any(beyond):
            for name, image in subject.get_images_dict(intensity_only=False).items():
                if name not in lowest:
                    lowest[name] = 0.0 if isinstance(image, tio.LabelMap) else float(image.data.min())
                drawn = tio.Pad(tuple(beyond), padding_mode=lowest[name], include=[name], copy=False)(drawn)
        return drawn


def _holds_known(label: torch.Tensor, start: np.ndarray, patch: np.ndarray) -> bool:
    window = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, patch, strict=True))
    return bool((label[window] != UNKNOWN_LABEL).any())


def foreground_voxels(label: torch.Tensor) -> list[torch.Tensor]:
    """Flat (row-major) indices of the voxels of each foreground class present, classes in ascending order
    (UNKNOWN_LABEL, not annotated, is no class).

    One pass over the volume and one over its foreground (not `unique` + a `nonzero` per class over the whole
    volume, which took seconds per case at a CT's size); the same voxels in the same order as before.
    """
    flat = label.reshape(-1)
    where = torch.nonzero((flat != 0) & (flat != UNKNOWN_LABEL)).squeeze(1)
    values = flat[where].long()
    present = torch.bincount(values).nonzero().squeeze(1).tolist() if len(values) else []
    return [where[values == c] for c in present]
