"""`covlight.predict` on new scans: geometry round trips (volumes with other orientations, slices of odd sizes),
label formats, probabilities, failures, and the folders it refuses to write into.

The fast tests use runs made in-process with one training step (a real Lightning checkpoint, config.yaml and
status.json, as `python -m covlight` leaves them); the slow test trains through the CLI and checks that
prediction reproduces the run's own test predictions and can be scored by `covlight.evaluate`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from covlight import evaluate, predict
from covlight.config import write_status
from covlight.data.importers.checks import hu_of
from covlight.data.options import PREPROCESSING_KEY
from covlight.splits import COVID, official_split
from covlight.train import resolved_container
from tests.helpers.pictures import picture_of
from tests.helpers.runs import FAST, REPO, TINY_2D, TINY_3D, compose_config

FOLD0 = official_split("task1", "lung", 0)
HELD_OUT = FOLD0.test[COVID][:2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(phantom_root, tmp_path_factory) -> dict[str, Path]:
    """A 2D infection model (and a second one of another seed, for ensembles) and a 3D lung model, each one
    training step on task 1 fold 0's training cases (no test set: the fixture tests nothing), as finished runs."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, model, subtask in (("2d", TINY_2D, "infection"), ("2d_b", TINY_2D, "infection"),
                                 ("3d", TINY_3D, "lung")):
        run_dir = root / name
        cfg = compose_config(["task=task1", f"subtask={subtask}", *model, *FAST, "logger=none",
                              f"paths.data_dir={phantom_root}", f"paths.output_dir={run_dir}"])
        pl.seed_everything(1 if name == "2d_b" else 0, verbose=False)
        trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        config = {k: v for k, v in resolved_container(cfg).items() if k != "hydra"}
        split = {"_target_": "covlight.splits.Split", "_convert_": "all", "train": FOLD0.train, "val": {},
                 "test": {}}
        datamodule = instantiate({**config["data"], "split": split})
        trainer.fit(instantiate(cfg.model.module), datamodule=datamodule)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        write_status(run_dir, "finished")
        made[name] = run_dir
    return made


def phantom_hu(phantom_root: Path, case: str, crop=(slice(3, 48), slice(5, 56), slice(1, 18))):
    """A phantom case back in whole HU, cropped to an odd size: (nibabel image, label image), RAS."""
    image = nib.load(phantom_root / "covid19_ct_seg" / "images" / f"{case}.nii.gz")
    label = nib.load(phantom_root / "covid19_ct_seg" / "labels" / f"{case}.nii.gz")
    hu = np.round(hu_of(np.asarray(image.dataobj, dtype=np.float32))[crop]).astype(np.float32)
    return (nib.Nifti1Image(hu, image.slicer[crop].affine),
            nib.Nifti1Image(np.asarray(label.dataobj)[crop], label.slicer[crop].affine))


def reoriented(image: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    """The same voxels on a grid with other axis directions (e.g. LPS, or permuted axes)."""
    start = nib.orientations.io_orientation(image.affine)
    return image.as_reoriented(nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(axcodes)))


def itk_image(lps: nib.Nifti1Image) -> sitk.Image:
    """An LPS-oriented NIfTI as SimpleITK holds it: identity direction, origin in LPS world coordinates."""
    image = sitk.GetImageFromArray(np.asarray(lps.dataobj).transpose(2, 1, 0).astype(np.int16))
    image.SetSpacing([float(s) for s in lps.header.get_zooms()])
    image.SetOrigin([float(v) for v in np.diag([-1, -1, 1]) @ lps.affine[:3, 3]])
    return image


