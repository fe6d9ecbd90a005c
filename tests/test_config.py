"""Every valid combination composes and instantiates; every invalid one fails at once with the fix."""

from __future__ import annotations

import inspect
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from covlight.callbacks.scoring import CaseScoring
from covlight.config import (
    check_combination,
    claim_run_dir,
    conf_dir,
    group_name,
    identity_parts,
    job_name,
    read_status,
    release_run_dir,
    write_status,
)
from covlight.data.datamodule import SegmentationDataModule
from covlight.errors import ConfigError
from covlight.methods.supervised import INFERENCE_KEYS, SupervisedSegmentation
from covlight.nets import UNet
from tests.helpers.runs import REPO, compose_config

MODELS = ("unet2d", "unet3d")
# Methods that learn with a network; those choosing model=none (no network) are tested in test_semiauto.py.
METHODS = tuple(sorted(path.stem for path in (conf_dir() / "method").glob("*.yaml")
                       if "override /model: none" not in path.read_text(encoding="utf-8")))


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
    assert group_name("task3-msd/infection/demo/fold1-seed0") == "task3-msd-infection-demo"
    assert job_name("task2-msd/infection/demo/seed3") == "seed3"
    cfg = compose_config(["task=task2", "source=nsclc", "subtask=infection", "seed=3"])
    assert cfg.run_id == "task2-nsclc/infection/unet3d/seed3"
    assert cfg.logger.wandb.group == "task2-nsclc-infection-unet3d" and cfg.logger.wandb.name == "seed3"
    assert list(cfg.logger.wandb.tags) == ["task:task2", "source:nsclc", "subtask:infection", "model:unet3d"]


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
    assert cfg.logger.wandb.tags[0] == "task:task1_train80"


def test_resume_auto_never_picks_the_other_split_variants_run(tmp_path):
    """An unfinished official run and an unfinished train80 run of the same name: each resumes only its own."""
    folders = {}
    for variant, task_part in (("official", "task1"), ("train80", "task1_train80")):
        folders[variant] = tmp_path / task_part / "lung" / "unet2d" / "fold0-seed0" / "2020-01-01_00-00-00"
        folders[variant].mkdir(parents=True)
        write_status(folders[variant], "running")
    for variant in ("official", "train80"):
        cfg = compose_config(["model=unet2d", f"task.variant={variant}", "resume=auto",
                              f"paths.output_root={tmp_path}"], return_hydra_config=True)
        assert cfg.hydra.run.dir == str(folders[variant])


