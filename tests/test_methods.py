"""Few-shot, semi-supervised and domain-adaptation methods: each mechanism directly, each method a few steps in
2D and 3D on phantoms (labelled COVID phantoms, unlabelled phantoms without label files, tumour phantoms as a
non-COVID source), and the pre-training -> fine-tuning chain."""

from __future__ import annotations

import copy
import csv
import math
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torchio as tio
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from covlight.config import check_combination, read_status
from covlight.data.canonical import affine_from_spacing, hu_to_0_255, write_case, write_dataset_json
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.options import Augmentation, Sampling, Unlabelled
from covlight.data.synthetic import make_phantom, write_phantom_dataset
from covlight.data.transforms import RandomContrast, RandomHistogramWarp, augmentation_preset
from covlight.data.unlabelled import pool_lists
from covlight.errors import ConfigError, DatasetError
from covlight.methods.consistency import (
    dann_lambda,
    ema_update,
    entropy,
    grad_reverse,
    sigmoid_rampup,
    uncertainty_mask,
)
from covlight.methods.mean_teacher import MeanTeacher
from covlight.methods.ssl_pretrain import MaskedRestoration, block_mask
from covlight.nets import UNet
from covlight.splits import COVID, Split, official_split
from covlight.train import load_initial_weights, run
from tests.helpers.runs import FAST, REPO, TINY_2D, TINY_3D, compose_config