def write_dicom_series(volume: sitk.Image, folder: Path) -> None:
    """An axial CT series, one file per slice, with the tags SimpleITK's series reader sorts and places by."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        image = volume[:, :, k]
        position = "\\".join(str(v) for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"), ("0020|0032", position),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
                           ("0028|1052", "0"), ("0028|1053", "1")):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(image)


def test_volumes_land_on_their_own_grid_and_can_be_scored(runs, phantom_root, tmp_path):
    """HU volumes of odd sizes (NIfTI in RAS, LPS and permuted axes, MHA, a DICOM series): each output has the
    input's shape and affine, all give the very same prediction, and `covlight.evaluate` scores them."""
    inputs, truth = tmp_path / "scans", tmp_path / "truth"
    inputs.mkdir(), truth.mkdir()
    image, label = phantom_hu(phantom_root, HELD_OUT[0])
    for name, codes in (("ras", "RAS"), ("lps", "LPS"), ("permuted", "PLI")):
        nib.save(reoriented(image, codes), inputs / f"{name}.nii.gz")
        nib.save(reoriented(label, codes), truth / f"{name}.nii.gz")
    lps = reoriented(image, "LPS")
    sitk.WriteImage(itk_image(lps), str(inputs / "itk.mha"))
    write_dicom_series(itk_image(lps), inputs / "dicom")
    out = tmp_path / "pred"

    assert predict.main(["--run", str(runs["3d"]), "--input", str(inputs), "--output", str(out)]) == 0

    predictions = {}
    for name in ("ras", "lps", "permuted", "itk", "dicom"):
        source = lps if name in ("itk", "dicom") else nib.load(inputs / f"{name}.nii.gz")
        written = nib.load(out / f"{name}.nii.gz")
        assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-5), name
        assert written.get_data_dtype() == np.uint8
        predictions[name] = np.asarray(reoriented(written, "RAS").dataobj)
    assert set(np.unique(predictions["ras"])) <= {0, 1, 2}
    for name in ("lps", "permuted", "itk", "dicom"):
        np.testing.assert_array_equal(predictions[name], predictions["ras"], err_msg=name)
    for name in ("itk", "dicom"):
        (out / f"{name}.nii.gz").unlink()  # no truth files for these copies
    scores = tmp_path / "scores.csv"
    assert evaluate.main(["--pred", str(out), "--gt", str(truth), "--out", str(scores), "--workers", "1",
                          "--structures", "left_lung", "right_lung"]) == 0
    assert len(scores.read_text().splitlines()) == 4


