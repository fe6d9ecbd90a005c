"""The trivial threshold baseline: right on a simple volume, and failing for the intended reasons on phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from covlight.baseline import threshold_baseline
from covlight.benchmark import COVID_CASES
from covlight.data.canonical import hu_to_0_255
from covlight.data.synthetic import make_phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float("nan") if total == 0 else 2.0 * (a & b).sum() / total


@pytest.fixture(scope="module")
def demo_cases():
    """Four demo-size phantoms with the baseline's prediction."""
    cases = []
    for case in COVID_CASES[:4]:
        phantom = make_phantom(case, 0)
        cases.append((phantom, threshold_baseline(hu_to_0_255(phantom.image_hu), phantom.spacing)))
    return cases


def test_simple_volume():
    hu = np.full((40, 30, 12), -1000.0, np.float32)
    hu[4:36, 4:26] = 40  # body
    hu[6:18, 8:22] = -850  # left lung (low x)
    hu[22:34, 8:22] = -850  # right lung
    hu[10:14, 12:16, 4:8] = -500  # ground-glass inside the left lung
    hu[28:31, 12:15, 4:8] = 30  # a vessel inside the right lung
    label = threshold_baseline(hu_to_0_255(hu), (3.0, 3.0, 5.0))
    assert label.dtype == np.uint8 and label.shape == hu.shape
    assert (label[6:18, 8:22] > 0).all() and set(np.unique(label[6:18, 8:22])) == {1, 3}
    assert (label[10:14, 12:16, 4:8] == 3).all() and (label[22:34, 8:22] == 2).all()  # vessel filled as lung
    assert (label[:4] == 0).all() and (label[18:22] == 0).all()  # outside air and the mediastinum


def test_baseline_fails_meaningfully_on_demo_phantoms(demo_cases):
    scores = np.array([[dice(pred == k, p.label == k) for k in (1, 2, 3)] for p, pred in demo_cases])
    left, right, infection = np.nanmean(scores, axis=0)
    assert infection < 0.5 and min(left, right) < 0.9
    # ... yet it is an honest baseline: it finds the lungs as a whole.
    union = [dice(pred > 0, p.label > 0) for p, pred in demo_cases]
    assert min(union) > 0.85


def test_baseline_failure_modes(demo_cases):
    """Each weakness the phantoms are built to expose shows up in at least one case."""
    trachea = split = vessels = consolidation = 0
    for phantom, pred in demo_cases:
        top = phantom.label.shape[2] - 1
        trachea += int(((pred[:, :, top] > 0) & (phantom.label[:, :, top] == 0)).sum())
        split += int(((pred == 1) & (phantom.label == 2)).sum() + ((pred == 2) & (phantom.label == 1)).sum())
        lung = np.isin(phantom.label, (1, 2))
        vessels += int((lung & (pred == 3) & (phantom.image_hu > -400)).sum())
        consolidation += int(((phantom.label == 3) & (phantom.image_hu > -100) & (pred != 3)).sum())
    assert trachea > 0, "the trachea should be taken for lung"
    assert split > 0, "the midline split should cut a lung"
    assert vessels > 0, "vessel borders should be taken for infection"
    assert consolidation > 0, "consolidation should be missed"