POOL = "phantom_unlabelled"
SOURCE = "phantom_tumour"
METHODS = ("mean_teacher", "ua_mt", "cps", "entropy_min", "dann", "ssl_pretrain")
TINY = {2: [*TINY_2D, "model.batch_size=2"], 3: TINY_3D}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets gain nothing from a second thread, and on a busy machine OpenMP threads spin waiting for each
    other (seconds of CPU per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(phantom_root, tmp_path_factory):
    """The 20 COVID phantoms, 2 unlabelled phantoms (images only) and 2 tumour phantoms (a non-COVID source)."""
    root = tmp_path_factory.mktemp("methods_data")
    (root / COVID).symlink_to(phantom_root / COVID, target_is_directory=True)
    entries = {}
    for case_id in ("unlabelled_001", "unlabelled_002"):
        phantom = make_phantom(case_id, seed=1, size="small")
        entries[case_id] = write_case(root / POOL, case_id, hu_to_0_255(phantom.image_hu), None,
                                      affine_from_spacing(phantom.spacing), intensity="hu")
    write_dataset_json(root / POOL, POOL, entries, [])
    write_phantom_dataset(root / SOURCE, cases=2, kind="tumour", size="small", progress=False)
    return root


def tiny_net(spatial_dims: int = 2, num_classes: int = 2, **kwargs) -> UNet:
    strides = [1, 2] if spatial_dims == 2 else [1, [2, 2, 2]]
    return UNet(spatial_dims, 1, num_classes, [8, 16], strides, **kwargs)


def method_config(method: str, dims: int, data_root, *extra: str):
    overrides = [f"method={method}", *TINY[dims], *FAST, "logger=none", f"paths.data_dir={data_root}",
                 f"data.unlabelled.datasets=[{POOL}]", *extra]
    return compose_config(overrides)


# ------------------------------------------------------------------------------------------------- mechanisms
def test_rampup_and_reversal_schedules():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == sigmoid_rampup(1000, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0  # no ramp-up
    values = [sigmoid_rampup(step, 100) for step in range(0, 101, 10)]
    assert values == sorted(values)
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(1.0, abs=1e-4)


def test_gradient_reversal_flips_the_sign_and_scales_by_lambda():
    x = torch.randn(6, requires_grad=True)
    weights = torch.randn(6)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    assert torch.allclose(x.grad, -0.3 * weights)


def test_uncertainty_mask_keeps_only_low_entropy_voxels():
    # three voxels of a 2-class prediction: sure (entropy 0.056), fairly sure (0.500), undecided (0.693 = ln 2)
    probabilities = torch.tensor([[0.99, 0.8, 0.5], [0.01, 0.2, 0.5]])[None]  # (B=1, K=2, 3 voxels)
    assert torch.allclose(entropy(probabilities)[0], torch.tensor([0.0560, 0.5004, math.log(2)]), atol=1e-4)
    assert uncertainty_mask(probabilities, 0.75 * math.log(2))[0].tolist() == [True, True, False]
    assert uncertainty_mask(probabilities, 0.3)[0].tolist() == [True, False, False]


def test_ema_teacher_moves_at_the_configured_rate_and_gets_no_gradients():
    module = MeanTeacher(tiny_net(), spatial_dims=2, optimizer=partial(torch.optim.SGD, lr=0.1), ema_decay=0.9,
                         label_values=[0, 1], inference={"patch_size": [16, 16, 1]})
    assert not any(p.requires_grad for p in module.teacher.parameters())
    module.on_train_start()  # a fresh start: teacher = student
    for t, s in zip(module.teacher.parameters(), module.net.parameters(), strict=True):
        assert torch.equal(t, s)
    with torch.no_grad():
        for p in module.teacher.parameters():
            p.add_(torch.randn_like(p))
    teacher_before = copy.deepcopy(module.teacher)
    image = torch.rand(2, 1, 16, 16)
    supervised, consistency = module.losses(image, (image[:, 0] > 0.5).long(), torch.rand(2, 1, 16, 16), {})
    (supervised + consistency).backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is not None for p in module.net.parameters())
    module.on_train_batch_end(None, None, 0)
    for t, before, s in zip(module.teacher.parameters(), teacher_before.parameters(), module.net.parameters(),
                            strict=True):
        assert torch.allclose(t, 0.9 * before + 0.1 * s, atol=1e-6)
    # the update itself, at another rate
    teacher, student = tiny_net(), tiny_net()
    expected = [0.5 * t + 0.5 * s for t, s in zip(teacher.parameters(), student.parameters(), strict=True)]
    ema_update(teacher, student, 0.5)
    assert all(torch.allclose(t, e, atol=1e-6) for t, e in zip(teacher.parameters(), expected, strict=True))


def test_block_mask_covers_whole_blocks_at_the_ratio():
    mask = block_mask(torch.Size([64, 1, 32, 24]), block_size=8, ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, 1, 32, 24)
    blocks = mask.unfold(2, 8, 8).unfold(3, 8, 8)  # (64, 1, 4, 3, 8, 8)
    assert (blocks.all((-1, -2)) | ~blocks.any((-1, -2))).all()  # each block all masked or all kept
    assert 0.4 < mask.float().mean() < 0.6


def test_pretraining_objective_decreases():
    torch.manual_seed(0)
    module = MaskedRestoration(tiny_net(), spatial_dims=2, optimizer=None, label_values=[0, 1], block_size=4,
                               inference={"patch_size": [32, 32, 1]})
    smooth = torch.nn.functional.avg_pool2d(torch.rand(8, 1, 40, 40), 9, stride=1)  # 32 x 32, smooth
    images = (smooth - smooth.min()) / (smooth.max() - smooth.min())

    def objective() -> float:
        with torch.no_grad():
            return module.restoration_loss(images, torch.Generator().manual_seed(1)).item()

    before = objective()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        module.restoration_loss(images).backward()
        optimizer.step()
    assert objective() < 0.5 * before


# ------------------------------------------------------------------------------------------- unlabelled pool
def test_unlabelled_pool_never_holds_a_test_case():
    split = official_split("task1", "infection", 2)
    test_case, training_case = split.test[COVID][0], split.train[COVID][0]
    cases = {"pool": ["a", "b"], "pool_with_copy": ["a", test_case], "pool_with_train": ["a", training_case],
             "mosmed_unlabelled": ["study_0001", "study_0260"]}
    assert pool_lists(["pool"], split, cases.get) == {"pool": ["a", "b"]}
    as_configured = OmegaConf.create({"pool_with_copy": ["a"]})  # a mapping, as Hydra hands it over
    assert pool_lists(as_configured, split, cases.get) == {"pool_with_copy": ["a"]}
    # a test case under another dataset name; any COVID-19-CT-Seg case (other folds' test cases); a labelled
    # MosMed study
    for name, case in (("pool_with_copy", test_case), ("pool_with_train", training_case),
                       ("mosmed_unlabelled", "study_0260")):
        with pytest.raises(DatasetError, match=f"pool \\({name}\\) holds test case.*{case}"):
            pool_lists([name], split, cases.get)
    for name in (COVID, "mosmed"):
        with pytest.raises(DatasetError, match=f"names {name}, which is never an unlabelled pool"):
            pool_lists({name: ["x"]}, split, cases.get)
    held_out = Split(train={"src": ["t"]}, val={"src": ["v"]}, test={COVID: ["c"]})  # task 2/3 in-domain held-out
    with pytest.raises(DatasetError, match="'v'"):
        pool_lists({"pool": ["a", "v"]}, held_out, cases.get)


def test_the_data_module_enforces_the_pool_rule(data_root):
    split = official_split("task1", "lung", 0)
    test_case = split.test[COVID][0]
    for pool in ({COVID: [test_case]}, {COVID: "all"}):
        datamodule = SegmentationDataModule(root=str(data_root), split=split, label_values=[0, 1, 2], spatial_dims=2,
                                            patch_size=[32, 32, 1], batch_size=2, unlabelled=Unlabelled(pool))
        with pytest.raises(DatasetError, match="never an unlabelled pool"):
            datamodule.setup("fit")


def test_labelled_and_unlabelled_patches_come_in_one_batch(data_root):
    split = official_split("task1", "lung", 0)
    common = dict(root=str(data_root), split=split, label_values=[0, 1, 2], spatial_dims=2, patch_size=[32, 32, 1],
                  batch_size=2, sampling=Sampling(batches_per_epoch=2, samples_per_volume=2, patch_buffer=4,
                                                  num_workers=0))
    datamodule = SegmentationDataModule(**common, unlabelled=Unlabelled([POOL], ratio=1.5))
    datamodule.setup("fit")
    assert {r.dataset for r in datamodule.records["unlabelled"]} == {POOL}
    assert all(r.label_path is None for r in datamodule.records["unlabelled"])  # images only
    batches = [batch for batch, _, _ in datamodule.train_dataloader()]  # CombinedLoader: (batch, index, loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["labelled"]["image"].shape == (2, 1, 32, 32, 1) and "label" in batch["labelled"]
    assert batch["unlabelled"]["image"].shape == (3, 1, 32, 32, 1)  # ratio 1.5 x batch size 2
    assert set(batch["unlabelled"]) == {"image", "dataset"} and batch["unlabelled"]["dataset"] == [POOL] * 3
    plain = SegmentationDataModule(**common)  # no pool: the supervised batches, unchanged
    plain.setup("fit")
    assert set(next(iter(plain.train_dataloader()))) == {"image", "label", "dataset"}


def test_intensity_augmentations_keep_the_range_and_the_order_of_intensities():
    torch.manual_seed(0)
    image = torch.rand(1, 16, 16, 4)
    for transform in (RandomContrast((0.5, 1.5)), RandomHistogramWarp(0.7)):
        out = transform(tio.Subject(image=tio.ScalarImage(tensor=image.clone())))["image"].data
        assert out.min() >= image.min() - 1e-6 and out.max() <= image.max() + 1e-6
        order = image.flatten().argsort()
        assert (out.flatten()[order].diff() >= -1e-6).all()  # monotone: a brighter voxel stays brighter
        assert not torch.allclose(out, image)


# ------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_method_configs_compose_for_every_task(method, dims):
    classes = {"mean_teacher": "MeanTeacher", "ua_mt": "UncertaintyAwareMeanTeacher", "cps": "CrossPseudoSupervision",
               "entropy_min": "EntropyMinimisation", "dann": "DomainAdversarial", "ssl_pretrain": "MaskedRestoration"}
    for task in (["task=task1", "fold=1"], ["task=task2", "source=nsclc"], ["task=task3", "source=msd", "fold=4"]):
        cfg = compose_config([*task, "subtask=infection", f"method={method}", *TINY[dims]])
        check_combination(cfg)
        assert cfg.name == cfg.model.name == f"{method}_{dims}d" and cfg.model.spatial_dims == dims
        assert cfg.data.unlabelled == {"datasets": ["mosmed_unlabelled"], "ratio": 1.0}
        assert (cfg.trainer.get("limit_test_batches") == 0) == (method == "ssl_pretrain")
    module = instantiate(cfg.model.module)
    assert type(module).__name__ == classes[method] and module.net.spatial_dims == dims


# What a recipe is composed with here, and the run name it then gives (default: none, and the recipe's name).
RECIPE_OVERRIDES = {
    "fewshot_strong_aug": (["model=unet2d"], "fewshot_strong_aug_unet2d"),
    "intensity_dg": (["task=task2", "source=structseg", "subtask=infection"], "intensity_dg_unet3d"),
    "ssl_pretrain": (["model=unet2d"], "ssl_pretrain_2d"),
    "finetune": (["model=unet2d"], "finetune_unet2d"),
    "finetune_task3": (["source=structseg", "subtask=infection", "fold=3"], "finetune_task3_unet3d"),
    # a custom task reads its dataset to draw folds: the phantoms stand in for a slice set
    "slices2d": (["task.name=my_slices", "task.datasets=[covid19_ct_seg]"], "slices2d"),
}


@pytest.mark.parametrize("recipe", sorted(path.stem for path in (REPO / "experiments").glob("*.yaml")))
def test_recipes_compose(recipe, phantom_root):
    """Every recipe in experiments/ composes into a valid run with its own name."""
    overrides, name = RECIPE_OVERRIDES.get(recipe, ([], recipe))
    if recipe == "slices2d":
        overrides = [*overrides, f"paths.data_dir={phantom_root}"]
    cfg = compose_config([f"experiment={recipe}", *overrides])
    check_combination(cfg)
    assert cfg.name == name
    datamodule = instantiate(cfg.data)
    if recipe == "finetune_task3":  # task 3's identity and test cases, trained on the fold's 4 COVID cases only
        assert cfg.task.name == "task3" and datamodule.split.train == official_split("task1", "lung", 3).train
        assert datamodule.split.test[COVID] == official_split("task3", "infection", 3, "structseg").test[COVID]
    if recipe.startswith("finetune"):  # init_from is required: the placeholder fails with the fix
        with pytest.raises(ConfigError, match="init_from=<the .* run folder>: no checkpoint"):
            load_initial_weights(instantiate(cfg.model.module), cfg.init_from)
    if recipe == "slices2d":
        assert datamodule.slice_size == (256, 256) and cfg.subtask.name == "infection"
    if recipe in ("fewshot_strong_aug", "intensity_dg"):
        augmentation = augmentation_preset(cfg.model.spatial_dims, Augmentation(**cfg.data.augmentation),
                                           cfg.model.patch_size)
        assert len(augmentation) >= 6


# ------------------------------------------------------------------------------------------ a few steps each
def fit_a_few_steps(cfg, steps: int = 2):
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model.module)
    start = copy.deepcopy(module.net.state_dict())
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == steps
    assert any(not torch.equal(start[k], v) for k, v in module.net.state_dict().items())
    assert math.isfinite(trainer.callback_metrics["train/loss_step"])
    return module, trainer


