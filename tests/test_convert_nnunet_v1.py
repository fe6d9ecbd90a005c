"""`python -m covlight.convert nnunet-v1`: a v1 model folder, written as v1 writes it with v1's own Generic_UNet
(the test-only reference nnunet==1.7.1), becomes a covlight run whose network gives v1's outputs and whose
preprocessing gives v1's normalised arrays. Bad model folders and pickles carrying code are refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from covlight.convert.__main__ import main as convert
from covlight.convert.nnunet_v1 import v1_axes
from covlight.convert.unpickling import load_pickle, load_torch
from covlight.errors import DatasetError
from tests.helpers import nnunet_v1 as v1


def converted(tmp_path, dims, patch=None, orientation="LPS", **folder):
    """(v1 network, covlight net loaded from the converted run, run folder)."""
    plan = v1.plans(dims, patch)
    network = v1.v1_network(plan)
    fold = v1.write_model_folder(tmp_path / "models", plan, network, **folder)
    run = tmp_path / "run"
    assert convert(["nnunet-v1", str(fold), "--out", str(run), "--task", "task1", "--orientation", orientation]) == 0
    config = OmegaConf.load(run / "config.yaml")
    net = instantiate(config.model.module.net)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): w for k, w in state.items()})
    return network, net, run


def v1_input(x: torch.Tensor) -> torch.Tensor:
    """covlight's input (N, 1, x, y, z: RAS+, 0..1 of the [-1250, 250] window) as v1 fed its 3D net, for training
    images oriented LPS (ITK's identity direction): HU clipped and z-scored, flipped to L and P, axes z, y, x."""
    hu = x * 1500 - 1250
    normalised = (hu.clamp(v1.INTENSITY["percentile_00_5"], v1.INTENSITY["percentile_99_5"])
                  - v1.INTENSITY["mean"]) / v1.INTENSITY["sd"]
    return normalised.flip((2, 3)).permute(0, 1, 4, 3, 2)


def from_v1(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 1, 4, 3, 2).flip((2, 3))


def test_3d_outputs_equal_v1s_generic_unet(tmp_path):
    network, net, run = converted(tmp_path, 3)
    x = torch.rand(1, 1, 32, 64, 16, generator=torch.Generator().manual_seed(1))
    network.eval(), net.eval()
    network.do_ds = False  # v1's inference: the full-resolution logits only
    with torch.no_grad():
        expected = from_v1(network(v1_input(x)))
        got = net(x)
    assert got.shape == (1, 4, 32, 64, 16)
    assert (got - expected).abs().max().item() <= 1e-5
    # deep supervision (training mode): every resolution's logits, full resolution first, as v1 returns them
    network.train(), net.train()
    network.do_ds = True
    with torch.no_grad():
        expected_all = [from_v1(y) for y in network(v1_input(x))]
        got_all = net(x)
    assert len(got_all) == len(expected_all) == 5
    for got_level, expected_level in zip(got_all, expected_all, strict=True):
        assert (got_level - expected_level).abs().max().item() <= 1e-5
    conversion = json.loads((run / "conversion.json").read_text())
    assert conversion["trainer"] == "nnUNetTrainerV2" and conversion["labels"] == {"0": 0, "1": 1, "2": 2, "3": 3}
    assert conversion["intensity"].startswith("identical")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["identity"]["subtask"] == "lung_infection"


def test_2d_outputs_equal_v1s_generic_unet(tmp_path):
    network, net, run = converted(tmp_path, 2, patch=[64, 64])
    x = torch.rand(3, 1, 64, 96, generator=torch.Generator().manual_seed(2))  # covlight's 2D input: (x, y)
    network.eval(), net.eval()
    network.do_ds = False
    hu = x * 1500 - 1250
    normalised = (hu.clamp(-1017.0, 186.0) - v1.INTENSITY["mean"]) / v1.INTENSITY["sd"]
    with torch.no_grad():
        expected = network(normalised.flip((2, 3)).permute(0, 1, 3, 2)).permute(0, 1, 3, 2).flip((2, 3))
        got = net(x)
    assert (got - expected).abs().max().item() <= 1e-5
    assert OmegaConf.load(run / "config.yaml").model.patch_size == [64, 64, 1]


def test_classes_in_another_order_are_put_in_covlights(tmp_path):
    labels = {"0": "background", "1": "Infection", "2": "Right_Lung", "3": "left-lung"}
    network, net, run = converted(tmp_path, 2, patch=[64, 64], labels=labels)
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    network.eval(), net.eval()
    network.do_ds = False
    with torch.no_grad():
        hu = x * 1500 - 1250
        normalised = (hu.clamp(-1017.0, 186.0) - v1.INTENSITY["mean"]) / v1.INTENSITY["sd"]
        expected = network(normalised.flip((2, 3)).permute(0, 1, 3, 2)).permute(0, 1, 3, 2).flip((2, 3))
        got = net(x)
    # covlight's class k is canonical value k (0, left, right, infection); v1's were (0, infection, right, left)
    assert (got - expected[:, [0, 3, 2, 1]]).abs().max().item() <= 1e-5
    assert json.loads((run / "conversion.json").read_text())["labels"] == {"0": 0, "1": 3, "2": 2, "3": 1}


@pytest.mark.parametrize("codes", ["LPS", "RAS", "LAS", "PIR"])
def test_axes_follow_simpleitk_reading(tmp_path, codes):
    """v1 reads a file with SimpleITK (array z, y, x of the file's voxel order); covlight's array is RAS+ (x, y,
    z). The net's axis order and flips turn the second into the first."""
    sitk = pytest.importorskip("SimpleITK")
    ras = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(nib.orientations.apply_orientation(ras, ornt),
                             nib.orientations.inv_ornt_aff(ornt, ras.shape)), path)
    image = nib.load(path)
    assert "".join(nib.aff2axcodes(image.affine)) == codes
    canonical = np.asarray(nib.as_closest_canonical(image).dataobj)
    assert np.array_equal(canonical, ras)
    read_by_v1 = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    axes, flips = v1_axes(codes, [0, 1, 2])
    mapped = torch.from_numpy(ras).permute(*axes)
    mapped = mapped.flip([i for i, f in enumerate(flips) if f]) if any(flips) else mapped
    assert np.array_equal(mapped.numpy(), read_by_v1)


