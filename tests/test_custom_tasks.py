"""Your own data: a folder of PNG slices (and one of volumes) imported, split into reproducible (grouped) folds or
by a split file, trained on through `python -m covlight task=custom`, reported, and applied to new images.

The slices are phantom CT slices cropped to odd sizes and saved as 8-bit pictures, two per "patient"
(`p<k>_s<z>`), so a grouping rule has something to keep together.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio
from hydra.utils import instantiate
from PIL import Image

from covlight import evaluate, predict
from covlight.config import check_combination
from covlight.data.canonical import read_dataset
from covlight.data.custom_split import custom_split, kfold, read_split_file
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.options import Slices
from covlight.data.transforms import ResizeSlice
from covlight.errors import ConfigError, DatasetError
from covlight.prepare import main as prepare
from covlight.splits import Split
from covlight.train import run
from tests.helpers.pictures import picture_of
from tests.helpers.runs import FAST, REPO, TINY_2D, compose_config

PATIENTS = 6
# in-plane crops (x, y) of the 64x64 phantom slices: odd sizes, several smaller than the 32x32 patch
CROPS = [(slice(5, 42), slice(3, 56)), (slice(10, 55), slice(0, 41)), (slice(0, 64), slice(20, 45)),
         (slice(2, 31), slice(8, 61))]
GROUP = r"^(p\d+)_"


def export_slices(phantom_root: Path, folder: Path, patients: range) -> list[str]:
    """PNG pictures and canonical-valued masks of two slices per phantom patient, as a user's folder holds them."""
    names = []
    for patient in patients:
        case = f"coronacases_{patient + 1:03d}"
        image = np.asarray(nib.load(phantom_root / "covid19_ct_seg" / "images" / f"{case}.nii.gz").dataobj)
        label = np.asarray(nib.load(phantom_root / "covid19_ct_seg" / "labels" / f"{case}.nii.gz").dataobj)
        for number, z in enumerate((image.shape[2] // 2 - 2, image.shape[2] // 2 + 2)):
            x, y = CROPS[(patient + number) % len(CROPS)]
            name = f"p{patient}_s{z}"
            for kind, array in (("images", np.round(image[x, y, z])), ("masks", label[x, y, z])):
                (folder / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture_of(array)).save(folder / kind / f"{name}.png")
            names.append(name)
    return names


def import_folder(src: Path, name: str, dest: Path, *extra: str) -> None:
    assert prepare(["folder", "--src", str(src), "--name", name, "--images", "images/*.png",
                    "--labels", "masks/*.png", "--intensity", "8bit", "--dest", str(dest), *extra]) == 0


@pytest.fixture(scope="module")
def slices(phantom_root, tmp_path_factory) -> dict[str, Path]:
    """A folder of PNG slices imported as `my_slices`; new pictures of other patients (raw and imported)."""
    root = tmp_path_factory.mktemp("own")
    export_slices(phantom_root, root / "raw", range(PATIENTS))
    export_slices(phantom_root, root / "new", range(PATIENTS, PATIENTS + 1))
    import_folder(root / "raw", "my_slices", root / "data")
    import_folder(root / "new", "new_slices", root / "data")
    return {"root": root, "data": root / "data", "raw": root / "raw", "new": root / "new"}


def split_of(data: Path, fold: int, **options):
    return custom_split(datasets=["my_slices"], root=str(data), fold=fold, num_folds=options.pop("num_folds", 5),
                        structures=["infection"], **options)


def test_imported_slices_keep_their_own_sizes_and_say_the_spacing_is_unknown(slices):
    dataset = read_dataset(slices["data"] / "my_slices")
    assert len(dataset.cases) == 2 * PATIENTS
    shapes = {tuple(entry["shape"]) for entry in dataset.cases.values()}
    assert (37, 53, 1) in shapes and len(shapes) == len(CROPS)
    assert dataset.meta["slices"]["spacing_given"] is False
    assert {entry["intensity"] for entry in dataset.cases.values()} == {"8bit"}


def test_generated_folds_are_fixed_for_a_seed():
    """The assignment for seed 0 is pinned: a change of the algorithm (or a hash that varies) is caught."""
    cases = [("d", f"case_{n:02d}") for n in range(12)]
    folds = kfold(cases, 5, seed=0)
    assert folds == kfold(list(reversed(cases)), 5, seed=0), "the order cases come in must not matter"
    assert [[c for _, c in fold] for fold in folds] == [
        ["case_04", "case_06", "case_07"],
        ["case_00", "case_09", "case_10"],
        ["case_02", "case_11"],
        ["case_01", "case_05"],
        ["case_03", "case_08"],
    ]
    assert kfold(cases, 5, seed=1) != folds


def test_generated_folds_cover_every_case_once_and_are_stable(slices):
    first = [split_of(slices["data"], fold) for fold in range(5)]
    again = [split_of(slices["data"], fold) for fold in range(5)]
    assert first == again
    held_out = [case for split in first for case in split.test["my_slices"]]
    assert sorted(held_out) == sorted(read_dataset(slices["data"] / "my_slices").cases)
    for split in first:
        assert split.val == {}, "a fold's held-out cases are test cases: nothing is selected on them"
        assert not set(split.train["my_slices"]) & set(split.test["my_slices"])
        assert len(split.test["my_slices"]) in (2, 3)


def test_grouped_folds_keep_each_patient_on_one_side(slices, tmp_path):
    def patient(case):
        return case.split("_")[0]

    for fold in range(5):
        split = split_of(slices["data"], fold, group_regex=GROUP)
        assert not {patient(c) for c in split.train["my_slices"]} & {patient(c) for c in split.test["my_slices"]}
    # the same grouping from a key of the case entries in dataset.json
    data = tmp_path / "data"
    (data / "my_slices").mkdir(parents=True)
    for part in ("images", "labels"):
        (data / "my_slices" / part).symlink_to(slices["data"] / "my_slices" / part)
    meta = json.loads((slices["data"] / "my_slices" / "dataset.json").read_text(encoding="utf-8"))
    for case, entry in meta["cases"].items():
        entry["patient"] = patient(case)
    (data / "my_slices" / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    by_key = [split_of(data, fold, group_key="patient") for fold in range(5)]
    assert by_key == [split_of(slices["data"], fold, group_regex=GROUP) for fold in range(5)]


def test_split_files_in_json_benchmark_and_pickle_form(slices, tmp_path):
    cases = sorted(read_dataset(slices["data"] / "my_slices").cases)
    nnunet = [{"train": cases[2:], "val": cases[:2]}, {"train": cases[:-3], "val": cases[-3:]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(nnunet), encoding="utf-8")
    split = split_of(slices["data"], 1, num_folds=2, split_file=str(tmp_path / "splits_final.json"))
    assert split.train == {"my_slices": cases[:-3]} and split.test == {"my_slices": cases[-3:]} and split.val == {}
    # the benchmark's Task3 form: a test list makes val an in-domain validation list; dataset/case names accepted
    task3 = [{"train": [f"my_slices/{c}" for c in cases[4:]], "val": cases[2:4], "test": cases[:2]}]
    (tmp_path / "task3.json").write_text(json.dumps(task3), encoding="utf-8")
    split = split_of(slices["data"], 0, num_folds=1, split_file=str(tmp_path / "task3.json"))
    assert (split.train, split.val, split.test) == (
        {"my_slices": cases[4:]}, {"my_slices": cases[2:4]}, {"my_slices": cases[:2]})
    # nnU-Net v1's splits_final.pkl: OrderedDicts of numpy string arrays, in both pickle protocols it used
    for protocol in (2, 4):
        folds = [OrderedDict(train=np.array(entry["train"]), val=np.array(entry["val"])) for entry in nnunet]
        (tmp_path / "splits_final.pkl").write_bytes(pickle.dumps(folds, protocol=protocol))
        assert read_split_file(tmp_path / "splits_final.pkl") == nnunet
    # a patient on both sides of a split file's fold is warned about
    split = split_of(slices["data"], 1, num_folds=2, split_file=str(tmp_path / "splits_final.json"),
                     group_regex=GROUP)
    assert split.warnings and "['p4']" in split.warnings[0]


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "splits_final.pkl"
    path.write_bytes(pickle.dumps([{"train": ["a"], "val": [Payload(marker)]}]))
    with pytest.raises(DatasetError, match=r"splits_final.pkl: refused \(it asks for (posix|nt).system"):
        read_split_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"split_file": "unknown.json", "num_folds": 2}, DatasetError, r"unknown.json names case\(s\) \['nobody'\]"),
        ({"split_file": "two.json", "num_folds": 2}, ConfigError, r"fold=2 is out of range: .* folds 0..1"),
        ({"split_file": "two.json"}, ConfigError, r"holds 2 fold\(s\) but task.num_folds=5: set task.num_folds=2"),
        ({"split_file": "missing.json"}, DatasetError, r"missing.json does not exist"),
        ({"group_regex": r"^(q\d+)_"}, DatasetError, r"does not match case 'p0_s[0-9]+' .*my_slices/dataset.json"),
        ({"group_regex": r"^p\d+_"}, ConfigError, r"has no capture group"),
        ({"group_key": "patient"}, DatasetError, r"has no 'patient' entry"),
        ({"num_folds": 7, "group_regex": GROUP}, ConfigError, r"6 patient groups cannot make 7 folds"),
    ],
)
def test_unusable_splits_name_the_file_and_the_fix(slices, tmp_path, options, error, message):
    cases = sorted(read_dataset(slices["data"] / "my_slices").cases)
    unknown = [{"train": cases[1:], "val": cases[:1]}, {"train": cases[1:], "val": ["nobody"]}]
    (tmp_path / "unknown.json").write_text(json.dumps(unknown), encoding="utf-8")
    (tmp_path / "two.json").write_text(json.dumps([{"train": cases[1:], "val": cases[:1]}] * 2), encoding="utf-8")
    if "split_file" in options:
        options["split_file"] = str(tmp_path / options["split_file"])
    fold = 2 if "two.json" in options.get("split_file", "") and options.get("num_folds") == 2 else 0
    with pytest.raises(error, match=message):
        split_of(slices["data"], fold, **options)


