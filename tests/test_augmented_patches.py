"""Augmented training patches hold no padding except where the case itself ends (issue 19, part 1): the sampler
draws each patch with the context its rotation and scaling read from, and the affine keeps only the centre."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from covlight.data.options import Augmentation
from covlight.data.sampling import ForegroundSampler
from covlight.data.transforms import AffineRange, affine_range, augmentation_preset

CASE, BEYOND, BLANK = 1, 2, 0  # the `where` map: a voxel of the case, beyond the case's end, padded by the affine


def case(shape, spacing) -> tio.Subject:
    """A case whose `where` map is CASE everywhere; its label a block in the middle."""
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    z = slice(shape[2] // 3, 2 * shape[2] // 3) if shape[2] > 1 else slice(None)
    label[0, shape[0] // 3:2 * shape[0] // 3, shape[1] // 3:2 * shape[1] // 3, z] = 1
    affine = np.diag([*spacing, 1.0])
    return tio.Subject(image=tio.ScalarImage(tensor=torch.rand((1, *shape)) + 1, affine=affine),
                       label=tio.LabelMap(tensor=label, affine=affine),
                       where=tio.LabelMap(tensor=torch.full((1, *shape), CASE, dtype=torch.uint8), affine=affine))


def where_counts(spatial_dims, shape, spacing, patch_size, scales, foreground_fraction, draws=40):
    """Counts of CASE, BEYOND and BLANK voxels in `draws` augmented patches (every patch rotated and scaled)."""
    options = Augmentation(affine_probability=1.0, scales=scales, degrees=15.0, gamma_probability=0,
                           noise_probability=0, blur_probability=0, low_resolution_probability=0)
    sampler = ForegroundSampler(patch_size, foreground_fraction, affine=affine_range(spatial_dims, options))
    augmentation = augmentation_preset(spatial_dims, options, patch_size)
    torch.manual_seed(0)
    counts = np.zeros(3, dtype=int)
    for drawn in sampler(case(shape, spacing), draws):
        where = drawn["where"].data
        where[where == BLANK] = BEYOND  # the sampler padded these: beyond the end of the case
        patch = augmentation(drawn)
        assert tuple(patch.spatial_shape) == tuple(patch_size)
        counts += np.bincount(patch["where"].data.flatten().long().numpy(), minlength=3)
    return {"case": counts[CASE], "beyond": counts[BEYOND], "blank": counts[BLANK]}


# spatial dims, case shape, spacing (anisotropic, as after resampling), patch size; the context of a patch centred
# in the label's block (the middle third) lies inside the case
CASES = {
    "2d": (2, (150, 130, 1), (0.6, 0.9, 5.0), (40, 48, 1)),
    "3d": (3, (72, 64, 36), (0.8, 0.8, 2.5), (32, 24, 12)),
}


@pytest.mark.parametrize("scales", [[1.0, 1.0], [0.85, 0.85]])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_rotated_and_scaled_patches_have_no_blank_corners(kind, scales):
    """Foreground patches lie deep inside the case, uniform ones anywhere: no voxel is ever padding of the affine,
    while the ends of the case (BEYOND) do show in the patches near them."""
    dims, shape, spacing, patch_size = CASES[kind]
    inside = where_counts(dims, shape, spacing, patch_size, scales, foreground_fraction=1.0)
    assert inside["blank"] == 0 and inside["beyond"] == 0 and inside["case"] > 0
    anywhere = where_counts(dims, shape, spacing, patch_size, scales, foreground_fraction=0.0)
    assert anywhere["blank"] == 0 and anywhere["beyond"] > 0


def test_foreground_patches_stay_centred_on_their_voxel():
    """Drawn with context and cropped, a foreground patch is the patch the sampler drew without augmentation."""
    subject = case((64, 64, 1), (1.0, 1.0, 1.0))
    subject["label"].data[:] = 0
    subject["label"].data[0, 5, 50, 0] = 1
    options = Augmentation(affine_probability=1.0, degrees=5.0, scales=[1.0, 1.0])  # moves no voxel this near the centre
    sampler = ForegroundSampler((16, 16, 1), 1.0, affine=affine_range(2, options))
    for drawn in sampler(subject, 5):
        patch = tio.Compose([augmentation_preset(2, options, (16, 16, 1))[0]])(drawn)
        label = patch["label"].data[0, :, :, 0]
        assert label.sum() == 1 and label[5, 8] == 1  # at the case's edge: clipped, as without context
    subject["label"].data[0, 30, 20, 0], subject["label"].data[0, 5, 50, 0] = 1, 0
    for drawn in sampler(subject, 5):
        patch = tio.Compose([augmentation_preset(2, options, (16, 16, 1))[0]])(drawn)
        assert patch["label"].data[0, 8, 8, 0] == 1


def test_the_drawn_size_covers_the_largest_affine_and_nothing_when_there_is_none():
    assert AffineRange((0.0, 0.0, 0.0), 1.0).drawn_size((40, 48, 1), (0.6, 0.9, 5.0)) == (40, 48, 1)
    # a square patch rotated by 45 degrees needs its diagonal; scaled by 1/2, twice that
    assert AffineRange((0.0, 0.0, 45.0), 1.0).drawn_size((11, 11, 1), (1.0, 1.0, 1.0)) == (17, 17, 1)
    assert AffineRange((0.0, 0.0, 45.0), 0.5).drawn_size((11, 11, 1), (1.0, 1.0, 1.0)) == (31, 31, 1)
    assert affine_range(3, Augmentation(affine_probability=0.0)) is None


def test_only_patches_that_get_the_affine_are_drawn_with_context():
    options = Augmentation(affine_probability=0.25)
    sampler = ForegroundSampler((16, 16, 1), 0.0, affine=affine_range(2, options))
    torch.manual_seed(0)
    sizes = [tuple(drawn.spatial_shape) for drawn in sampler(case((64, 64, 1), (1.0, 1.0, 1.0)), 400)]
    assert 0.2 < sum(size != (16, 16, 1) for size in sizes) / len(sizes) < 0.3