@pytest.mark.parametrize(("spacing", "high"), [
    ((0.78125, 0.78125, 2.5), 900.0),  # the plans' spacing: no resampling
    ((0.7, 0.7, 5.0), 240.0),  # anisotropic scan: splines in-plane, order 0 across slices
    ((0.6, 0.65, 0.8), 240.0),  # near-isotropic scan to the anisotropic target: the same, along the target's z
], ids=["at the plans' spacing", "thick slices", "thin slices"])
def test_preprocessing_equals_v1s_own(tmp_path, spacing, high):
    """One phantom CT in HU (LPS): v1's GenericPreprocessor on SimpleITK's array (resampled to the plans' spacing
    with its own rule) equals covlight.predict's preprocessing (HU -> stored window -> 0..1, resampled with
    data.preprocessing.resampling=nnunet_v1) followed by the net's own input step. Resampled phantoms stay inside
    covlight's HU window: v1 resamples unclipped HU, covlight the window, so splines near voxels above 250 HU
    differ (README)."""
    sitk = pytest.importorskip("SimpleITK")
    preprocessing = v1.reference("nnunet.preprocessing.preprocessing")
    from covlight.data.datamodule import image_preprocessing
    from covlight.predict import DEFAULT_INTENSITY
    from covlight.scans import find_sources, read_scan

    rng = np.random.default_rng(0)
    hu = rng.uniform(-1150, high, size=(48, 40, 12)).astype(np.float32)  # air to bone (and out of the window)
    hu[:, :, :4] = -1000.0
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # voxel axes L, P, S (ITK's identity direction)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), path)
    plan = v1.plans(3)
    image = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    processor = preprocessing.GenericPreprocessor(plan["normalization_schemes"], plan["use_mask_for_norm"],
                                                  plan["transpose_forward"],
                                                  plan["dataset_properties"]["intensityproperties"])
    properties = {"original_spacing": np.array(image.GetSpacing())[::-1]}
    expected, _, _ = processor.resample_and_normalize(data, plan["plans_per_stage"][0]["current_spacing"], properties)

    network, net, run = converted(tmp_path, 3)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["covlight_preprocessing"]
    source = find_sources(path)[0]
    scan = read_scan(source, DEFAULT_INTENSITY[source.kind])
    import torchio as tio

    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(scan.image)[None], affine=scan.affine),
                          intensity=scan.intensity)
    assert state["resampling"] == "nnunet_v1"
    steps = image_preprocessing(state["target_spacing"], state["slice_size"], state["intensity_scaling"],
                                state["histogram_landmarks"], state["resampling"])
    prepared = tio.Compose(steps)(subject)["image"].data.float()
    got = net.to_net(prepared[None])[0].numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


