"""The training patch stream draws from (seed, epoch, worker) only, so a resumed run trains on the same patches."""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader

from covlight.data.options import Augmentation
from covlight.data.patches import PatchStream
from covlight.data.sampling import ForegroundSampler
from covlight.data.transforms import affine_range, augmentation_preset


def stream(seed: int = 0) -> PatchStream:
    rng = np.random.default_rng(0)
    subjects = []
    for index in range(3):
        label = np.zeros((1, 24, 24, 12), dtype=np.uint8)
        label[0, 6:14, 8:18, 3:9] = 1
        subjects.append(tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(rng.random((1, 24, 24, 12),
                                                                                              dtype=np.float32))),
                                    label=tio.LabelMap(tensor=torch.from_numpy(label)), dataset=f"d{index}"))
    options = Augmentation(affine_probability=1.0, noise_probability=1.0)
    augmentation = augmentation_preset(3, options, (8, 8, 4))
    sampler = ForegroundSampler((8, 8, 4), 0.5, affine=affine_range(3, options))
    return PatchStream(tio.SubjectsDataset(subjects), sampler=sampler, samples_per_volume=2,
                       patches_per_epoch=6, buffer_size=4, augmentation=augmentation, seed=seed)


def drawn(patch_stream: PatchStream, epoch: int, workers: int = 0) -> torch.Tensor:
    patch_stream.set_epoch(epoch)
    loader = DataLoader(patch_stream, batch_size=6, num_workers=workers)
    return torch.cat([batch["image"] for batch in loader])


def test_an_epoch_draws_the_same_patches_whatever_the_process_random_state():
    torch.manual_seed(1)
    first = drawn(stream(), epoch=3)
    torch.manual_seed(2)
    torch.rand(1000)
    again = drawn(stream(), epoch=3)
    assert torch.equal(first, again)


def test_the_stream_leaves_the_process_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    drawn(stream(), epoch=0)
    assert not torch.equal(torch.rand(4), expected)  # the loader itself draws its base seed
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    patch_stream = stream()
    patch_stream.set_epoch(0)
    list(iter(patch_stream))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_epochs_seeds_and_workers_draw_differently():
    base = drawn(stream(), epoch=0)
    assert not torch.equal(base, drawn(stream(), epoch=1))
    assert not torch.equal(base, drawn(stream(seed=1), epoch=0))
    with_workers = drawn(stream(), epoch=0, workers=2)
    assert torch.equal(with_workers, drawn(stream(), epoch=0, workers=2))


def test_persistent_workers_draw_each_epoch_as_a_fresh_loader_would():
    """Workers kept between epochs still learn the epoch: the second iteration draws epoch 1's patches."""
    patch_stream = stream()
    patch_stream.set_epoch(0)
    loader = DataLoader(patch_stream, batch_size=6, num_workers=2, persistent_workers=True)
    first = torch.cat([batch["image"] for batch in loader])
    patch_stream.set_epoch(1)
    second = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(first, drawn(stream(), epoch=0, workers=2))
    assert torch.equal(second, drawn(stream(), epoch=1, workers=2))
