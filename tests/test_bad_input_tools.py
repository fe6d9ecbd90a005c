"""Bad input at the tools' edges (issue 15 part 5), each tried as a new user would: one clear error naming the file
and the fix, nothing half-written that looks complete. The table of every bad input tried: docs/BAD_INPUT.md."""

from __future__ import annotations

import stat
import zipfile

import numpy as np
import pytest

from covlight.prepare import main as prepare
from tests.helpers import official_fakes as fakes


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


def folder_import(src, tmp_path, *extra):
    return ("folder", "--src", src, "--dest", tmp_path / "data", "--name", "mine", "--intensity", "hu",
            "--label-map", "1:1,2:2,3:3", *extra)


def test_nan_voxel_is_refused_at_import_and_again_on_rerun(scan, tmp_path, capsys):
    src, image, p = scan
    image[5, 5, 5] = np.nan
    fakes.save_lps(src / "images" / "c1.nii.gz", image, p.spacing, np.float32)
    for _ in range(2):  # a rerun does not take the refused scan as done
        line = prepare_fails(capsys, *folder_import(src, tmp_path))
        assert str(src / "images" / "c1.nii.gz") in line and "1 NaN or infinite voxel" in line
        assert not (tmp_path / "data" / "mine" / "images" / "c1.nii.gz").exists()


def test_same_case_in_two_formats_is_refused_naming_both(scan, tmp_path, capsys):
    src, image, p = scan
    fakes.save_lps(src / "images" / "c1.nii", image + 1.0, p.spacing, np.float32)
    line = prepare_fails(capsys, *folder_import(src, tmp_path))
    assert f"{src / 'images' / 'c1.nii'} and {src / 'images' / 'c1.nii.gz'} are both case 'c1'" in line
    assert "keep one" in line
    assert not (tmp_path / "data" / "mine").exists()


def test_label_without_an_image_is_an_error_listing_it(scan, tmp_path, capsys):
    src, image, p = scan
    fakes.save_lps(src / "labels" / "c2.nii.gz", p.label, p.spacing, np.uint8)
    line = prepare_fails(capsys, *folder_import(src, tmp_path))
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
    line = prepare_fails(capsys, *folder_import(archive, tmp_path))
    assert "archive member 'labels/c1.nii.gz' is a link" in line and "refused" in line and str(archive) in line
