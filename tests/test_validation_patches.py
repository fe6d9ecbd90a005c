"""Validation costs little (issue 19, part 2): `data.validation.patches` fixed patches in all, drawn once from a
fixed seed and spread over the validation cases, whatever the number of cases."""

from __future__ import annotations

import pytest
import torch

from covlight.benchmark import COVID_CASES
from covlight.data.datamodule import SegmentationDataModule, patch_quota
from covlight.data.options import Validation
from covlight.errors import ConfigError
from covlight.splits import COVID, Split


def test_the_quota_is_the_total_spread_evenly_and_capped_per_case():
    generator = torch.Generator().manual_seed(0)
    assert patch_quota(510, 100, 4, generator).count(1) == 100  # a slice set: one patch from 100 of its slices
    quota = patch_quota(3, 100, 4, generator)
    assert quota == [4, 4, 4]  # few cases: each gives at most patches_per_case
    quota = patch_quota(4, 10, 4, generator)
    assert sorted(quota) == [2, 2, 3, 3] and sum(quota) == 10
    with pytest.raises(ConfigError, match="data.validation.patches=0"):
        Validation(patches=0)


def validation_images(root, cases: int, validation: Validation) -> torch.Tensor:
    datamodule = SegmentationDataModule(
        root=str(root), split=Split(train={COVID: list(COVID_CASES[:cases])}, val={}, test={}), label_values=[0, 1, 2],
        spatial_dims=2, patch_size=[32, 32, 1], batch_size=4, validation=validation)
    datamodule.setup("fit")
    return torch.cat([batch["image"] for batch in datamodule.val_dataloader()])


def test_validation_draws_the_total_once_and_the_same_every_time(phantom_root):
    capped = validation_images(phantom_root, 20, Validation(patches=6, patches_per_case=4))
    assert len(capped) == 6  # 20 cases x 4 patches without the cap
    assert torch.equal(capped, validation_images(phantom_root, 20, Validation(patches=6, patches_per_case=4)))
    assert len(validation_images(phantom_root, 2, Validation(patches=100, patches_per_case=3))) == 6
