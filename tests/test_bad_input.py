"""Bad input on the training and test path: one clear DatasetError naming the file and the fix, never a riddle.

Covered elsewhere: importer input (corrupt archives, an "hu" scan with no air, label values, geometry:
test_prepare.py), prediction folders with missing or extra cases (test_evaluate.py), an unknown case id in a split
and a missing data root (test_train_e2e.py), a config override naming a missing option (test_config.py), the tools'
edges (NaN scans at import, a full disk, a damaged metrics.csv in the report, files that are no checkpoint:
test_bad_input_tools.py). The table of all of them: docs/BAD_INPUT.md.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from covlight.__main__ import unwrapped
from covlight.callbacks.scoring import load_truth
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.options import Sampling, Validation
from covlight.errors import DatasetError
from covlight.splits import COVID, Split, official_split
from tests.helpers.runs import REPO

CASE = "coronacases_002"
OTHER = "coronacases_001"


@pytest.fixture
def root(phantom_root, tmp_path) -> Path:
    """A private copy of the phantom datasets root, to be spoilt."""
    shutil.copytree(phantom_root, tmp_path / "data")
    return tmp_path / "data"


def image_path(root: Path, case: str = CASE) -> Path:
    return root / COVID / "images" / f"{case}.nii.gz"


def label_path(root: Path, case: str = CASE) -> Path:
    return root / COVID / "labels" / f"{case}.nii.gz"


def rewrite(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Save `path` again with a new array and/or affine (the others kept)."""
    image = nib.load(path)
    array = np.asarray(image.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(array, image.affine if affine is None else affine), path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def load_everything(root: Path, train=(OTHER, CASE), test=(OTHER,), num_workers: int = 0) -> None:
    """What a run reads: setup, a training batch, the validation patches (training cases), every test case."""
    datamodule = SegmentationDataModule(
        root=str(root), split=Split(train={COVID: list(train)}, val={}, test={COVID: list(test)}),
        label_values=[0, 1, 2], spatial_dims=2, patch_size=[32, 32, 1], batch_size=2,
        sampling=Sampling(batches_per_epoch=1, samples_per_volume=1, patch_buffer=1, num_workers=num_workers),
        validation=Validation(patches_per_case=1))
    datamodule.setup("fit")
    next(iter(datamodule.train_dataloader()))
    datamodule.val_dataloader()
    for _ in datamodule.test_dataloader():
        pass


def fails_naming(root: Path, path: Path, *phrases: str, **kwargs) -> str:
    with pytest.raises(DatasetError) as error:
        load_everything(root, **kwargs)
    message = str(error.value)
    assert str(path) in message and all(phrase in message for phrase in phrases), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("role", ["train", "test"])
def test_truncated_nifti_is_damaged_not_zero_filled(root, role):
    """TorchIO's default SimpleITK reader would zero-fill the missing half and train on it without a word."""
    truncate(image_path(root))
    split = {"train": (OTHER, CASE), "test": (CASE,)} if role == "test" else {}
    fails_naming(root, image_path(root), "damaged or incomplete", "re-run the import", **split)


def test_file_that_is_not_nifti(root):
    label_path(root).write_bytes(b"not a nifti file")
    fails_naming(root, label_path(root), "cannot be read", "re-run the import")


@pytest.mark.parametrize("shape", ["2D", "4D"])
def test_image_must_be_a_3d_volume(root, shape):
    array = np.asarray(nib.load(image_path(root)).dataobj)
    rewrite(image_path(root), array[:, :, 5] if shape == "2D" else np.stack([array, array], axis=-1))
    fails_naming(root, image_path(root), "expected a 3D volume", "Re-import")


def test_2d_label_for_a_3d_image(root):
    rewrite(label_path(root), np.asarray(nib.load(label_path(root)).dataobj)[:, :, 5])
    fails_naming(root, label_path(root), "shape (64, 64) differs from the image's", str(image_path(root)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels(root, value):
    """(SimpleITK's NIfTI reader would have turned them into 0.)"""
    array = np.asarray(nib.load(image_path(root)).dataobj).copy()
    array[10, 10, 5] = value
    rewrite(image_path(root), array)
    fails_naming(root, image_path(root), "NaN or infinite voxels", "re-run the import")


def test_label_values_outside_the_canonical_set(root):
    array = np.asarray(nib.load(label_path(root)).dataobj).copy()
    array[0, 0, 0] = 7
    rewrite(label_path(root), array)
    fails_naming(root, label_path(root), "unexpected label values [7]", "Re-import with the right label mapping")


def spoil_grid(path: Path, what: str) -> str:
    """Move the label off its image's grid in one way; returns what the message must say."""
    image = nib.load(path)
    array, affine = np.asarray(image.dataobj), image.affine.copy()
    if what == "shape":
        rewrite(path, array[:, :-1])
        return "shape (64, 63, "
    if what == "spacing":
        affine[0, 0] *= 1.1
        rewrite(path, affine=affine)
        return "spacing ["
    if what == "origin":
        affine[1, 3] += 3.0
        rewrite(path, affine=affine)
        return "origin is 3 mm away"
    affine[:3, 0] = -affine[:3, 0]
    rewrite(path, affine=affine)
    return "direction (axis orientation) differs"


@pytest.mark.parametrize("what", ["shape", "spacing", "origin", "direction"])
def test_image_and_label_on_different_grids(root, what):
    phrase = spoil_grid(label_path(root), what)
    fails_naming(root, label_path(root), phrase, str(image_path(root)), "must share one grid", "re-import")


@pytest.mark.parametrize("which", ["image", "label"])
def test_case_in_split_but_absent_on_disk(root, which):
    path = image_path(root) if which == "image" else label_path(root)
    path.unlink()
    fails_naming(root, path, "missing on disk", "Re-run the import")


def test_empty_dataset_folder(root):
    shutil.rmtree(root / COVID)
    (root / COVID).mkdir()
    fails_naming(root, root / COVID / "dataset.json", "is missing", "Re-run the import")


@pytest.mark.parametrize("problem", ["truncated", "values"])
def test_test_case_label_read_for_scoring(root, problem):
    """A test case's label is first read whole when its prediction is scored."""
    path = label_path(root)
    if problem == "truncated":
        truncate(path)
        phrase = "damaged or incomplete"
    else:
        array = np.asarray(nib.load(path).dataobj).copy()
        array[0, 0, 0] = 9
        rewrite(path, array)
        phrase = "unexpected label values [9]"
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*" + re.escape(phrase)):
        load_truth(str(path), torch.device("cpu"))


class Failing(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise DatasetError("/data/x.nii.gz: something is wrong. Fix it.")


def test_error_from_a_loader_worker_is_unwrapped():
    """torch re-raises a worker's error with the worker's whole traceback as its message; the CLI shows the original."""
    with pytest.raises(DatasetError) as error:
        next(iter(DataLoader(Failing(), num_workers=1)))
    assert "Traceback" in str(error.value)
    clean = unwrapped(error.value)
    assert type(clean) is DatasetError and str(clean) == "/data/x.nii.gz: something is wrong. Fix it."
    plain = DatasetError("plain")
    assert unwrapped(plain) is plain


# ---- through the command line: one line on stderr, exit status 2, no traceback --------------------------------

TINY_2D = [
    "model=unet2d", "model.patch_size=[32,32,1]", "model.batch_size=4",
    "model.module.net.features_per_stage=[8,16,32]", "model.module.net.strides=[1,2,2]",
    "trainer=debug", "data.sampling.batches_per_epoch=2", "data.sampling.samples_per_volume=2", "data.sampling.patch_buffer=4",
    "data.validation.patches_per_case=1", "print_config=false", "logger=none",
]


def covlight_cli(root: Path, output_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COVLIGHT_DATA": str(root)}
    command = [sys.executable, "-m", "covlight", *TINY_2D, *overrides, f"paths.output_root={output_root}"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("covlight: error:")]
    return line


@pytest.mark.parametrize(("override", "key", "kind"), [("trainer.max_epochs=1.5", "trainer.max_epochs", "Integer"),
                                                        ("model.batch_size=x", "model.batch_size", "Integer")])
def test_override_of_the_wrong_type(override, key, kind, phantom_root, tmp_path):
    """Hydra refuses it while composing (the schemas of covlight/schema.py): nothing starts, no folder is made."""
    result = covlight_cli(phantom_root, tmp_path, override)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"Error merging override {override}" in result.stderr
    assert f"could not be converted to {kind}" in result.stderr and f"full_key: {key}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_damaged_training_case_read_in_a_loader_worker(root, tmp_path):
    """Validation off, so the training cases are first read in the training loader's worker process."""
    for case in official_split("task1", "lung", 0).train[COVID]:
        truncate(image_path(root, case))
    result = covlight_cli(root, tmp_path / "out", "data.sampling.num_workers=1", "trainer.limit_val_batches=0")
    line = error_line(result)
    assert "damaged or incomplete" in line and str(root / COVID / "images") in line
    assert not list((tmp_path / "out").rglob("metrics.csv"))


# ---- every command-line tool: a user's mistake is one line and exit status 2; a bug is not a user's mistake ------

def one_error_line(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"{prog}: error: "), line
    return line


def test_a_mistake_in_the_run_config_exits_2_with_one_line(tmp_path):
    result = covlight_cli(tmp_path, tmp_path / "out", "source=structseg")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "drop source=structseg" in one_error_line(result.stderr, "covlight")


@pytest.mark.parametrize("tool, argv, phrase", [
    ("prepare", ["covid19_ct_seg", "--src", "{tmp}/nowhere"], "does not exist"),
    ("evaluate", ["--pred", "{tmp}/nowhere", "--gt", "{tmp}"], "does not exist"),
    ("report", ["{tmp}/nowhere", "--out", "{tmp}/report"], "no such folder"),
    ("predict", ["--run", "{tmp}", "--input", "{tmp}", "--output", "{tmp}/out"], "not a finished run"),
    ("phantoms", ["--out", "{tmp}/data", "--cases", "21"], "--cases must be 1..20"),
    ("demo", ["--data", "{tmp}", "--outputs", "{tmp}/outputs"], "is not empty"),
])
def test_each_tool_exits_2_with_one_line_for_a_mistake(tool, argv, phrase, tmp_path, capsys):
    (tmp_path / COVID).mkdir()
    (tmp_path / COVID / "notes.txt").write_text("not a phantom dataset")  # the demo's data folder, taken
    main = importlib.import_module(f"covlight.{tool}{'.__main__' if tool == 'report' else ''}").main
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    assert phrase in one_error_line(capsys.readouterr().err, f"covlight.{tool}")


def test_a_bug_is_not_reported_as_a_users_mistake(tmp_path):
    """A ValueError from a bug keeps its traceback and exit status 1, in the run and in a tool."""
    boom = "def boom(*args, **kwargs):\n    raise ValueError('a bug')\n"
    run = (f"import covlight.train\n{boom}covlight.train.run = boom\n"
           "from covlight.__main__ import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", run, "logger=none", f"paths.output_root={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "a bug" in result.stderr, result.stderr[-3000:]
    assert "covlight: error:" not in result.stderr
    prepare = (f"import covlight.prepare\n{boom}covlight.prepare.Staging = boom\n"
               f"covlight.prepare.main(['covid19_ct_seg', '--src', '{tmp_path}', '--dest', '{tmp_path}/data'])\n")
    result = subprocess.run([sys.executable, "-c", prepare], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ValueError: a bug" in result.stderr
    assert "error:" not in result.stderr.replace("ValueError: a bug", "")