def domain_split(cfg) -> None:
    """A non-COVID labelled source, one labelled COVID case (target) and the unlabelled pool (target)."""
    with open_dict(cfg):
        cfg.data.split = OmegaConf.create({"_target_": "covlight.splits.Split",
                                           "train": {SOURCE: ["phantom_tumour_001", "phantom_tumour_002"],
                                                     COVID: ["coronacases_001"]},
                                           "val": {}, "test": {COVID: ["coronacases_002"]}})


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_a_few_steps(method, dims, data_root):
    extra = ["model.module.mc_samples=2"] if method == "ua_mt" else []
    cfg = method_config(method, dims, data_root, "subtask=infection", *extra)
    assert cfg.model.name == f"{method}_{dims}d"
    if method == "dann":
        domain_split(cfg)
    module, trainer = fit_a_few_steps(cfg)
    metrics = trainer.callback_metrics
    if method == "ssl_pretrain":
        assert cfg.trainer.limit_test_batches == 0
        return
    assert math.isfinite(metrics["train/unsupervised_loss_step"])
    assert "train/unsupervised_weight" in metrics
    if method == "dann":
        assert 0.0 < metrics["train/reversal_scale"] < 1.0
        assert 0.0 <= metrics["train/domain_accuracy_step"] <= 1.0
    if method == "cps":
        assert any(not torch.equal(a, b) for a, b in zip(module.net.parameters(), module.second_net.parameters(),
                                                         strict=True))


