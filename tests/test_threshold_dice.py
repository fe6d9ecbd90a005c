"""The COVID-SemiSeg papers' threshold-averaged Dice against a direct loop over thresholds (numpy, float64)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covlight.metrics.threshold_dice import dice_per_threshold, threshold_averaged_dice


def reference(probability: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The definition, one threshold at a time: t = 1, 1 - 1/255, ..., 0 (the papers' order), p >= t."""
    if probability.shape != mask.shape:
        p = torch.from_numpy(probability.astype(np.float64))[None, None]
        probability = F.interpolate(p, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    p = (probability - probability.min()) / (probability.max() - probability.min())
    g = mask > 0
    scores = []
    for t in np.linspace(1, 0, 256):
        predicted = p >= t
        tp = np.logical_and(predicted, g).sum()
        scores.append(0.0 if tp == 0 else 2 * tp / (predicted.sum() + g.sum()))
    return np.array(scores[::-1])


def test_each_threshold_equals_the_definition():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 52), np.uint8)
    mask[10:25, 8:30] = 255
    # a probability quantised to the thresholds' own grid puts pixels exactly on a threshold: p >= t must hold there
    probability = np.round(np.clip(mask / 255 * 0.6 + rng.random(mask.shape) * 0.5, 0, 1) * 255) / 255
    probability[0, 0], probability[0, 1] = 0.0, 1.0
    ours = dice_per_threshold(probability, mask).numpy()
    np.testing.assert_allclose(ours, reference(probability, mask), rtol=0, atol=1e-12)


def test_resized_to_the_mask_and_averaged_over_images():
    rng = np.random.default_rng(1)
    masks = [(rng.random((30, 33)) > 0.7).astype(np.uint8) for _ in range(3)]
    probabilities = [rng.random((16, 20)) for _ in range(3)]
    expected = np.mean([reference(p, m) for p, m in zip(probabilities, masks, strict=True)], axis=0).mean()
    assert threshold_averaged_dice(probabilities, masks) == pytest.approx(expected, abs=1e-12)


def test_no_true_positive_scores_zero_and_a_perfect_map_scores_one_at_every_threshold_above_zero():
    mask = np.zeros((8, 8))
    mask[2:4, 2:4] = 1
    perfect = dice_per_threshold(mask.astype(float), mask).numpy()
    assert perfect[1:].tolist() == [1.0] * 255  # t = 0 marks every pixel
    assert dice_per_threshold(1 - mask, mask).numpy()[1:].max() == 0.0
    assert dice_per_threshold(np.zeros((8, 8)), np.zeros((8, 8))).max() == 0.0
