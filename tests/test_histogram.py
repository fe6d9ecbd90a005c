"""Histogram standardisation: the mapping against an independent reference, invariance to a scanner's linear
intensity change, and the data module learning it from the training scans and saving it for prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covlight.data.canonical import read_canonical
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.histogram import PERCENTILES, landmarks_of, learn_standard_landmarks, standardise
from covlight.data.options import Preprocessing, Sampling, Validation
from covlight.splits import COVID, Split


def scan(seed: int) -> np.ndarray:
    """Air around a body of soft tissue with darker lungs: a three-mode histogram in 0..255."""
    rng = np.random.default_rng(seed)
    image = rng.normal(10, 3, (40, 40, 12))
    image[5:35, 5:35] = rng.normal(150, 12, (30, 30, 12))
    image[10:20, 10:30] = rng.normal(60, 8, (10, 20, 12))
    return image.astype(np.float32)


def test_landmarks_are_percentiles_of_the_voxels_above_the_mean():
    image = scan(0)
    body = image[image > image.mean()]
    np.testing.assert_allclose(landmarks_of(image), [np.percentile(body, p) for p in PERCENTILES], rtol=1e-6)


def test_mapping_matches_piecewise_linear_interpolation():
    image = scan(1)
    standard = np.linspace(0, 255, len(PERCENTILES)) ** 1.1 / 255**0.1
    result = standardise(torch.from_numpy(image), standard).numpy()
    marks = landmarks_of(image)
    inside = (image >= marks[0]) & (image <= marks[-1])
    np.testing.assert_allclose(result[inside], np.interp(image[inside], marks, standard), atol=1e-3)
    below = image < marks[0]  # extended linearly with the first segment's slope
    slope = (standard[1] - standard[0]) / (marks[1] - marks[0])
    np.testing.assert_allclose(result[below], standard[0] + (image[below] - marks[0]) * slope, atol=1e-3)


def test_a_linear_intensity_change_is_undone():
    """Two scanners: one scan, its intensities scaled and shifted. Standardised, they agree."""
    image = scan(2)
    other = 0.7 * image + 25.0
    standard = learn_standard_landmarks([scan(3), scan(4)])
    assert standard[0] == pytest.approx(0.0) and standard[-1] == pytest.approx(255.0)
    a = standardise(torch.from_numpy(image), standard)
    b = standardise(torch.from_numpy(other), standard)
    assert float((a - b).abs().max()) < 1e-2
    assert float((torch.from_numpy(image) - torch.from_numpy(other)).abs().mean()) > 10  # it was a real change


def test_data_module_learns_landmarks_and_saves_them(phantom_root):
    train = ["coronacases_001", "coronacases_002"]
    kwargs = dict(root=str(phantom_root), split=Split(train={COVID: train}, val={}, test={COVID: ["coronacases_003"]}),
                  label_values=[0, 1, 2], spatial_dims=2, patch_size=[32, 32, 1], batch_size=2,
                  sampling=Sampling(batches_per_epoch=1, samples_per_volume=1, patch_buffer=1, num_workers=0),
                  validation=Validation(patches_per_case=1))
    plain = SegmentationDataModule(**kwargs)
    standardised = SegmentationDataModule(**kwargs, preprocessing=Preprocessing(histogram_standardisation=True))
    for datamodule in (plain, standardised):
        datamodule.setup("fit")
    assert plain.preprocessing_state()["histogram_landmarks"] is None
    expected = learn_standard_landmarks(read_canonical(phantom_root / COVID / "images" / f"{c}.nii.gz")[0]
                                        for c in train)
    assert standardised.preprocessing_state()["histogram_landmarks"] == pytest.approx(expected)
    plain_case, standardised_case = next(iter(plain.test_dataloader())), next(iter(standardised.test_dataloader()))
    assert not torch.equal(plain_case["image"], standardised_case["image"])
    assert next(iter(standardised.train_dataloader()))["image"].shape == (2, 1, 32, 32, 1)
