"""Whole-volume prediction: Gaussian-weighted sliding window with test-time mirroring."""

from covlight.inference.sliding_window import (
    gaussian_importance_map,
    sliding_window_predict,
    sliding_window_steps,
)

__all__ = ["gaussian_importance_map", "sliding_window_predict", "sliding_window_steps"]
