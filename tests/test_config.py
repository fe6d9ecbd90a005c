"""Every valid combination composes and instantiates; every invalid one fails at once with the fix."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from covlight.config import check_combination, group_name, identity_parts, job_name
from covlight.data.datamodule import SegmentationDataModule
from covlight.errors import ConfigError
from covlight.methods.supervised import SupervisedSegmentation
from tests.helpers.runs import compose_config

MODELS = ("unet2d", "unet3d")


def valid_combinations():
    for subtask, fold in itertools.product(("lung", "infection", "lung_infection"), range(5)):
        yield ["task=task1", f"subtask={subtask}", f"fold={fold}"]
    for source in ("structseg", "nsclc", "all"):
        yield ["task=task2", f"source={source}", "subtask=lung"]
    for source in ("structseg", "nsclc", "msd", "all"):
        yield ["task=task2", f"source={source}", "subtask=infection"]
    for source, subtask, fold in itertools.product(("structseg", "nsclc", "msd", "all"), ("lung", "infection"),
                                                   range(5)):
        yield ["task=task3", f"source={source}", f"subtask={subtask}", f"fold={fold}"]


@pytest.mark.parametrize("model", MODELS)
def test_every_valid_combination_composes_and_instantiates(model, tmp_path):
    built_modules = set()
    count = 0
    for overrides in valid_combinations():
        cfg = compose_config([*overrides, f"model={model}", f"paths.output_dir={tmp_path}"])
        check_combination(cfg)
        datamodule = instantiate(cfg.data)
        assert isinstance(datamodule, SegmentationDataModule)
        assert sum(len(v) for v in datamodule.split.train.values()) > 0
        assert datamodule.split.test, overrides
        key = cfg.subtask.name
        if key not in built_modules:  # the network depends on the subtask only
            module = instantiate(cfg.model.module)
            assert isinstance(module, SupervisedSegmentation)
            assert module.label_values == list(cfg.subtask.label_values)
            for callback in cfg.callbacks.values():
                instantiate(callback)
            instantiate(cfg.trainer, logger=False)
            built_modules.add(key)
        count += 1
    assert count == 15 + 7 + 40


def test_experiment_group_serves_the_demo_recipe():
    cfg = compose_config(["experiment=demo"])
    assert cfg.name == "demo"
    assert cfg.subtask.name == "lung_infection"
    assert cfg.model.name == "unet2d"
    check_combination(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=task1", "source=nsclc"], "task1 trains on COVID-19-CT-Seg only"),
        (["task=task2"], "needs a non-COVID source"),
        (["task=task3", "source=structseg", "fold=5"], r"official folds \[0, 1, 2, 3, 4\]"),
        (["task=task2", "source=nsclc", "fold=3"], "has one split and no folds"),
        (["task=task2", "source=nsclc", "subtask=lung_infection"], "partial-label loss"),
        (["task=task3", "source=msd", "subtask=lung_infection"], "task1's only"),
        (["task=task2", "source=msd", "subtask=lung"], "no published lung training source for source='msd'"),
        (["model=unet2d", "model.patch_size=[64,64,8]"], "a 2D model uses z = 1"),
    ],
)
def test_invalid_combinations_fail_with_the_fix(overrides, message):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=message):
        check_combination(cfg)


def test_unknown_option_names_the_choices():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as error:
        compose_config(["model=unet4d"])
    assert "unet2d" in str(error.value) and "unet3d" in str(error.value)


def test_run_identity_names_folder_and_wandb_group():
    assert identity_parts("task1", None, "lung", "unet3d", 2, 0) == ["task1", "lung", "unet3d", "fold2-seed0"]
    assert identity_parts("task2", "nsclc", "infection", "unet2d", None, 1) == [
        "task2-nsclc", "infection", "unet2d", "seed1"]
    assert group_name("task3", "msd", "infection", "demo") == "task3-msd-infection-demo"
    assert job_name(None, 3) == "seed3"


def test_run_folder_follows_identity(tmp_path):
    cfg = compose_config(["task=task3", "source=structseg", "subtask=infection", "fold=4", "seed=2",
                          f"paths.output_root={tmp_path}"], return_hydra_config=True)
    run_dir = cfg.hydra.run.dir
    assert run_dir.startswith(str(tmp_path / "task3-structseg" / "infection" / "unet3d" / "fold4-seed2"))


def test_split_variant_is_part_of_the_identity(tmp_path):
    """Runs on another split of the same task never share a folder, a W&B group or a report row with official ones."""
    cfg = compose_config(["task=task1", "task.variant=train80", "model=unet2d", f"paths.output_root={tmp_path}"],
                         return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith(str(tmp_path / "task1_train80" / "lung" / "unet2d" / "fold0-seed0"))
    assert cfg.logger.wandb.group == "task1_train80-lung-unet2d"
    official = compose_config(["task=task1", "model=unet2d", f"paths.output_root={tmp_path}"])
    assert official.logger.wandb.group == "task1-lung-unet2d"


@pytest.mark.parametrize(("choice", "kind"), [("sgd", "SGD"), ("adamw", "AdamW")])
def test_optimizer_group(choice, kind, tmp_path):
    cfg = compose_config(["model=unet2d", f"optimizer={choice}", f"paths.output_dir={tmp_path}"])
    module = instantiate(cfg.model.module)
    optimizer = module.optimizer_factory(module.parameters())
    assert type(optimizer).__name__ == kind