def test_custom_task_composes_instantiates_and_refuses_what_cannot_work(slices):
    common = ["task=custom", "task.name=my_slices", *TINY_2D, f"paths.data_dir={slices['data']}"]
    for subtask in ("lung", "infection", "lung_infection"):
        cfg = compose_config([*common, f"subtask={subtask}", "fold=4", f"task.group_regex='{GROUP}'"])
        check_combination(cfg)
        datamodule = instantiate(cfg.data)
        assert datamodule.split.test == split_of(slices["data"], 4, group_regex=GROUP).test
    for overrides, message in (
        (["task.name=task1"], "a benchmark task's name"),
        (["source=nsclc"], "drop source=nsclc"),
        (["fold=5"], r"folds 0..4: set fold=<k> \(got fold=5\)"),
        (["task.name=my slices"], "use letters, digits"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_combination(compose_config([*common, *overrides]))


def test_a_split_error_reaches_the_user_as_itself(slices, tmp_path):
    """Not wrapped in Hydra's InstantiationException: `python -m covlight` prints it as one clear line."""
    cfg = compose_config(["task=custom", "task.name=my_slices", *TINY_2D, *FAST, "logger=none",
                          f"task.split_file={tmp_path / 'nowhere.json'}", f"paths.data_dir={slices['data']}",
                          f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(DatasetError, match="nowhere.json does not exist"):
        run(cfg)


CUSTOM = ["task=custom", "task.name=my_slices", "subtask=infection", f"task.group_regex='{GROUP}'", *TINY_2D, *FAST,
          "logger=none", "data.slices.policy=resize", "data.slices.size=[48,40]", "data.preprocessing.intensity_scaling=zscore"]


@pytest.fixture(scope="module")
def custom_run(slices, tmp_path_factory) -> Path:
    """Fold 0 of the custom task trained in-process (slices resized to one size, z-scored): a finished run folder."""
    run_dir = tmp_path_factory.mktemp("custom_run") / "run"
    cfg = compose_config([*CUSTOM, "fold=0", f"paths.data_dir={slices['data']}", f"paths.output_dir={run_dir}"])
    with pytest.warns(UserWarning, match="my_slices: 2D slices without a pixel spacing, scored with spacing 1"):
        run(cfg)
    return run_dir


def test_a_fold_tests_its_held_out_cases_and_predicts_new_images(slices, custom_run, tmp_path, capsys):
    """The run tests exactly fold 0's held-out cases; it predicts new PNG pictures at their own sizes, and new
    labelled slices that covlight.evaluate scores."""
    held_out = split_of(slices["data"], 0, group_regex=GROUP).test["my_slices"]
    rows = (custom_run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert sorted(row.split(",")[0] for row in rows[1:]) == sorted(held_out)

    new = tmp_path / "new_predictions"
    assert predict.main(["--run", str(custom_run), "--input", str(slices["new"] / "images"), "--output", str(new),
                         "--probabilities"]) == 0
    for picture in sorted((slices["new"] / "images").iterdir()):
        with Image.open(picture) as source, Image.open(new / picture.name) as written:
            assert written.size == source.size
        assert np.load(new / "probabilities" / f"{picture.stem}_infection.npy").shape == source.size[::-1]
    scored = tmp_path / "scored"
    assert predict.main(["--run", str(custom_run), "--input", str(slices["data"] / "new_slices"),
                         "--output", str(scored)]) == 0
    assert evaluate.main(["--pred", str(scored), "--gt", str(slices["data"] / "new_slices"),
                          "--structures", "infection", "--out", str(tmp_path / "new.csv"), "--workers", "1"]) == 0
    header, *rows = (tmp_path / "new.csv").read_text(encoding="utf-8").splitlines()
    assert header == "Name,LesionDSC,LesionNSD-3mm" and len(rows) == 2
    assert "new_slices: 2D slices without a pixel spacing, scored with spacing 1" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_cross_validation_and_its_report(slices, tmp_path):
    """`python -m covlight -m ... fold=0,1`: one run folder per fold, each testing its held-out cases; the report
    shows the custom task's folds and what is missing, with no published baseline to compare."""
    outputs = tmp_path / "outputs"
    command = [sys.executable, "-m", "covlight", "-m", *CUSTOM, "fold=0,1", f"paths.data_dir={slices['data']}",
               f"paths.output_root={outputs}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((outputs / "my_slices" / "infection" / "unet2d").glob("fold*-seed0/*"))
    assert [run.parent.name for run in runs] == ["fold0-seed0", "fold1-seed0"]
    for fold, run_dir in enumerate(runs):
        held_out = split_of(slices["data"], fold, group_regex=GROUP).test["my_slices"]
        rows = (run_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()
        assert sorted(row.split(",")[0] for row in rows[1:]) == sorted(held_out)

    report = subprocess.run([sys.executable, "-m", "covlight.report", str(outputs), "--out", str(tmp_path / "rep")],
                            cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    markdown = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "my_slices · infection · unet2d: folds 2, 3, 4 missing" in markdown
    assert "| unet2d | – | 0, 1 | 2 | 6 |" in markdown  # our row; no published baseline exists for a custom task


def test_volumes_with_another_direction_split_and_predict_on_their_own_grid(phantom_root, custom_run, tmp_path):
    """A folder of LPS volumes: imported (made RAS+), split into folds like slices; a prediction of one of the
    original files lands on that file's grid (shape and affine)."""
    raw = tmp_path / "raw"
    for folder in ("images", "labels"):
        (raw / folder).mkdir(parents=True)
    for n in range(1, 6):
        case = f"coronacases_{n:03d}"
        for folder in ("images", "labels"):
            image = nib.load(phantom_root / "covid19_ct_seg" / folder / f"{case}.nii.gz").slicer[4:45, 7:60, 2:9]
            lps = image.as_reoriented(nib.orientations.axcodes2ornt("LPS"))
            nib.save(lps, raw / folder / f"scan{n}.nii.gz")
    assert prepare(["folder", "--src", str(raw), "--name", "my_volumes", "--images", "images/*.nii.gz",
                    "--labels", "labels/*.nii.gz", "--intensity", "window_0_255", "--dest", str(tmp_path / "d")]) == 0
    splits = [custom_split(["my_volumes"], str(tmp_path / "d"), fold, 5, ["left_lung", "right_lung"])
              for fold in range(5)]
    assert sorted(c for s in splits for c in s.test["my_volumes"]) == [f"scan{n}" for n in range(1, 6)]

    out = tmp_path / "pred"
    assert predict.main(["--run", str(custom_run), "--input", str(raw / "images" / "scan1.nii.gz"), "--output", str(out),
                         "--intensity", "window_0_255"]) == 0
    source, written = nib.load(raw / "images" / "scan1.nii.gz"), nib.load(out / "scan1.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")


def test_a_resized_slice_maps_back_onto_its_own_pixels():
    """data.slices.policy=resize: the resize for the net and the interpolation back to the slice's own size (as
    predictions go back) keep the field of view, so a shape lands where it was, not shifted by half a pixel."""
    mask = np.zeros((37, 53, 1), np.float32)
    mask[6:20, 30:47] = 1.0
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(mask)[None]), intensity="8bit")
    resized = ResizeSlice((48, 40))(subject)["image"].data.float()
    assert tuple(resized.shape) == (1, 48, 40, 1)
    back = torch.nn.functional.interpolate(resized[None], size=(37, 53, 1), mode="trilinear",
                                           align_corners=False)[0, 0].numpy() > 0.5
    assert (back == (mask > 0.5)).mean() > 0.97
    centre = np.argwhere(back).mean(0)
    np.testing.assert_allclose(centre, np.argwhere(mask > 0.5).mean(0), atol=0.5)
    volume = tio.Subject(image=tio.ScalarImage(tensor=torch.zeros(1, 37, 53, 4)), intensity="8bit")
    assert ResizeSlice((48, 40))(volume).spatial_shape == (37, 53, 4), "volumes are never resized"
    split = Split(train={}, val={}, test={})
    with pytest.raises(ConfigError, match="applies to data.slices.policy=resize only"):
        SegmentationDataModule(root="data", split=split, label_values=[0, 3], spatial_dims=2, patch_size=[32, 32, 1],
                               batch_size=2, slices={"size": [48, 40]})
    resized = SegmentationDataModule(root="data", split=split, label_values=[0, 3], spatial_dims=2,
                                     patch_size=[32, 32, 1], batch_size=2, slices=Slices(policy="resize"))
    assert resized.preprocessing_state()["slice_size"] == [32, 32], "resize defaults to the patch's in-plane size"
