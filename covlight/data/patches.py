"""The training patch stream: workers load cases, draw patches, augment each patch, and mix cases.

Like TorchIO's `Queue` (patches of several cases shuffled together), but the augmentation runs per patch inside
the loader workers: a patch costs far less to augment than the whole volume it comes from, and the main process
stays free for the training step.
"""

from __future__ import annotations

import torch
import torchio as tio
from torch.utils.data import IterableDataset, get_worker_info


class PatchStream(IterableDataset):
    """`patches_per_epoch` augmented patches per epoch, split over the loader's workers.

    With `groups` (the dataset of each case) datasets are sampled equally often, whatever their size
    (`source=all`: balanced sampling over sources). Each worker keeps a buffer of up to `buffer_size` patches drawn
    `samples_per_volume` at a time from cases it loads in a random order, and hands out a random one from the
    buffer, augmented and made a batch item by `item`.
    """

    def __init__(
        self,
        subjects: tio.SubjectsDataset,
        sampler: tio.data.PatchSampler,
        samples_per_volume: int,
        patches_per_epoch: int,
        buffer_size: int,
        augmentation: tio.Transform | None = None,
        groups: list[str] | None = None,
    ):
        self.subjects = subjects
        self.sampler = sampler
        self.samples_per_volume = samples_per_volume
        self.patches_per_epoch = patches_per_epoch
        self.buffer_size = max(buffer_size, samples_per_volume)
        self.augmentation = augmentation
        self.groups = groups

    def __len__(self) -> int:
        return self.patches_per_epoch

    def _share(self) -> int:
        worker = get_worker_info()
        if worker is None:
            return self.patches_per_epoch
        share, extra = divmod(self.patches_per_epoch, worker.num_workers)
        return share + (1 if worker.id < extra else 0)

    def _case_order(self):
        """Cases in random order; with `groups` (one name per case) each group is drawn equally often."""
        if self.groups is None:
            while True:
                yield from torch.randperm(len(self.subjects)).tolist()
        members: dict[str, list[int]] = {}
        for index, group in enumerate(self.groups):
            members.setdefault(group, []).append(index)
        names = sorted(members)
        while True:
            group = members[names[int(torch.randint(len(names), ()))]]
            yield group[int(torch.randint(len(group), ()))]

    def __iter__(self):
        cases = self._case_order()
        buffer: list[tio.Subject] = []
        for _ in range(self._share()):
            while len(buffer) < self.buffer_size:
                subject = self.subjects[next(cases)]
                buffer.extend(self.sampler(subject, self.samples_per_volume))
            patch = buffer.pop(int(torch.randint(len(buffer), ())))
            if self.augmentation is not None:
                patch = self.augmentation(patch)
            yield self.item(patch)

    def item(self, patch: tio.Subject) -> dict:
        """What one patch becomes in a batch (the hook a stream of other patches overrides)."""
        return {"image": patch["image"].data.float(), "label": patch["label"].data.to(torch.uint8),
                "dataset": patch["dataset"]}
