"""The unlabelled pool of semi-supervised and domain-adaptation methods: which cases, and their patch stream.

Configured as `data.unlabelled = {"datasets": ..., "ratio": r}`: `datasets` is a list of dataset names (every case
of each) or a mapping name -> "all" | [case ids]; `ratio` is the number of unlabelled patches per labelled patch.
Unlabelled cases need only an image (a label file, if present, is never read).

The rule (docs/ARCHITECTURE.md, "Policies"): the pool never holds a test case of any task. By construction, a pool may not name a dataset
that holds test cases (`covid19_ct_seg`: every one of its cases is a test case of some task or fold; `mosmed`: its
50 labelled CT-1 studies are test cases), nor hold, under any dataset name, a COVID-19-CT-Seg case id, a labelled
MosMed study id, or a case id of the split's test or held-out (in-domain test / validation) lists. The unlabelled
MosMed studies (`python -m covlight.prepare mosmed --unlabelled` -> `mosmed_unlabelled`) are the pool for real
data. Breaking the rule is an error naming the cases, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torchio as tio
from torch.utils.data import DataLoader

from covlight.data.canonical import read_canonical
from covlight.data.patches import PatchStream
from covlight.data.splits import COVID, COVID_CASES, MOSMED, MOSMED_CASES, Split
from covlight.data.transforms import PadToAtLeast
from covlight.errors import DatasetError

TEST_DATASETS = {
    COVID: "every COVID-19-CT-Seg case is a test case of some task",
    MOSMED: "its 50 labelled studies are test cases; import the unlabelled studies as mosmed_unlabelled",
}


def pool_lists(unlabelled: dict, split: Split, cases_of: Callable[[str], Iterable[str]]) -> dict[str, list[str]]:
    """dataset name -> case ids of the pool, checked against the rule above (DatasetError naming the fix).

    `cases_of(name)` lists the cases of a dataset (for "all").
    """
    datasets = unlabelled.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets:
        raise DatasetError("data.unlabelled.datasets is empty: name the unlabelled datasets, e.g. [mosmed_unlabelled]")
    if not isinstance(datasets, Mapping):
        datasets = {name: "all" for name in datasets}
    never = {case for lists in (split.val, split.test) for cases in lists.values() for case in cases}
    never |= set(COVID_CASES) | set(MOSMED_CASES)
    pool = {}
    for name, cases in datasets.items():
        if name in TEST_DATASETS:
            raise DatasetError(f"data.unlabelled names {name}, which is never an unlabelled pool: "
                               f"{TEST_DATASETS[name]}.")
        cases = list(cases_of(name)) if cases == "all" else [str(c) for c in cases]
        forbidden = sorted(c for c in cases if c in never)
        if forbidden:
            raise DatasetError(
                f"the unlabelled pool ({name}) holds test case(s) {forbidden[:5]}{' ...' if len(forbidden) > 5 else ''}"
                " (COVID-19-CT-Seg, labelled MosMed, or this split's test / held-out lists); a pool never contains "
                f"a test case. List the cases of data.unlabelled.datasets.{name} explicitly without them."
            )
        pool[name] = cases
    return pool


class UnlabelledStream(PatchStream):
    """Augmented image patches (no label) drawn uniformly from the pool's cases; `dataset` names each one's domain."""

    def __iter__(self):
        cases = self._case_order()
        buffer: list[tio.Subject] = []
        for _ in range(self._share()):
            while len(buffer) < self.buffer_size:
                buffer.extend(self.sampler(self.subjects[next(cases)], self.samples_per_volume))
            patch = buffer.pop(int(torch.randint(len(buffer), ())))
            if self.augmentation is not None:
                patch = self.augmentation(patch)
            yield {"image": patch["image"].data.float(), "dataset": patch["dataset"]}


def unlabelled_batch_size(ratio: float, batch_size: int) -> int:
    if ratio <= 0:
        raise DatasetError(f"data.unlabelled.ratio must be > 0 (unlabelled patches per labelled patch), got {ratio}")
    return max(1, round(ratio * batch_size))


def unlabelled_dataloader(datamodule, augmentation: tio.Transform | None, worker_init_fn) -> DataLoader:
    """As many batches per epoch as the labelled loader, `ratio` x its batch size, from `records["unlabelled"]`."""
    batch_size = unlabelled_batch_size(float(datamodule.unlabelled.get("ratio", 1.0)), datamodule.batch_size)
    subjects = tio.SubjectsDataset(
        [tio.Subject(image=tio.ScalarImage(r.image_path, reader=read_canonical), dataset=r.dataset, intensity=r.intensity)
         for r in datamodule.records["unlabelled"]],
        transform=tio.Compose([datamodule.preprocessing(with_label=False), PadToAtLeast(datamodule.patch_size)]),
    )
    stream = UnlabelledStream(
        subjects,
        sampler=tio.UniformSampler(datamodule.patch_size),
        samples_per_volume=datamodule.samples_per_volume,
        patches_per_epoch=datamodule.batches_per_epoch * batch_size,
        buffer_size=datamodule.patch_buffer,
        augmentation=augmentation,
    )
    return DataLoader(stream, batch_size=batch_size, num_workers=datamodule.num_workers, worker_init_fn=worker_init_fn)

