"""The data module's own transforms and the TorchIO ones it uses: label remapping and padding give the tensors of
covlight's former ToClassIndices and PadToAtLeast; the intensity augmentations are TorchIO random transforms, so
what they drew is in the subject's history and can be replayed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from covlight.data.canonical import LABELS
from covlight.data.options import Augmentation
from covlight.data.transforms import (
    Contrast,
    HistogramWarp,
    RandomContrast,
    RandomHistogramWarp,
    augmentation_preset,
    class_indices,
    pad_to_at_least,
)


def former_class_indices(label: torch.Tensor, label_values: list[int]) -> torch.Tensor:
    """covlight's former ToClassIndices: a lookup table, values the subtask ignores to 0, as uint8."""
    lut = torch.zeros(max(LABELS.values()) + 1, dtype=torch.int64)
    for index, value in enumerate(label_values):
        lut[value] = index
    return lut[label.long()].to(torch.uint8)


def former_padding(data: torch.Tensor, size, fill: float) -> torch.Tensor:
    """covlight's former PadToAtLeast: the missing voxels split as floor before, ceil after, with `fill`."""
    missing = np.maximum(np.asarray(size) - np.asarray(data.shape[1:]), 0)
    before, after = missing // 2, missing - missing // 2
    padding = [int(v) for pair in zip(before, after, strict=True) for v in pair]
    return torch.nn.functional.pad(data, padding[4:6] + padding[2:4] + padding[0:2], value=fill)


def case(shape, seed: int = 0) -> tio.Subject:
    """A z-scored image (negative values) and a label holding every canonical value."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, *shape, generator=generator)
    label = torch.randint(0, max(LABELS.values()) + 1, (1, *shape), generator=generator, dtype=torch.uint8)
    label[0, 0, 0, 0] = 0
    return tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label))


@pytest.mark.parametrize("label_values", [[0, 1, 2], [0, 3], [0, 1, 2, 3]])
def test_class_indices_are_the_former_lookup(label_values):
    subject = case((9, 7, 5))
    mapped = tio.Compose(class_indices(label_values))(subject)["label"].data
    assert torch.equal(mapped.to(torch.uint8), former_class_indices(subject["label"].data, label_values))
    assert set(mapped.unique().tolist()) == set(range(len(label_values)))
    assert (class_indices([0, 1, 2, 3]) == []), "a subtask of every label needs no remapping"


@pytest.mark.parametrize(("shape", "size"), [((10, 6, 1), (16, 16, 1)),  # two axes short, by even amounts
                                             ((20, 8, 3), (16, 12, 7)),  # one axis longer: never cropped
                                             ((16, 16, 4), (8, 8, 2))])  # nothing short: unchanged
def test_padding_is_the_former_padding(shape, size):
    subject = case(shape, seed=1)
    padded = pad_to_at_least(size)(subject)
    image, label = subject["image"].data, subject["label"].data
    assert torch.equal(padded["image"].data, former_padding(image, size, float(image.min())))
    assert torch.equal(padded["label"].data, former_padding(label, size, 0))
    assert padded.spatial_shape == tuple(max(s, n) for s, n in zip(shape, size, strict=True))


def test_an_odd_padding_puts_the_extra_voxel_first():
    """The one difference from the former padding: TorchIO's rule puts an odd amount's extra voxel before."""
    subject = case((11, 16, 1), seed=2)
    padded = pad_to_at_least((16, 16, 1))(subject)["image"].data
    image = subject["image"].data
    assert torch.equal(padded[:, 3:14], image) and (padded[:, :3] == image.min()).all()
    assert (padded[:, 14:] == image.min()).all()


@pytest.mark.parametrize(("random", "fixed", "argument"), [(RandomContrast((0.5, 1.5), p=1), Contrast, "factor"),
                                                           (RandomHistogramWarp(0.7, p=1), HistogramWarp, "factors")])
def test_intensity_augmentations_are_in_the_history_and_replay(random, fixed, argument):
    torch.manual_seed(0)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 16, 16, 4)))
    augmented = random(subject)
    (applied,) = augmented.history
    assert isinstance(applied, fixed) and "image" in getattr(applied, argument)
    replayed = augmented.get_composed_history()(subject)
    assert torch.equal(replayed["image"].data, augmented["image"].data)
    assert not torch.allclose(augmented["image"].data, subject["image"].data)


def test_the_preset_records_every_transform_it_applied():
    torch.manual_seed(0)
    options = Augmentation(affine_probability=1, gamma_probability=1, noise_probability=1, blur_probability=1,
                           low_resolution_probability=1, bias_field_probability=1, contrast_probability=1,
                           histogram_probability=1)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 16, 16, 1)))
    augmented = augmentation_preset(2, options, (12, 12, 1))(subject)
    assert [type(t).__name__ for t in augmented.history] == [
        "CentredAffine", "Resample", "Resample", "Blur", "Noise", "Gamma", "BiasField", "Contrast", "HistogramWarp"]
    assert augmented.spatial_shape == (12, 12, 1)  # the affine resamples the centre: the patch the net gets
    replayed = augmented.get_composed_history()(subject)
    assert torch.allclose(replayed["image"].data, augmented["image"].data)
