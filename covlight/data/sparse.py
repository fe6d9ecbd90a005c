"""Sparse annotations: which voxels of a training case are annotated, and the budget simulated from full labels.

A partially annotated case marks the voxels nobody drew with `UNKNOWN_LABEL` (255) in its canonical label file and
lists its annotated axial slices in `dataset.json` (`covlight.data.canonical`). For studies, the same state is
simulated from full labels (`data.sparse_annotation`, `covlight.data.options.SparseAnnotation`): `cases` training
cases keep a label and `slices_per_case` axial slices of each, chosen evenly through the subtask's structures,
at random, or where they hold the most foreground; everything else becomes UNKNOWN_LABEL when the case is loaded
(`HideUnannotated`, on the case's own grid before any resampling). The loss (`covlight.methods.losses`), the patch
sampler (`covlight.data.sampling`) and validation ignore UNKNOWN_LABEL voxels; a partial case is never a test case.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio

from covlight.benchmark import UNKNOWN_LABEL
from covlight.data.canonical import read_nifti
from covlight.data.options import SparseAnnotation

SUBJECT_KEY = "annotated_slices"  # a training subject's axial slices that keep their label (absent: all)


def case_rng(seed: int, dataset: str, case_id: str) -> np.random.Generator:
    """A generator of its own for each case: one case's slices do not change when other cases join the budget."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{dataset}/{case_id}".encode())])


def labelled_case_order(count: int, seed: int) -> list[int]:
    """The order in which training cases join the budget: a seeded permutation, so `cases=n` keeps the first n and
    the cases of a smaller budget are always among those of a larger one."""
    return np.random.default_rng([int(seed), 0x5EED]).permutation(count).tolist()


def choose_slices(foreground: np.ndarray, candidates: Sequence[int], k: int, strategy: str,
                  rng: np.random.Generator) -> tuple[int, ...]:
    """k of the `candidates` axial slices (sorted), or all of them when k is as many or more.

    `foreground`: the number of voxels of the subtask's structures on each axial slice. `evenly`: the slices that
    hold foreground cut into k runs of (nearly) equal count, the middle slice of each run (all candidates when fewer
    than k hold foreground); `random`: k candidates drawn without replacement; `most_foreground`: the k candidates
    with the most foreground voxels (ties: the lower slice).
    """
    candidates = np.asarray(sorted(int(z) for z in candidates))
    if k >= len(candidates):
        return tuple(int(z) for z in candidates)
    if strategy == "random":
        chosen = rng.choice(candidates, size=k, replace=False)
    elif strategy == "most_foreground":
        chosen = candidates[np.argsort(-foreground[candidates], kind="stable")[:k]]
    elif strategy == "evenly":
        held = candidates[foreground[candidates] > 0]
        pool = held if len(held) >= k else candidates
        chosen = [run[len(run) // 2] for run in np.array_split(pool, k)]
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return tuple(sorted(int(z) for z in chosen))


def simulated_slices(label_path, label_values: Sequence[int], options: SparseAnnotation, dataset: str,
                     case_id: str, annotated: Sequence[int] | None) -> tuple[int, ...]:
    """The axial slices of one training case kept by `options.slices_per_case`, chosen among its annotated slices
    (`annotated`, None: every slice) from its full label file."""
    label, _ = read_nifti(label_path)
    structures = np.isin(np.asarray(label), [v for v in label_values[1:]])
    foreground = structures.sum(axis=(0, 1))
    candidates = range(label.shape[2]) if annotated is None else annotated
    return choose_slices(foreground, candidates, options.slices_per_case, options.strategy,
                         case_rng(options.seed, dataset, case_id))


class HideUnannotated(tio.Transform):
    """Mark the label's voxels outside the subject's annotated axial slices (`SUBJECT_KEY`) UNKNOWN_LABEL; a
    subject without the key is left as it is."""

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        slices = subject.get(SUBJECT_KEY)
        if slices is None or "label" not in subject:
            return subject
        label = subject["label"]
        data = label.data.clone()
        hidden = torch.ones(data.shape[-1], dtype=torch.bool)
        hidden[list(slices)] = False
        data[..., hidden] = UNKNOWN_LABEL
        label.set_data(data)
        return subject
