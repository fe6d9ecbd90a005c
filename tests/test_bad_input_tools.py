"""Bad input at the tools' edges (issue 15 part 5), each tried as a new user would: one clear error naming the file
and the fix, nothing half-written that looks complete. The table of every bad input tried: docs/BAD_INPUT.md."""

from __future__ import annotations

import errno
import json
import re
import shutil
import stat
import subprocess
import zipfile

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from covlight.config import check_combination
from covlight.errors import ConfigError, DatasetError, disk_full
from covlight.evaluate import main as evaluate_main
from covlight.predict import main as predict_main
from covlight.prepare import main as prepare
from covlight.report.__main__ import main as report_main
from covlight.splits import COVID, official_split
from covlight.train import resolved_container
from tests.helpers import official_fakes as fakes
from tests.helpers.run_folders import COLUMNS, fake_rows, make_run
from tests.helpers.runs import compose_config
from tests.test_bad_input import covlight_cli, error_line


def prepare_fails(capsys, *argv) -> str:
    """Run `covlight.prepare`; it must exit 2 with one error line and no traceback; returns that line."""
    assert prepare([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("covlight.prepare: error: "), line
    return line


# ---- the folder importer ---------------------------------------------------------------------------------------

@pytest.fixture
def scan(tmp_path):
    """A folder-importer source: images/c1.nii.gz (HU) and labels/c1.nii.gz; returns (src, HU array, label)."""
    p = fakes.phantom("train_1", "tumour")
    src = tmp_path / "src"
    fakes.save_lps(src / "images" / "c1.nii.gz", fakes.hu(p), p.spacing, np.float32)
    fakes.save_lps(src / "labels" / "c1.nii.gz", p.label, p.spacing, np.uint8)
    return src, fakes.hu(p).astype(np.float32), p


def folder_import(src, dest, *extra):
    return ("folder", "--src", src, "--dest", dest, "--name", "mine", "--intensity", "hu",
            "--label-map", "1:1,2:2,3:3", *extra)


def test_nan_voxel_is_refused_at_import_and_again_on_rerun(scan, tmp_path, capsys):
    src, image, p = scan
    image[5, 5, 5] = np.nan
    fakes.save_lps(src / "images" / "c1.nii.gz", image, p.spacing, np.float32)
    for _ in range(2):  # a rerun does not take the refused scan as done
        line = prepare_fails(capsys, *folder_import(src, tmp_path / "data"))
        assert str(src / "images" / "c1.nii.gz") in line and "1 NaN or infinite voxel" in line
        assert not (tmp_path / "data" / "mine" / "images" / "c1.nii.gz").exists()


def test_same_case_in_two_formats_is_refused_naming_both(scan, tmp_path, capsys):
    src, image, p = scan
    fakes.save_lps(src / "images" / "c1.nii", image + 1.0, p.spacing, np.float32)
    line = prepare_fails(capsys, *folder_import(src, tmp_path / "data"))
    assert f"{src / 'images' / 'c1.nii'} and {src / 'images' / 'c1.nii.gz'} are both case 'c1'" in line
    assert "keep one" in line
    assert not (tmp_path / "data" / "mine").exists()


def test_label_without_an_image_is_an_error_listing_it(scan, tmp_path, capsys):
    src, image, p = scan
    fakes.save_lps(src / "labels" / "c2.nii.gz", p.label, p.spacing, np.uint8)
    line = prepare_fails(capsys, *folder_import(src, tmp_path / "data"))
    assert str(src / "labels" / "c2.nii.gz") in line and "no image" in line and "'images/*'" in line
    assert not (tmp_path / "data" / "mine").exists()


def test_zip_symlink_member_is_refused_as_a_link(scan, tmp_path, capsys):
    src, image, p = scan
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(src / "images" / "c1.nii.gz", "images/c1.nii.gz")
        link = zipfile.ZipInfo("labels/c1.nii.gz")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(link, "/etc/passwd")
    line = prepare_fails(capsys, *folder_import(archive, tmp_path / "data"))
    assert "archive member 'labels/c1.nii.gz' is a link" in line and "refused" in line and str(archive) in line


# ---- the report --------------------------------------------------------------------------------------------------

def report(capsys, root, out) -> tuple[int, str]:
    code = report_main([str(root), "--out", str(out)])
    return code, capsys.readouterr().err


def metrics_text(rows) -> str:
    lines = [",".join(["Name", "dataset", *COLUMNS])]
    lines += [",".join([case, dataset, *("" if np.isnan(v) else repr(float(v)) for v in values)])
              for case, dataset, values in rows]
    return "\n".join(lines) + "\n"


@pytest.fixture
def two_runs(tmp_path):
    """Fold 0 of unet2d and unet3d, each with every test case of its split; returns (root, good run, spoilt run)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "outputs"
    good = make_run(root, "unet2d", 0, rows=fake_rows(rng, "unet2d", 0))
    spoilt = make_run(root, "unet3d", 0, rows=fake_rows(rng, "unet3d", 0))
    return root, good, spoilt


def test_report_refuses_a_metrics_csv_cut_off_mid_row(two_runs, tmp_path, capsys):
    root, good, spoilt = two_runs
    text = (spoilt / "metrics.csv").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    (spoilt / "metrics.csv").write_text("".join(lines[:9]) + lines[9][:30], encoding="utf-8")  # 8 rows and a bit
    code, err = report(capsys, root, tmp_path / "report")
    assert code == 1 and "Traceback" not in err
    assert f"{spoilt / 'metrics.csv'}: line 10 has another number of cells than the header" in err
    report_md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| unet3d |" not in report_md and "| unet2d |" in report_md
    assert f"`{spoilt}`: unreadable metrics.csv: {spoilt / 'metrics.csv'}: line 10" in report_md

    shutil.rmtree(good)  # alone, it is no report at all, and the one line names the file
    code, err = report(capsys, root, tmp_path / "alone")
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"unreadable metrics.csv: {spoilt / 'metrics.csv'}: line 10" in line


def test_report_refuses_a_run_without_every_test_case_of_its_split(two_runs, tmp_path, capsys):
    root, good, spoilt = two_runs
    rows = fake_rows(np.random.default_rng(1), "unet3d", 0)
    (spoilt / "metrics.csv").write_text(metrics_text(rows[:9]), encoding="utf-8")  # 9 of the fold's 16, no MosMed
    code, err = report(capsys, root, tmp_path / "report")
    assert code == 1
    missing = official_split("task1", "lung_infection", 0).test[COVID][9]
    assert (f"{spoilt / 'metrics.csv'}: 9 of the 16 covid19_ct_seg test cases of task1 fold 0 (missing {missing}"
            in err) and "not pooled" in err
    assert "| unet3d |" not in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    (spoilt / "metrics.csv").write_text(metrics_text(rows[:16]), encoding="utf-8")  # MosMed not imported: fine
    assert report_main([str(root), "--out", str(tmp_path / "report2")]) == 0
    (spoilt / "metrics.csv").write_text(metrics_text(rows + rows[:1]), encoding="utf-8")
    code, err = report(capsys, root, tmp_path / "report3")
    assert code == 1 and f"case(s) {rows[0][0]} more than once" in err


def test_report_refuses_a_score_outside_0_1(two_runs, tmp_path, capsys):
    root, good, spoilt = two_runs
    rows = fake_rows(np.random.default_rng(1), "unet3d", 0)
    rows[3][2][0] = 7.5
    (spoilt / "metrics.csv").write_text(metrics_text(rows), encoding="utf-8")
    code, err = report(capsys, root, tmp_path / "report")
    assert code == 1
    assert f"{spoilt / 'metrics.csv'}: L-lungDSC of {rows[3][0]} is 7.5, outside 0..1" in err
    assert "191.8" not in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")


# ---- a full disk -------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB file system (a tmpfs: root only), unmounted afterwards; skipped where mounting is not permitted."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a file a failed test left open


def fill(folder, leave: int = 0) -> None:
    """Fill the file system of `folder` up to `leave` bytes."""
    with open(folder / "filler", "wb") as handle:
        try:
            handle.write(bytes(max(shutil.disk_usage(folder).free - leave, 0)))
            handle.flush()
        except OSError:
            pass


def disk_full_line(err: str, prog: str) -> str:
    assert "Traceback" not in err and "Errno 28" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert re.search(r"could not be written: No space left on device \(\d+ kB free in .*\)\. Free some space", line)
    return line


def partial_files(folder) -> list:
    return [path for path in folder.rglob("*") if path.name.startswith(".partial") or ".covlight-extract" in str(path)]


def test_disk_full_in_prepare(scan, small_disk, tmp_path, capsys):
    src, image, p = scan
    fill(small_disk, 30_000)
    assert prepare([str(a) for a in folder_import(src, small_disk)]) == 2
    line = disk_full_line(capsys.readouterr().err, "covlight.prepare")
    assert str(small_disk / "mine") in line and ".partial" not in line
    assert not partial_files(small_disk) and not (small_disk / "mine" / "dataset.json").exists()


def test_disk_full_in_evaluate(phantom_root, small_disk, capsys):
    gt = phantom_root / COVID
    out = small_disk / "scores.csv"
    fill(small_disk)
    assert evaluate_main(["--pred", str(gt / "labels"), "--gt", str(gt), "--cases", "coronacases_001",
                          "--workers", "1", "--out", str(out)]) == 2
    line = disk_full_line(capsys.readouterr().err, "covlight.evaluate")
    assert f"error: {out} could not be written" in line
    assert not out.exists() and not partial_files(small_disk)


def test_disk_full_in_training(phantom_root, small_disk):
    """Training writes its folder, then the checkpoint of the first epoch, which the disk cannot hold."""
    fill(small_disk, 60_000)
    result = covlight_cli(phantom_root, small_disk, "trainer.max_epochs=2")
    assert result.returncode == 2, result.stderr[-3000:]
    line = disk_full_line(result.stderr, "covlight")
    (run_dir,) = [path.parent for path in small_disk.rglob("status.json")]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "could not be written" in status["error"], status
    assert not partial_files(small_disk)
    config = run_dir / "config.yaml"
    assert not config.exists() or yaml.safe_load(config.read_text())["fold"] == 0  # whole, or not there
    assert str(run_dir) in line


def test_evaluate_out_is_a_folder(phantom_root, tmp_path, capsys):
    gt = phantom_root / COVID
    folder = tmp_path / "scores"
    folder.mkdir()
    assert evaluate_main(["--pred", str(gt / "labels"), "--gt", str(gt), "--cases", "coronacases_001",
                          "--workers", "1", "--out", str(folder), "--force"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--out {folder} is a folder: give the CSV's file name" in err
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


# ---- config values -----------------------------------------------------------------------------------------------

def test_negative_batch_size_names_the_key(tmp_path):
    result = covlight_cli(tmp_path, tmp_path / "out", "model.batch_size=-3")
    line = error_line(result)
    assert "model.batch_size=-3: give the number of patches per batch and process, 1 or more" in line
    assert not list((tmp_path / "out").rglob("status.json"))  # no run folder claimed


def test_task_name_nan_stays_a_string(tmp_path):
    """Hydra's override grammar reads `nan` as a float; the task schema types the key, so it stays the name."""
    cfg = compose_config(["task=custom", "task.name=nan"])
    assert cfg.task.name == "nan" and list(cfg.task.datasets) == ["nan"]
    assert cfg.run_id == "nan/lung/unet3d/fold0-seed0"
    with pytest.raises(ConfigError, match="unknown task 'nan'; choose one of task1, task2, task3, or task=custom"):
        check_combination(compose_config(["task.name=nan"]))


# ---- a .ckpt that is not a checkpoint: every way in goes through load_checkpoint ----------------------------------

@pytest.fixture
def not_a_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"PK\x03\x04 this was never a checkpoint")
    return path


@pytest.mark.parametrize("overrides", [["init_from={ckpt}"], ["ckpt_path={ckpt}"],
                                       ["test_only=true", "ckpt_path={ckpt}"]])
def test_a_file_that_is_not_a_checkpoint_in_a_run(overrides, not_a_checkpoint, phantom_root, tmp_path):
    result = covlight_cli(phantom_root, tmp_path / "out", *(o.format(ckpt=not_a_checkpoint) for o in overrides))
    line = error_line(result)
    assert f"{not_a_checkpoint} is damaged or not a checkpoint" in line and "IndexError" not in result.stderr
    (status,) = (tmp_path / "out").rglob("status.json")
    assert json.loads(status.read_text())["state"] == "failed"


def test_a_file_that_is_not_a_checkpoint_in_predict(not_a_checkpoint, phantom_root, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    cfg = compose_config(["model=unet2d", f"paths.output_dir={tmp_path / 'run'}"])
    config.write_text(OmegaConf.to_yaml({k: v for k, v in resolved_container(cfg).items() if k != "hydra"}))
    code = predict_main(["--ckpt", str(not_a_checkpoint), "--config", str(config),
                         "--input", str(phantom_root / COVID), "--output", str(tmp_path / "preds")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"covlight.predict: error: {not_a_checkpoint} is damaged or not a checkpoint" in err
    assert not (tmp_path / "preds").exists()


def test_disk_full_follows_a_looping_chain_of_errors():
    """`raise error.__cause__ from None` (instantiate_data) makes a chain that loops: still an answer, at once."""
    cause = DatasetError("the split file does not exist")
    effect = RuntimeError("instantiating failed")
    effect.__cause__, cause.__context__ = cause, effect
    assert disk_full(cause) is None
    full = OSError(errno.ENOSPC, "No space left on device")
    effect.__context__ = full
    assert "could not be written: No space left on device" in str(disk_full(cause, folder="/"))
