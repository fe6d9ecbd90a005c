"""Turn the inputs of the metric functions (numpy arrays or torch tensors) into what the algorithms work on."""

from __future__ import annotations

import math

import numpy as np

from covlight.metrics.backend import is_tensor, ops_for


def as_masks(pred, gt):
    """Two bool masks of one shape: numpy arrays, or torch tensors on one device when either input is a tensor on
    an accelerator (tensors on the CPU are scored as numpy views of their memory: `host_views`).

    Anything non-zero is foreground. A numpy array paired with a tensor is moved to the tensor's device.
    """
    pred, gt = host_views(pred, gt)
    if is_tensor(pred) or is_tensor(gt):
        import torch

        device = (gt if is_tensor(gt) else pred).device
        pred, gt = (a if is_tensor(a) else torch.from_numpy(np.ascontiguousarray(a)) for a in (pred, gt))
        pred, gt = pred.to(device), gt.to(device)
    else:
        pred, gt = np.asarray(pred), np.asarray(gt)
    pred, gt = _as_bool(pred), _as_bool(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, not {pred.ndim}D (shape {tuple(pred.shape)})")
    return pred, gt


def host_views(pred, gt):
    """Tensors on the CPU as numpy arrays sharing their memory (no copy): on a CPU numpy scores faster than torch,
    whose per-operation overhead and thread pool dominate the many small operations of surface scoring (the NSD
    of a noisy 120x120 slice: 0.2 s in numpy, 1.0 s in torch on one thread, 21 s on two threads of a loaded
    machine; a 435x430 one took over 10 minutes). The torch path is for accelerators."""
    if all(not is_tensor(a) or a.device.type == "cpu" for a in (pred, gt)):
        return tuple(a.detach().numpy() if is_tensor(a) else a for a in (pred, gt))
    return pred, gt


def _as_bool(array):
    if is_tensor(array):
        import torch

        return array if array.dtype == torch.bool else array != 0
    return array if array.dtype == np.bool_ else array != 0


def as_spacing(spacing_mm, ndim: int) -> tuple[float, ...]:
    """Spacing in the array's axis order as float64 values (a float32 header zoom keeps its exact value)."""
    spacing = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64)))
    if len(spacing) != ndim:
        raise ValueError(f"spacing_mm {spacing_mm} has {len(spacing)} values for a {ndim}D mask")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be positive and finite, got {spacing_mm}")
    return spacing


def bounding_box(mask) -> tuple[tuple[int, int], ...] | None:
    """Inclusive (first, last) index of the foreground on every axis, or None for an empty mask."""
    ops = ops_for(mask)
    last = mask.ndim - 1
    # two passes over the volume: a projection along the last axis gives the other axes' extents
    plane = ops.any(mask, (last,))
    line = ops.any(mask, tuple(range(last)))
    bounds = []
    for axis in range(last):
        others = tuple(d for d in range(last) if d != axis)
        present = ops.to_numpy(ops.flatnonzero(ops.any(plane, others) if others else plane))
        if present.size == 0:
            return None
        bounds.append((int(present[0]), int(present[-1])))
    present = ops.to_numpy(ops.flatnonzero(line))
    bounds.append((int(present[0]), int(present[-1])))
    return tuple(bounds)


def union_box(first, second) -> tuple[tuple[int, int], ...]:
    """The bounding box of two bounding boxes."""
    return tuple((min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(first, second, strict=True))
