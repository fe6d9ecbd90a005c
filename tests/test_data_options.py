"""conf/data follows the data module's option groups (covlight/data/options.py): every key is documented with its
default in conf/data/default.yaml, Hydra refuses a wrong type or an unknown key, and values are checked."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from covlight.config import conf_dir
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.options import DataConfig, Sampling, Slices
from covlight.errors import ConfigError
from covlight.splits import Split
from tests.helpers.runs import compose_config


def test_the_yaml_shows_every_option_with_the_schemas_default():
    written = OmegaConf.load(conf_dir() / "data" / "default.yaml")
    schema = OmegaConf.structured(DataConfig)
    for group in ("preprocessing", "slices", "sampling", "validation", "cases", "augmentation"):
        for key, default in schema[group].items():
            assert key in written[group], f"conf/data/default.yaml lacks data.{group}.{key}"
            if not OmegaConf.is_interpolation(written[group], key):
                assert written[group][key] == default, f"data.{group}.{key}: the YAML and the schema disagree"


@pytest.mark.parametrize("override", ["data.sampling.batches_per_epoch=1.5", "data.augmentation.scales=fast",
                                      "data.preprocessing.histogram_standardisation=maybe",
                                      "data.sampling.batch_per_epoch=3"])
def test_hydra_refuses_a_wrong_type_or_an_unknown_key(override):
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
        compose_config([override])


def test_groups_arrive_as_dataclasses_and_values_are_checked():
    datamodule = instantiate(compose_config(["model=unet2d", "data.sampling.batches_per_epoch=7",
                                             "data.slices.policy=resize"]).data)
    assert datamodule.sampling == Sampling(batches_per_epoch=7) and datamodule.slices == Slices(policy="resize")
    assert datamodule.spatial_dims == 2
    for override, message in (("data.slices.policy=crop", "data.slices.policy='crop'"),
                              ("data.cases.missing=ignore", "data.cases.missing='ignore'"),
                              ("data.sampling.foreground_fraction=1.5", "foreground_fraction must be in")):
        with pytest.raises(Exception, match=message):
            instantiate(compose_config(["model=unet2d", override]).data)


def test_spatial_dims_must_fit_the_patch():
    split = Split(train={}, val={}, test={})
    with pytest.raises(ConfigError, match="a 2D model's patches have z-size 1"):
        SegmentationDataModule(root="data", split=split, label_values=[0, 1], spatial_dims=2, patch_size=[32, 32, 8],
                               batch_size=2)