# ------------------------------------------------------------------------------------------------ bad input
class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "plans.pkl"
    path.write_bytes(pickle.dumps({"plans_per_stage": RunsCode()}))
    with pytest.raises(DatasetError, match=r"plans.pkl asks to run (posix|os)\.system"):
        load_pickle(path)
    assert not (tmp_path / "pwned").exists()
    model = tmp_path / "model_final_checkpoint.model"
    torch.save({"state_dict": {}, "plot_stuff": RunsCode()}, model)
    with pytest.raises(DatasetError, match="weights-only"):
        load_torch(model)
    assert not (tmp_path / "pwned").exists()


def test_v1s_own_pickles_load(tmp_path):
    """What v1 pickles (OrderedDicts, numpy arrays, numpy scalars) passes the restricted readers."""
    plan = v1.plans(2, [64, 64])
    fold = v1.write_model_folder(tmp_path, plan, v1.v1_network(plan))
    info = load_pickle(fold / "model_final_checkpoint.model.pkl")
    assert info["name"] == "nnUNetTrainerV2" and np.array_equal(info["plans"]["plans_per_stage"][0]["patch_size"],
                                                                [64, 64])
    assert load_torch(fold / "model_final_checkpoint.model")["plot_stuff"][0][0] == 0.5


@pytest.fixture()
def model_2d(tmp_path):
    plan = v1.plans(2, [64, 64])
    return v1.write_model_folder(tmp_path / "models", plan, v1.v1_network(plan))


def run_convert(fold, out, capsys, *extra):
    status = convert(["nnunet-v1", str(fold), "--out", str(out), "--task", "task1", "--orientation", "LPS", *extra])
    return status, capsys.readouterr().err


def test_missing_pkl_or_plans(model_2d, tmp_path, capsys):
    (model_2d / "model_final_checkpoint.model.pkl").rename(tmp_path / "kept.pkl")
    status, err = run_convert(model_2d, tmp_path / "run", capsys)
    assert status == 2 and "model_final_checkpoint.model.pkl: no such file" in err
    (tmp_path / "kept.pkl").rename(model_2d / "model_final_checkpoint.model.pkl")
    (model_2d.parent / "plans.pkl").unlink()
    status, err = run_convert(model_2d, tmp_path / "run", capsys)
    assert status == 2 and "plans.pkl: no such file" in err and "beside the fold folders" in err
    assert not (tmp_path / "run").exists()


def test_a_trainer_that_is_not_a_generic_unet_variant(tmp_path, capsys):
    plan = v1.plans(2, [64, 64])
    fold = v1.write_model_folder(tmp_path, plan, v1.v1_network(plan), trainer="nnUNetTrainerV2CascadeFullRes")
    status, err = run_convert(fold, tmp_path / "run", capsys)
    assert status == 2 and "trainer nnUNetTrainerV2CascadeFullRes is not one whose network covlight knows" in err


