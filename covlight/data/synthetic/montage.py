"""A PNG montage of one phantom (the README's picture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covlight.data.synthetic.scan import Phantom


def save_montage(phantom: Phantom, path: Path, title: str = "") -> Path:
    """Five axial slices and one coronal slice in the [-1250, 250] HU window with label contours, shown the
    radiological way (patient's right on the viewer's left, anterior up)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone
    from matplotlib.lines import Line2D

    image, label, (sx, sy, sz) = phantom.image_hu, phantom.label, phantom.spacing
    lung_z = np.flatnonzero(np.isin(label, (1, 2, 3)).any(axis=(0, 1)))
    levels = [int(lung_z[0] + f * (lung_z[-1] - lung_z[0])) for f in (0.9, 0.72, 0.55, 0.38, 0.18)]
    column = int(np.argwhere(label > 0)[:, 1].mean())
    colours = {1: "#33b5ff", 2: "#ffb000", 3: "#ff2d2d"}
    fig = Figure(figsize=(12, 8.4), facecolor="black")
    axes = fig.subplots(2, 3)
    views = [(image[:, :, k], label[:, :, k], sy / sx, f"axial z={k}") for k in levels]
    views.append((image[:, column, :], label[:, column, :], sz / sx, f"coronal y={column}"))
    for ax, (img, lab, aspect, name) in zip(axes.ravel(), views, strict=True):
        # (x, second axis) -> rows top-down = second axis descending, columns = x descending (radiological)
        img, lab = img.T[::-1, ::-1], lab.T[::-1, ::-1]
        ax.imshow(img, cmap="gray", vmin=-1250, vmax=250, aspect=aspect, interpolation="bilinear")
        for value, colour in colours.items():
            if (lab == value).any():
                ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=0.9)
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
    handles = [Line2D([], [], color=c, label=n) for n, c in zip(("left lung", "right lung", "infection"),
                                                                     colours.values(), strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white")
    fig.suptitle(title or "phantom", color="white")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, facecolor="black", pil_kwargs={"optimize": True})
    return path
