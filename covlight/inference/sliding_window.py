"""Whole-volume prediction with overlapping patches, nnU-Net v2 style.

Windows are placed as nnU-Net places them (evenly spread, the first at 0 and the last flush with the border),
each window's logits are weighted by a Gaussian importance map, and the weighted logits are summed and divided
by the summed weights. As in nnU-Net v2, logits (not probabilities) are averaged, over windows and over mirror
flips, and the softmax is taken once at the end.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm


def sliding_window_steps(
    image_size: Sequence[int], patch_size: Sequence[int], overlap: float
) -> list[list[int]]:
    """Window start positions per axis (nnU-Net's `compute_steps_for_sliding_window`).

    The target step is `patch * (1 - overlap)` voxels (at least 1, so a patch of 1 visits every slice once);
    the number of windows is the fewest that reach the border with that step, and they are then spread evenly
    so the first starts at 0 and the last ends at the border. Requires image_size >= patch_size.
    """
    steps = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}")
        target = max(patch * (1 - overlap), 1.0)
        n = math.ceil((size - patch) / target) + 1
        spacing = (size - patch) / (n - 1) if n > 1 else 0.0
        steps.append([round(spacing * i) for i in range(n)])
    return steps


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 0.125, device: torch.device | str | None = None
) -> Tensor:
    """A Gaussian window weight of shape `patch_size`, maximum 1, sigma = `sigma_scale` * patch per axis.

    Centred at (patch - 1) / 2, so the map is mirror-symmetric (nnU-Net centres it at patch // 2, half a voxel
    off for even sizes). Zeros (underflow) are raised to the smallest non-zero weight, as in nnU-Net, so every
    voxel covered by a window gets a positive weight.
    """
    weights = torch.ones((), device=device)
    for size in patch_size:
        x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
        axis = torch.exp(-(x**2) / (2 * (sigma_scale * size) ** 2)).float()
        weights = weights.unsqueeze(-1) * axis
    weights = weights / weights.max()
    return weights.clamp_min(weights[weights > 0].min())


@torch.no_grad()
def sliding_window_predict(
    net: Callable[[Tensor], Tensor],
    image: Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 1,
    gaussian_sigma_scale: float = 0.125,
    net_spatial_dims: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Softmax probabilities (K, *spatial), float32 on `image`'s device, for an image (C, *spatial).

    `net` maps (N, C, *patch) to logits (N, K, *patch) and must live on `image`'s device; it is called as is
    (put it in eval mode first, or leave dropout on for MC dropout). A deep-supervision net in training mode
    returns a list: its first, full-resolution output is used.

    `overlap` is the fraction of the patch shared by neighbouring windows (nnU-Net's tile step 0.5 = overlap
    0.5). `mirror_axes` are spatial axes (0 = first spatial axis) for test-time mirroring: the logits are
    averaged over every combination of flips along them. An image smaller than the patch along an axis is
    padded on both sides with its per-channel minimum (for CT, air, whatever the intensity normalisation; zero
    would be mid-grey after z-scoring), and the output is cropped back.

    A 2D net on a 3D volume: `net_spatial_dims=2` with `patch_size=[px, py, 1]`. The trailing patch axes of
    size 1 are dropped before calling the net (N, C, px, py) and restored after, so windows are single slices
    and `batch_size` slices go through the net at a time. `net_spatial_dims` defaults to len(patch_size).
    """
    patch_size = tuple(int(p) for p in patch_size)
    dims = len(patch_size)
    net_dims = dims if net_spatial_dims is None else net_spatial_dims
    if image.ndim != dims + 1:
        raise ValueError(
            f"image of shape {tuple(image.shape)}: expected (C, *spatial) with {dims} spatial axes"
        )
    if any(p < 1 for p in patch_size):
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if not 1 <= net_dims <= dims or any(p != 1 for p in patch_size[net_dims:]):
        raise ValueError(
            f"net_spatial_dims={net_spatial_dims} with patch_size={patch_size}: a net with fewer spatial axes "
            "than the image needs a patch of size 1 along each trailing axis"
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1 or gaussian_sigma_scale <= 0:
        raise ValueError(
            f"batch_size must be >= 1 and gaussian_sigma_scale > 0, got {batch_size}, {gaussian_sigma_scale}"
        )
    if any(not 0 <= a < dims for a in mirror_axes) or len(set(mirror_axes)) != len(mirror_axes):
        raise ValueError(
            f"mirror_axes must be distinct spatial axes in 0..{dims - 1}, got {tuple(mirror_axes)}"
        )
    # Flipping a patch axis of size 1 changes nothing: skip it rather than run the net twice.
    flips = [a + 2 for a in mirror_axes if patch_size[a] > 1]
    flip_sets = [c for r in range(len(flips) + 1) for c in itertools.combinations(flips, r)]

    spatial = tuple(image.shape[1:])
    pad = [max(p - s, 0) for s, p in zip(spatial, patch_size, strict=True)]
    if any(pad):
        # F.pad takes (before, after) pairs from the last axis backwards.
        widths = [w for d in reversed(pad) for w in (d // 2, d - d // 2)]
        floor = image.flatten(1).amin(dim=1)
        image = torch.stack([F.pad(c, widths, value=float(v)) for c, v in zip(image, floor, strict=True)])
    padded = tuple(image.shape[1:])

    def predict(batch: Tensor) -> Tensor:
        out = net(batch.reshape(batch.shape[: 2 + net_dims]))
        out = out[0] if isinstance(out, (list, tuple)) else out
        if tuple(out.shape[2:]) != patch_size[:net_dims] or out.shape[0] != batch.shape[0]:
            raise ValueError(
                f"net mapped a batch {tuple(batch.shape)} to {tuple(out.shape)}: expected (N, K, *patch)"
            )
        return out.reshape(out.shape + patch_size[net_dims:]).float()

    weight = gaussian_importance_map(patch_size, gaussian_sigma_scale, image.device)
    starts = list(itertools.product(*sliding_window_steps(padded, patch_size, overlap)))
    logits = None
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=image.device)
    for first in tqdm(range(0, len(starts), batch_size), disable=not progress, desc="sliding window"):
        windows = [
            tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
            for start in starts[first : first + batch_size]
        ]
        batch = torch.stack([image[(slice(None), *w)] for w in windows])
        out = sum(predict(batch.flip(f)).flip(f) for f in flip_sets) / len(flip_sets)
        if logits is None:
            logits = torch.zeros((out.shape[1], *padded), dtype=torch.float32, device=image.device)
        for window, window_logits in zip(windows, out, strict=True):
            logits[(slice(None), *window)] += window_logits * weight
            weight_sum[window] += weight

    # In place, to hold no second copy of the K-channel volume.
    logits /= weight_sum
    logits -= logits.amax(dim=0, keepdim=True)
    probs = logits.exp_()
    probs /= probs.sum(dim=0, keepdim=True)
    crop = tuple(slice(d // 2, d // 2 + s) for d, s in zip(pad, spatial, strict=True))
    return probs[(slice(None), *crop)]