def test_labels_that_do_not_map(tmp_path, capsys):
    plan = v1.plans(2, [64, 64])
    labels = {"0": "background", "1": "lung", "2": "heart", "3": "infection"}
    fold = v1.write_model_folder(tmp_path, plan, v1.v1_network(plan), labels=labels)
    status, err = run_convert(fold, tmp_path / "run", capsys)
    assert status == 2 and "dataset.json: class 1 is 'lung'" in err and "--labels" in err
    (fold.parent.parent / "dataset.json").unlink()
    status, err = run_convert(fold, tmp_path / "run", capsys)
    assert status == 2 and "pass --dataset-json FILE" in err
    status, _ = run_convert(fold, tmp_path / "run", capsys, "--labels", "1=left_lung,2=right_lung,3=infection")
    assert status == 0


def test_an_existing_run_folder_is_never_overwritten(model_2d, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    status, err = run_convert(model_2d, tmp_path / "run", capsys)
    assert status == 2 and "not empty" in err and (tmp_path / "run" / "mine.txt").read_text() == "keep"


def test_predict_runs_a_converted_model(model_2d, tmp_path, capsys):
    """covlight.predict takes the converted run like any run: a prediction on the scan's own grid."""
    from covlight.predict import main as predict

    assert run_convert(model_2d, tmp_path / "run", capsys)[0] == 0
    hu = np.full((40, 36, 3), -1000.0, dtype=np.float32)
    nib.save(nib.Nifti1Image(hu, np.diag([0.78125, 0.78125, 2.5, 1.0])), tmp_path / "scan.nii.gz")
    status = predict(["--run", str(tmp_path / "run"), "--input", str(tmp_path / "scan.nii.gz"), "--output",
                      str(tmp_path / "pred"), "--device", "cpu"])
    assert status == 0
    prediction = nib.load(tmp_path / "pred" / "scan.nii.gz")
    assert prediction.shape == (40, 36, 3)
    shutil.rmtree(tmp_path / "pred")


@pytest.mark.slow
def test_a_converted_run_tests_and_fine_tunes_like_a_run(phantom_root, tmp_path):
    """README steps 4 and 5: the converted recipe tests on the fold's test cases (one metrics row each) and
    fine-tunes from the converted weights; both resample with v1's rule (a target anisotropic enough for order 0
    across slices), and the fine-tuning run records that rule in its checkpoint."""
    from covlight.train import run
    from tests.helpers.runs import compose_config

    plan = v1.plans(3, [16, 32, 32])
    plan["plans_per_stage"][0]["current_spacing"] = np.array([14.0, 4.0, 4.0])  # v1's z, y, x: coarse phantoms
    plan["base_num_features"] = 4  # a small net: the test is about the path, not the weights
    fold = v1.write_model_folder(tmp_path / "models", plan, v1.v1_network(plan))
    converted_run = tmp_path / "converted"
    assert convert(["nnunet-v1", str(fold), "--out", str(converted_run), "--task", "task1", "--orientation",
                    "LPS"]) == 0
    recipe = [f"hydra.searchpath=[file://{converted_run / 'recipes'}]", "experiment=nnunet_v1",
              f"paths.data_dir={phantom_root}", "print_config=false", "logger=csv", "trainer=debug",
              "data.sampling.num_workers=0", "model.module.inference.batch_size=4"]
    tested = run(compose_config([*recipe, "test_only=true", f"ckpt_path={converted_run / 'checkpoints/last.ckpt'}",
                                 f"paths.output_dir={tmp_path / 'tested'}"]))["test"]
    rows = (tmp_path / "tested" / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 == len(official_test_cases()) and tested
    run(compose_config([*recipe, f"init_from={converted_run}", "data.sampling.batches_per_epoch=2",
                        "data.sampling.samples_per_volume=2", "data.sampling.patch_buffer=4",
                        "data.validation.patches_per_case=1", "model.batch_size=2",
                        f"paths.output_dir={tmp_path / 'tuned'}"]))
    state = torch.load(tmp_path / "tuned" / "checkpoints" / "last.ckpt", weights_only=False)["covlight_preprocessing"]
    assert state["resampling"] == "nnunet_v1" and state["target_spacing"] == [4.0, 4.0, 14.0]


def official_test_cases() -> list[str]:
    from covlight.splits import official_split

    return [case for cases in official_split("task1", "lung", 0).test.values() for case in cases]
