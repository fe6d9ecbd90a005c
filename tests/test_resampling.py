"""`data.preprocessing.resampling=nnunet_v1` (covlight.data.resampling) against nnU-Net v1's own functions (the
test-only reference nnunet==1.7.1): images, labels and the probabilities' way back, on anisotropic and isotropic
grids; the resampled image keeps its place in the world; the option is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from covlight.data.options import Preprocessing
from covlight.data.resampling import (
    NNUNetV1Resample,
    probabilities_on_grid,
    v1_resize,
    v1_separate_axis,
    v1_shape,
)
from covlight.errors import ConfigError
from tests.helpers import nnunet_v1 as v1

# (scan spacing, target spacing, scan shape): which axis v1 resamples with order 0, and why
GRIDS = {
    "anisotropic scan, coarse z": ((0.7, 0.7, 5.0), (0.78, 0.78, 2.5), (40, 36, 9)),
    "near-isotropic both": ((0.9, 0.8, 1.1), (0.78, 0.78, 0.8), (30, 28, 20)),
    "anisotropic target only": ((0.7, 0.7, 1.5), (0.7, 0.7, 5.0), (30, 28, 20)),
    "halving, ties in the order-0 rounding": ((1.0, 1.0, 4.0), (1.0, 1.0, 8.0), (16, 16, 9)),
    "two coarse axes: resampled jointly": ((0.24, 1.25, 1.25), (0.5, 1.0, 1.0), (30, 12, 10)),
    "coarse x": ((4.0, 0.8, 0.8), (2.0, 0.8, 0.8), (7, 20, 22)),
}


@pytest.mark.parametrize("grid", list(GRIDS), ids=list(GRIDS))
def test_images_and_labels_equal_v1s_resample_patient(grid):
    preprocessing = v1.reference("nnunet.preprocessing.preprocessing")
    spacing, target, shape = GRIDS[grid]
    rng = np.random.default_rng(0)
    image = rng.uniform(-1000, 240, size=shape).astype(np.float32)
    labels = rng.integers(0, 4, size=shape).astype(np.float32)
    labels[:, :, :2] = 255  # unannotated slices are one more value
    expected_image, expected_labels = preprocessing.resample_patient(
        image[None], labels[None], np.array(spacing), np.array(target), 3, 1, force_separate_z=None, order_z_data=0,
        order_z_seg=0)
    new_shape = v1_shape(shape, spacing, target)
    axis = v1_separate_axis(spacing, target)
    got_image = v1_resize(image, new_shape, axis, is_label=False)
    got_labels = v1_resize(labels, new_shape, axis, is_label=True)
    assert got_image.shape == expected_image.shape[1:]
    assert np.abs(got_image - expected_image[0]).max() <= 1e-5
    assert np.array_equal(got_labels, expected_labels[0])


def test_the_order_0_axis_is_v1s():
    assert v1_separate_axis((0.7, 0.7, 5.0), (0.78, 0.78, 2.5)) == 2
    assert v1_separate_axis((0.7, 0.7, 1.5), (0.7, 0.7, 5.0)) == 2  # from the target
    assert v1_separate_axis((4.0, 0.8, 0.8), (2.0, 0.8, 0.8)) == 0
    assert v1_separate_axis((0.9, 0.8, 1.1), (0.78, 0.78, 0.8)) is None
    assert v1_separate_axis((0.24, 1.25, 1.25), (0.5, 1.0, 1.0)) is None


@pytest.mark.parametrize("grid", ["anisotropic scan, coarse z", "near-isotropic both", "coarse x"])
def test_probabilities_return_as_v1s_softmax(grid):
    """v1 returns the softmax to the scan's grid with order 1 (order 0 along the separate axis); covlight does the
    same in torch on the model's device."""
    preprocessing = v1.reference("nnunet.preprocessing.preprocessing")
    spacing, target, shape = GRIDS[grid]
    working = v1_shape(shape, spacing, target)
    rng = np.random.default_rng(1)
    probabilities = rng.random((4, *working)).astype(np.float32)
    probabilities /= probabilities.sum(0)
    axis = v1_separate_axis(spacing, target)
    expected = preprocessing.resample_data_or_seg(probabilities, np.array(shape), False,
                                                  None if axis is None else [axis], 1, axis is not None, order_z=0)
    got = probabilities_on_grid(torch.from_numpy(probabilities), shape, axis).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    assert np.array_equal(got.argmax(0), expected.argmax(0))


def test_the_resampled_image_keeps_its_place_in_the_world():
    """A bright block's centre in world coordinates (mm) is where it was, and the new voxel size is the old extent
    over the new shape; the label map follows the image."""
    shape, spacing = (40, 36, 9), (0.7, 0.7, 5.0)
    affine = np.array([[-0.7, 0, 0, 10.0], [0, -0.7, 0, -20.0], [0, 0, 5.0, 30.0], [0, 0, 0, 1]])
    data = np.zeros(shape, np.float32)
    data[10:20, 12:24, 3:6] = 100.0
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine),
                          label=tio.LabelMap(tensor=torch.from_numpy((data > 0).astype(np.int64))[None], affine=affine))
    resampled = NNUNetV1Resample((0.78, 0.78, 2.5))(subject)
    new_shape = v1_shape(shape, spacing, (0.78, 0.78, 2.5))
    assert resampled["image"].spatial_shape == new_shape == resampled["label"].spatial_shape
    assert np.allclose(np.abs(np.diag(resampled["image"].affine)[:3]),
                       np.asarray(shape) * np.asarray(spacing) / np.asarray(new_shape))

    def world_centre(image: tio.Image) -> np.ndarray:
        weights = image.data[0].numpy().astype(float)
        voxel = np.array([(weights * grid).sum() / weights.sum()
                          for grid in np.meshgrid(*map(np.arange, weights.shape), indexing="ij")])
        return image.affine[:3, :3] @ voxel + image.affine[:3, 3]

    before = world_centre(subject["image"])
    assert np.abs(world_centre(resampled["image"]) - before).max() < 0.05
    assert np.abs(world_centre(resampled["label"]) - before).max() < 0.4  # a nearest-z label: within half a voxel


def test_an_unknown_rule_is_refused():
    with pytest.raises(ConfigError, match="resampling"):
        Preprocessing(resampling="cubic")


@pytest.mark.parametrize(("option", "expected"), [("auto", None), ([6.0, 6.0, 12.0], (6.0, 6.0, 12.0))])
def test_a_2d_model_resamples_only_to_a_spacing_given_in_numbers(phantom_root, option, expected):
    """2D models work on native slices under `auto`; a spacing in numbers (a converted nnU-Net 2d model's) resamples
    the volume before slicing, in training and testing as covlight.predict does from the checkpoint."""
    from covlight.data.datamodule import SegmentationDataModule
    from covlight.splits import official_split

    datamodule = SegmentationDataModule(str(phantom_root), official_split("task1", "lung", 0), [0, 1, 2],
                                        spatial_dims=2, patch_size=[32, 32, 1], batch_size=2,
                                        preprocessing={"target_spacing": option, "resampling": "nnunet_v1"})
    datamodule.setup("fit")
    assert datamodule.target_spacing == expected
    assert datamodule.preprocessing_state()["target_spacing"] == (list(expected) if expected else None)
    record = datamodule.records["train"][0]
    case = datamodule.whole_cases([record])[0]
    assert tuple(case["image"].shape[1:]) == (v1_shape(record.shape, record.spacing, expected) if expected
                                              else record.shape)
