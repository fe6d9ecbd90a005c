"""The training patch stream: workers load cases, draw patches, augment each patch, and mix cases.

Like TorchIO's `Queue` (patches of several cases shuffled together), but the augmentation runs per patch inside
the loader workers: a patch costs far less to augment than the whole volume it comes from, and the main process
stays free for the training step.

Every random draw of a stream comes from (seed, epoch, worker), never from the random state of the process it runs
in: Lightning creates the first epoch's loader iterator of a resumed run before any epoch-start hook could reseed,
so a stream that drew from the ambient state would give a resumed run other patches than an uninterrupted one.
The epoch lives in shared memory: a persistent loader worker (kept from epoch to epoch) holds its own copy of the
stream, and still reads the epoch the main process set when it starts the next epoch's iteration.
"""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager

import numpy as np
import torch
import torchio as tio
from torch.utils.data import IterableDataset, get_worker_info


def stream_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (run seed, stream, rank, epoch, worker)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextmanager
def drawing_from(generator: torch.Generator):
    """Run TorchIO's samplers and transforms (which draw from torch's global generator) on a seed taken from
    `generator`, and leave the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        yield


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
        seed: int = 0,
    ):
        self.subjects = subjects
        self.sampler = sampler
        self.samples_per_volume = samples_per_volume
        self.patches_per_epoch = patches_per_epoch
        self.buffer_size = max(buffer_size, samples_per_volume)
        self.augmentation = augmentation
        self.groups = groups
        self.seed = seed
        self._epoch = multiprocessing.RawValue("q", 0)  # shared with the loader's workers, persistent ones too

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration draws for, in this process and in every loader worker of the stream."""
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return self.patches_per_epoch

    def _share(self) -> int:
        worker = get_worker_info()
        if worker is None:
            return self.patches_per_epoch
        share, extra = divmod(self.patches_per_epoch, worker.num_workers)
        return share + (1 if worker.id < extra else 0)

    def _case_order(self, generator: torch.Generator):
        """Cases in random order; with `groups` (one name per case) each group is drawn equally often."""
        if self.groups is None:
            while True:
                yield from torch.randperm(len(self.subjects), generator=generator).tolist()
        members: dict[str, list[int]] = {}
        for index, group in enumerate(self.groups):
            members.setdefault(group, []).append(index)
        names = sorted(members)
        while True:
            group = members[names[int(torch.randint(len(names), (), generator=generator))]]
            yield group[int(torch.randint(len(group), (), generator=generator))]

    def __iter__(self):
        worker = get_worker_info()
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, worker.id if worker else 0))
        cases = self._case_order(generator)
        buffer: list[tio.Subject] = []
        for _ in range(self._share()):
            while len(buffer) < self.buffer_size:
                subject = self.subjects[next(cases)]
                with drawing_from(generator):
                    buffer.extend(self.sampler(subject, self.samples_per_volume))
            patch = buffer.pop(int(torch.randint(len(buffer), (), generator=generator)))
            if self.augmentation is not None:
                with drawing_from(generator):
                    patch = self.augmentation(patch)
            yield self.item(patch)

    def item(self, patch: tio.Subject) -> dict:
        """What one patch becomes in a batch (the hook a stream of other patches overrides)."""
        return {"image": patch["image"].data.float(), "label": patch["label"].data.to(torch.uint8),
                "dataset": patch["dataset"]}
