"""What many tests share to run covlight: the checkout, the composed config, and overrides for tiny, fast runs."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from covlight.config import conf_dir

REPO = Path(__file__).resolve().parents[2]
TINY_2D = [
    "model=unet2d", "model.patch_size=[32,32,1]", "model.batch_size=4",
    "model.module.net.features_per_stage=[8,16,32]", "model.module.net.strides=[1,2,2]",
    "model.module.inference.batch_size=8",
]
TINY_3D = [
    "model=unet3d", "model.patch_size=[32,32,16]", "model.batch_size=2",
    "model.module.net.features_per_stage=[8,16,32]", "model.module.net.strides=[[1,1,1],[2,2,2],[2,2,2]]",
]
FAST = [
    "trainer=debug", "data.sampling.batches_per_epoch=2", "data.sampling.samples_per_volume=2",
    "data.sampling.patch_buffer=4",
    "data.sampling.num_workers=0", "data.validation.patches_per_case=1", "print_config=false",
]


def compose_config(overrides: list[str], return_hydra_config: bool = False):
    """Compose covlight's config as `python -m covlight` would (experiments group included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