# ------------------------------------------------------------------------------------ pre-training, fine-tuning
def test_fine_tuning_starts_from_the_pretrained_weights(data_root, tmp_path):
    pretrain = compose_config(["experiment=ssl_pretrain", *TINY[2], *FAST, "logger=none", "subtask=infection",
                               f"paths.data_dir={data_root}", f"data.unlabelled.datasets=[{POOL}]",
                               "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'ssl'}"])
    assert run(pretrain)["test"] == {}  # nothing to score: the test is skipped
    ssl_dir = tmp_path / "ssl"
    assert read_status(ssl_dir)["state"] == "finished" and not (ssl_dir / "metrics.csv").exists()
    pretrained = torch.load(ssl_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    pretrained = {k.removeprefix("net."): v for k, v in pretrained.items() if k.startswith("net.")}

    finetune = compose_config(["experiment=finetune", *TINY_2D, *FAST, "logger=none", "subtask=infection",
                               f"init_from={ssl_dir}"])
    assert finetune.name == "finetune_unet2d"
    module = instantiate(finetune.model.module)
    load_initial_weights(module, finetune.init_from)
    weights = module.net.state_dict()
    assert set(pretrained) < set(weights)  # + the deep-supervision heads, which pre-training has not
    assert all(torch.equal(weights[k], v) for k, v in pretrained.items())

    teacher = instantiate(method_config("mean_teacher", 2, data_root, "subtask=infection").model.module)
    load_initial_weights(teacher, str(ssl_dir))
    teacher.on_train_start()  # a fresh start: the teacher starts from the pre-trained student too
    assert all(torch.equal(teacher.teacher.state_dict()[k], v) for k, v in pretrained.items())


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_train_then_test_in_2d(method, data_root, tmp_path):
    extra = ["model.module.mc_samples=2"] if method == "ua_mt" else []
    cfg = method_config(method, 2, data_root, "subtask=infection", f"paths.output_dir={tmp_path}", *extra)
    if method == "dann":
        domain_split(cfg)
    summary = run(cfg)["test"]
    assert read_status(tmp_path)["state"] == "finished"
    if method == "ssl_pretrain":
        assert summary == {} and not (tmp_path / "metrics.csv").exists()
        return
    expected = cfg.data.split.test[COVID] if method == "dann" else official_split("task1", "infection", 0).test[COVID]
    assert summary[COVID]["LesionDSC"]["n"] + summary[COVID]["LesionDSC"]["nan"] == len(expected)


@pytest.mark.slow
def test_a_3d_method_from_the_command_line(data_root, tmp_path):
    env = {**os.environ, "COVLIGHT_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "covlight", "method=mean_teacher", *TINY[3], *FAST, "logger=csv",
               f"data.unlabelled.datasets=[{POOL}]", f"paths.output_root={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "task1" / "lung" / "mean_teacher_3d" / "fold0-seed0").iterdir()
    assert read_status(run_dir)["state"] == "finished"
    assert (run_dir / "metrics.csv").read_text().count("\n") == 1 + 16


# ------------------------------------------------------------------------ the README's worked example
README = REPO / "README.md"


def example_files() -> dict[str, str]:
    """The README's fenced blocks of the "Add a method" section whose first line names a file under mine/."""
    section = README.read_text(encoding="utf-8").split("## Add a method", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, flags=re.S):
        first, _, body = block.partition("\n")
        name = first.lstrip("# ").strip()
        if name.startswith("mine/"):
            files[name] = body
    return files


@pytest.mark.slow
def test_readme_method_example_trains_and_logs_its_losses(data_root, tmp_path):
    files = example_files()
    assert set(files) == {"mine/pseudo_label.py", "mine/method/pseudo_label.yaml"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    mine = tmp_path / "mine"
    overrides = ["method=pseudo_label", "subtask=infection", *TINY[2], *FAST, "logger=csv",
                 f"paths.data_dir={data_root}", f"data.unlabelled.datasets=[{POOL}]",
                 "model.module.threshold=0.5", f"paths.output_root={tmp_path / 'outputs'}"]
    env = {**os.environ, "PYTHONPATH": str(mine)}
    done = subprocess.run([sys.executable, "-m", "covlight", "--config-dir", str(mine), *overrides], cwd=REPO, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "task1" / "infection" / "pseudo_label_2d" / "fold0-seed0").iterdir()
    assert (run_dir / "metrics.csv").is_file()
    (logged,) = run_dir.glob("csv/**/metrics.csv")
    with open(logged, encoding="utf-8") as handle:
        columns = next(csv.reader(handle))
    assert {"train/supervised_loss_step", "train/unsupervised_loss_step"} <= set(columns), columns
    assert Path(run_dir / "config.yaml").read_text(encoding="utf-8").count("pseudo_label.PseudoLabel") == 1