def test_resume_auto_skips_finished_and_unclaimed_folders(tmp_path):
    parent = tmp_path / "task1" / "lung" / "unet2d" / "fold0-seed0"
    failed, finished, unclaimed = (parent / name for name in ("2020-01-01_00-00-00", "2020-01-02_00-00-00",
                                                              "2020-01-03_00-00-00"))
    for folder in (failed, finished, unclaimed):
        folder.mkdir(parents=True)
    write_status(failed, "failed")
    write_status(finished, "finished")
    cfg = compose_config(["model=unet2d", "resume=auto", f"paths.output_root={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.run.dir == str(failed)
    fresh = compose_config(["model=unet2d", f"paths.output_root={tmp_path}"], return_hydra_config=True)
    assert Path(fresh.hydra.run.dir).parent == parent and not Path(fresh.hydra.run.dir).exists()


def test_reading_the_run_folder_creates_nothing(tmp_path):
    cfg = compose_config(["model=unet2d", f"paths.output_root={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith(str(tmp_path)) and cfg.hydra.run.dir == cfg.hydra.run.dir
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides", [["--cfg", "job", "logger=none"], ["--cfg", "job", "--resolve", "logger=none"],
                                       ["--cfg", "job", "--resolve", "logger=wandb"],  # its tags are a list
                                       ["trainer.max_epochs=1.5", "logger=none"], ["model=unet4d", "logger=none"]])
def test_cfg_job_and_a_failed_composition_leave_no_folder(overrides, tmp_path):
    command = [sys.executable, "-m", "covlight", *overrides, f"paths.output_root={tmp_path / 'out'}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == (0 if "--cfg" in overrides else 1), result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_a_run_folder_is_claimed_once_and_a_finished_one_never(tmp_path):
    folder = tmp_path / "run"
    assert claim_run_dir(folder, resume=False) == folder
    assert read_status(folder)["state"] == "running"
    assert claim_run_dir(folder, resume=False) == tmp_path / "run_2"  # claimed: the next free name
    release_run_dir(folder)
    assert claim_run_dir(folder, resume=False) == tmp_path / "run_3"  # a new run never takes a claimed folder
    write_status(folder, "failed")
    assert claim_run_dir(folder, resume=True) == folder
    release_run_dir(folder)
    write_status(folder, "finished")
    for resume in (False, True):
        with pytest.raises(ConfigError, match="finished run; it is never touched"):
            claim_run_dir(folder, resume=resume)
    assert json.loads((folder / "status.json").read_text())["state"] == "finished"


@pytest.mark.parametrize(("choice", "kind"), [("sgd", "SGD"), ("adamw", "AdamW")])
def test_optimizer_group(choice, kind, tmp_path):
    cfg = compose_config(["model=unet2d", f"optimizer={choice}", f"paths.output_dir={tmp_path}"])
    module = instantiate(cfg.model.module)
    optimizer = module.optimizer_factory(module.parameters())
    assert type(optimizer).__name__ == kind


# ------------------------------------------------------------------------------------------ models x methods
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_every_method_composes_with_either_net_for_every_task(model, method, tmp_path):
    dims = int(model[4])
    for task in (["task=task1", "fold=1"], ["task=task2", "source=nsclc"], ["task=task3", "source=msd", "fold=4"]):
        cfg = compose_config([*task, "subtask=infection", f"model={model}", f"method={method}",
                              f"paths.output_dir={tmp_path}"])
        check_combination(cfg)
        assert cfg.model.spatial_dims == dims and cfg.model.module.net.spatial_dims == dims
        assert cfg.name == cfg.model.name == (model if method == "supervised" else f"{method}_{dims}d")
        assert cfg.run_id.endswith(f"/infection/{cfg.name}/" + ("seed0" if task[0] == "task=task2" else
                                                               task[-1].replace("=", "") + "-seed0"))
    module = instantiate(cfg.model.module)
    assert isinstance(module, SupervisedSegmentation) and module.net_spatial_dims == module.net.spatial_dims == dims
    assert module.__class__.__module__ == f"covlight.methods.{'ssl_pretrain' if method == 'ssl_pretrain' else method}"


def test_the_two_models_differ_only_in_their_dimensions():
    unet2d, unet3d = (compose_config([f"model={model}"]).model for model in MODELS)
    differing = {key for key in unet2d if unet2d[key] != unet3d[key]}
    assert differing == {"name", "spatial_dims", "patch_size", "batch_size", "module"}
    net2d, net3d = unet2d.module.net, unet3d.module.net
    assert {key for key in net2d if net2d[key] != net3d[key]} == {"spatial_dims", "features_per_stage", "strides"}


# ------------------------------------------------------------------------------------------- override types
@pytest.mark.parametrize(
    ("override", "key"),
    [("trainer.max_epochs=1.5", "trainer.max_epochs"), ("trainer.max_epochs=abc", "trainer.max_epochs"),
     ("fold=abc", "fold"), ("seed=1.5", "seed"), ("print_config=maybe", "print_config"),
     ("model.batch_size=x", "model.batch_size"), ("model.patch_size=[64,64,x]", "model.patch_size"),
     ("task.num_folds=x", "task.num_folds"), ("task=custom task.split_seed=x", "task.split_seed")],
)
def test_hydra_refuses_a_value_of_the_wrong_type(override, key):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(override.split())
    assert f"full_key: {key}" in str(error.value.__cause__) or key in str(error.value)


def test_other_trainer_arguments_can_still_be_added():
    cfg = compose_config(["+trainer.accumulate_grad_batches=2", "trainer.limit_val_batches=1"])
    assert cfg.trainer.accumulate_grad_batches == 2 and cfg.trainer.limit_val_batches == 1


# --------------------------------------------------------------------------------------- knobs in the tree
def parameters(function, *skip: str) -> set[str]:
    return {name for name in inspect.signature(function).parameters if name not in ("self", *skip)}


def test_every_knob_of_the_net_module_and_scoring_is_in_the_config():
    cfg = compose_config(["model=unet2d"])
    assert parameters(UNet) <= set(cfg.model.module.net)
    assert parameters(SupervisedSegmentation.__init__, "optimizer") <= set(cfg.model.module) - {"optimizer"}
    assert "optimizer" in cfg.model.module
    assert set(INFERENCE_KEYS) | {"patch_size"} == set(cfg.model.module.inference)
    assert parameters(CaseScoring.__init__) <= set(cfg.callbacks.case_scoring)


def test_knobs_reach_what_they_configure(tmp_path):
    cfg = compose_config(["model=unet2d", "model.module.net.negative_slope=0.2", "callbacks.case_scoring.overlay_cases=0",
                          f"paths.output_dir={tmp_path}"])
    net = instantiate(cfg.model.module.net)
    assert {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.2}
    assert instantiate(cfg.callbacks.case_scoring).overlay_cases == 0


def test_an_unknown_inference_setting_is_an_error_naming_it():
    cfg = compose_config(["model=unet2d", "+model.module.inference.gaussian_sigma=0.3"])
    with pytest.raises(Exception, match="gaussian_sigma .*model.module.inference.*gaussian_sigma_scale"):
        instantiate(cfg.model.module)


# ------------------------------------------------------------------------------------------------ schedule
def test_the_poly_schedule_is_nnunets_formula():
    """lr = lr0 x (1 - step / total) ** 0.9, stepped every optimizer step, 0 from the last step on."""
    cfg = compose_config(["model=unet2d"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    total = 250
    scheduler = instantiate(cfg.model.module.scheduler)(optimizer, total_iters=total)
    for step in range(300):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * max(0.0, 1 - step / total) ** 0.9,
                                                                abs=1e-15)
        optimizer.step()
        scheduler.step()


# ------------------------------------------------------------------------------------------ the slice study's arms
def test_every_slice_study_arm_composes_and_builds_what_it_names(tmp_path):
    """An arm whose overrides do not compose, or do not reach the module, would only fail hours into the study."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import slices_study
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    for arm, overrides in slices_study.TRAINED.items():
        cfg = compose_config([*slices_study.BASE, *overrides, f"paths.output_dir={tmp_path}"])
        module = instantiate(cfg.model.module)
        assert isinstance(module, SupervisedSegmentation), arm
        values = dict(o.split("=", 1) for o in overrides)
        if "method" in values:
            assert module.__class__.__module__ == f"covlight.methods.{values['method']}", arm
        if "model.module.unsupervised_weight" in values:
            assert module.unsupervised_weight == float(values["model.module.unsupervised_weight"]), arm
        if "model.module.net.features_per_stage" in values:
            widths = [int(v) for v in values["model.module.net.features_per_stage"].strip("[]").split(",")]
            assert (len(module.net.encoder), module.net.head.in_channels) == (len(widths), widths[0]), arm
        optimizer = module.optimizer_factory(module.parameters())
        assert type(optimizer).__name__.lower() == values.get("optimizer", "sgd"), arm
        if "model.module.optimizer.lr" in values:
            assert optimizer.param_groups[0]["lr"] == float(values["model.module.optimizer.lr"]), arm


def test_slice_study_runs_on_a_gpu_at_its_own_budget(tmp_path):
    """`--device cuda` and a longer schedule (the GPU check of the recipe): the run's whole command line composes,
    trains on the GPU for the budget given, and names its run with the budget."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import slices_study
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    args = slices_study.parse_args(["--device", "cuda", "--epochs", "100", "--batches", "250", "--batch-size", "12"])
    cfg = compose_config([*slices_study.overrides(args, tmp_path, "resize", 2, 1), f"paths.output_dir={tmp_path}"])
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.trainer.max_epochs) == ("gpu", "bf16-mixed", 100)
    assert (cfg.data.sampling.batches_per_epoch, cfg.model.batch_size) == (250, 12)
    assert cfg.name == "resize-25000steps-batch12" and cfg.data.slices.policy == "resize"