def test_slices_round_trip_with_probabilities_and_benchmark_labels(runs, phantom_root, tmp_path):
    """PNG/JPG slices of odd sizes give PNG labels of their own size; the picture's axes map to the array's
    exactly as the importer maps them (a slice predicts the same as the equivalent one-slice NIfTI)."""
    stored = np.asarray(nib.load(phantom_root / "covid19_ct_seg" / "images" / f"{HELD_OUT[1]}.nii.gz").dataobj)
    stored = np.round(stored)
    slices = tmp_path / "slices"
    slices.mkdir()
    crops = {"a": (slice(5, 42), slice(0, 64), 9), "b": (slice(0, 64), slice(11, 30), 12)}  # 64x37, 19x64 pictures
    for name, (x, y, z) in crops.items():
        Image.fromarray(picture_of(stored[x, y, z])).save(slices / f"{name}.png")
    Image.fromarray(picture_of(stored[crops["a"][0], crops["a"][1], 9])).save(slices / "c.jpg", quality=100)
    volume = tmp_path / "volume"
    volume.mkdir()
    x, y, z = crops["a"]
    nib.save(nib.Nifti1Image(stored[x, y, z][:, :, None].astype(np.float32), np.eye(4)), volume / "a.nii.gz")

    out = tmp_path / "pred"
    assert predict.main(["--run", str(runs["2d"]), "--input", str(slices), "--output", str(out),
                         "--probabilities", "--mirror"]) == 0
    assert predict.main(["--run", str(runs["2d"]), "--input", str(volume), "--output", str(tmp_path / "vol"),
                         "--intensity", "8bit", "--mirror"]) == 0
    for name in ("a", "b", "c"):
        size = Image.open(slices / f"{name}.{'jpg' if name == 'c' else 'png'}").size
        with Image.open(out / f"{name}.png") as written:
            assert written.size == size and written.mode == "L"
            labels = np.asarray(written)
        assert set(np.unique(labels)) <= {0, 3}
        probability = np.load(out / "probabilities" / f"{name}_infection.npy")
        assert probability.shape == labels.shape and probability.dtype == np.float32
        assert ((probability > 0.5) == (labels == 3)).all()
    as_volume = np.asarray(nib.load(tmp_path / "vol" / "a.nii.gz").dataobj)[:, :, 0]
    np.testing.assert_array_equal(picture_of(as_volume), np.asarray(Image.open(out / "a.png")))

    benchmark = tmp_path / "benchmark"
    assert predict.main(["--run", str(runs["2d"]), "--input", str(slices), "--output", str(benchmark),
                         "--label-format", "benchmark", "--mirror"]) == 0
    for name in ("a", "b", "c"):
        canonical = np.asarray(Image.open(out / f"{name}.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(benchmark / f"{name}.png")), (canonical == 3) * 1)


def test_an_ensemble_predicts_the_mean_of_its_runs_probabilities(runs, phantom_root, tmp_path):
    """Two runs (`--run` twice, or a `--runs` glob): the probabilities are the mean of each run's own, the labels
    come from the mean."""
    stored = np.asarray(nib.load(phantom_root / "covid19_ct_seg" / "images" / f"{HELD_OUT[1]}.nii.gz").dataobj)
    slices = tmp_path / "slices"
    slices.mkdir()
    Image.fromarray(picture_of(np.round(stored[5:42, :, 9]))).save(slices / "a.png")
    own = {}
    for name in ("2d", "2d_b"):
        assert predict.main(["--run", str(runs[name]), "--input", str(slices), "--output", str(tmp_path / name),
                             "--probabilities"]) == 0
        own[name] = np.load(tmp_path / name / "probabilities" / "a_infection.npy")
    assert not np.allclose(own["2d"], own["2d_b"])  # two different models
    mean = (own["2d"] + own["2d_b"]) / 2
    runs_root = runs["2d"].parent
    for arguments in (["--run", str(runs["2d"]), "--run", str(runs["2d_b"])], ["--runs", str(runs_root / "2d*")]):
        out = tmp_path / f"ensemble{len(arguments)}"
        assert predict.main([*arguments, "--input", str(slices), "--output", str(out), "--probabilities"]) == 0
        probability = np.load(out / "probabilities" / "a_infection.npy")
        np.testing.assert_allclose(probability, mean, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")) == 3, probability > 0.5)


def test_an_ensemble_of_runs_that_differ_is_refused_naming_both(runs, phantom_root, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(phantom_hu(phantom_root, HELD_OUT[0])[0], inputs / "scan.nii.gz")
    code = predict.main(["--run", str(runs["2d"]), "--run", str(runs["3d"]), "--input", str(inputs), "--output",
                         str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2 and str(runs["2d"]) in message and str(runs["3d"]) in message and "structures" in message
    zscore = tmp_path / "zscore"  # the same model but for the intensity scaling its checkpoint records
    shutil.copytree(runs["2d_b"], zscore)
    checkpoint = torch.load(zscore / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint[PREPROCESSING_KEY]["intensity_scaling"] = "zscore"
    torch.save(checkpoint, zscore / "checkpoints" / "last.ckpt")
    code = predict.main(["--run", str(runs["2d"]), "--run", str(zscore), "--input", str(inputs), "--output",
                         str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2 and "intensity scaling (range vs zscore)" in message and str(zscore) in message
    assert not (tmp_path / "out").exists()
    assert predict.main(["--runs", str(tmp_path / "none*"), "--input", str(inputs), "--output",
                         str(tmp_path / "out")]) == 2
    assert "matches no run folder" in capsys.readouterr().err


def test_mirroring_never_swaps_left_and_right_lungs(runs):
    modules = {name: instantiate(OmegaConf.load(run / "config.yaml").model.module) for name, run in runs.items()}
    assert predict.mirror_axes(modules["2d"]) == (0, 1)  # infection: both in-plane axes
    assert predict.mirror_axes(modules["3d"]) == (1, 2)  # lungs: never across the left-right (x) axis


def test_preprocessing_is_read_from_its_own_checkpoint_entry(runs, phantom_root, tmp_path, capsys):
    """The checkpoint holds the data module's preprocessing under PREPROCESSING_KEY (not under the data module's
    class name); a checkpoint without it (an older covlight's) is refused, saying so."""
    checkpoint = torch.load(runs["3d"] / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint.pop(PREPROCESSING_KEY)
    assert state["intensity_scaling"] == "range" and len(state["target_spacing"]) == 3
    assert "SegmentationDataModule" not in checkpoint
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    image, _ = phantom_hu(phantom_root, HELD_OUT[0])
    nib.save(image, tmp_path / "scan.nii.gz")
    code = predict.main(["--ckpt", str(old), "--config", str(runs["3d"] / "config.yaml"),
                         "--input", str(tmp_path / "scan.nii.gz"), "--output", str(tmp_path / "out")])
    assert code == 2 and f"no '{PREPROCESSING_KEY}' entry" in capsys.readouterr().err


def test_benchmark_labels_keep_lungs_and_union_canonical():
    labels = np.array([0, 1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(predict.benchmark_labels(labels, [0, 1, 2]), labels)
    np.testing.assert_array_equal(predict.benchmark_labels(labels, [0, 1, 2, 3]), labels)
    np.testing.assert_array_equal(predict.benchmark_labels(np.array([0, 3], np.uint8), [0, 3]), [0, 1])


def test_a_folder_of_pictures_is_no_dicom_series_and_gdcm_says_nothing(tmp_path, capfd):
    """Looking for a DICOM series in a folder of PNGs finds none, without GDCM's "No Series were found" warning
    on stderr (ITK writes it from C++, so the file descriptor is captured)."""
    from covlight.scans import find_sources

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    sources = find_sources(tmp_path)
    assert [s.kind for s in sources] == ["slice"]
    assert "GDCM" not in capfd.readouterr().err


def test_a_bad_input_is_named_and_keep_going_predicts_the_rest(runs, phantom_root, tmp_path, capsys):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    image, _ = phantom_hu(phantom_root, HELD_OUT[0])
    (inputs / "a_damaged.nii.gz").write_bytes(b"not a nifti file")
    nib.save(image, inputs / "b_good.nii.gz")
    (inputs / "c_notes.txt").write_text("not an image")
    arguments = ["--run", str(runs["3d"]), "--input", str(inputs)]

    assert predict.main([*arguments, "--output", str(tmp_path / "stop")]) == 1
    assert "a_damaged.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "stop" / "b_good.nii.gz").exists()

    assert predict.main([*arguments, "--output", str(tmp_path / "all"), "--keep-going"]) == 1
    err = capsys.readouterr().err
    assert "a_damaged.nii.gz" in err and "c_notes.txt" in err and "unsupported" in err
    assert [p.name for p in (tmp_path / "all").iterdir()] == ["b_good.nii.gz"]


def test_refuses_the_input_folder_existing_outputs_and_unfinished_runs(runs, phantom_root, tmp_path, capsys):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    nib.save(phantom_hu(phantom_root, HELD_OUT[0])[0], inputs / "scan.nii.gz")
    arguments = ["--run", str(runs["3d"]), "--input", str(inputs)]
    for inside in (inputs, inputs / "predictions"):
        assert predict.main([*arguments, "--output", str(inside)]) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert predict.main(["--run", str(runs["3d"]), "--input", str(inputs / "scan.nii.gz"),
                         "--output", str(inputs)]) == 2
    assert sorted(p.name for p in inputs.iterdir()) == ["scan.nii.gz"]

    out = tmp_path / "pred"
    assert predict.main([*arguments, "--output", str(out)]) == 0
    before = (out / "scan.nii.gz").stat().st_mtime_ns
    assert predict.main([*arguments, "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "scan.nii.gz").stat().st_mtime_ns == before
    assert predict.main([*arguments, "--output", str(out), "--overwrite"]) == 0

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_status(unfinished, "running")
    assert predict.main(["--run", str(unfinished), "--input", str(inputs), "--output", str(tmp_path / "x")]) == 2
    assert "not a finished run" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model", ["2d", "3d"])
def test_cli_trained_run_predicts_as_its_own_test(model, phantom_root, tmp_path):
    """Train + test through the CLI, then `python -m covlight.predict` on the dataset folder reproduces the run's
    test predictions exactly, and its outputs score with `covlight.evaluate`."""
    env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
    overrides = TINY_2D if model == "2d" else TINY_3D
    train = [sys.executable, "-m", "covlight", "task=task1", "subtask=lung", "task.variant=train80", *overrides,
             *FAST, "logger=none", f"paths.output_root={tmp_path / 'outputs'}"]
    result = subprocess.run(train, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "task1_train80" / "lung" / f"unet{model}" / "fold0-seed0").iterdir()
    out = tmp_path / "pred"
    command = [sys.executable, "-m", "covlight.predict", "--run", str(run_dir),
               "--input", str(phantom_root / "covid19_ct_seg"), "--output", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tested = sorted((run_dir / "predictions" / COVID).glob("*.nii.gz"))
    assert tested
    for path in tested:
        np.testing.assert_array_equal(np.asarray(nib.load(out / path.name).dataobj),
                                      np.asarray(nib.load(path).dataobj), err_msg=path.name)
    assert evaluate.main(["--pred", str(out), "--gt", str(phantom_root / "covid19_ct_seg"), "--workers", "1",
                          "--structures", "left_lung", "right_lung", "--out", str(tmp_path / "scores.csv")]) == 0
