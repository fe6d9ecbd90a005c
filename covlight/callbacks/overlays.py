"""Prediction overlays: an axial slice with the ground truth (solid) and prediction (dashed) contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {1: "#1f77b4", 2: "#2ca02c", 3: "#d62728"}
NAMES = {1: "left lung", 2: "right lung", 3: "infection"}


def busiest_slice(truth: np.ndarray) -> int:
    """The axial slice (z index) with the most annotated voxels, preferring infection when there is some."""
    target = truth == 3 if (truth == 3).any() else truth > 0
    counts = target.reshape(-1, target.shape[2]).sum(0)
    return int(np.argmax(counts))


def save_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, path: Path, title: str,
                 label_values=(1, 2, 3)) -> Path:
    """Write a PNG of the busiest axial slice (radiological view: patient's right on the image's left),
    contouring only the given canonical label values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    z = busiest_slice(truth)
    # arrays are (x, y, z) in RAS+ (x towards the patient's right, y anterior): rows = y with anterior up,
    # columns = x reversed so the patient's right is on the image's left
    view = lambda a: a[:, :, z].T[::-1, ::-1]  # noqa: E731
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.imshow(view(image), cmap="gray", interpolation="nearest")
    handles = []
    for value, colour in ((v, COLOURS[v]) for v in label_values if v in COLOURS):
        for mask, style in ((truth == value, "solid"), (prediction == value, "dashed")):
            if view(mask).any():
                axis.contour(view(mask).astype(float), levels=[0.5], colors=colour, linestyles=style,
                             linewidths=1.2)
        if (truth == value).any() or (prediction == value).any():
            handles.append(Line2D([], [], color=colour, label=NAMES[value]))
    handles += [Line2D([], [], color="k", label="truth"), Line2D([], [], color="k", ls="--", label="prediction")]
    axis.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    axis.set_title(f"{title} (z = {z})", fontsize=9)
    axis.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path
