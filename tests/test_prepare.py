"""Importers (`python -m covlight.prepare`): miniature fakes of each official download, the real samples in
../shared/data, reruns, subsets, interrupted runs, and each bad input's clear error."""

from __future__ import annotations

import json
import tarfile
import zipfile

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from covlight.data import canonical
from covlight.data.canonical import hu_to_0_255, read_dataset
from covlight.prepare import main
from covlight.splits import COVID_CASES, load_split_file
from tests.helpers import official_fakes as fakes

COVID_SUBSET = ["coronacases_001", "coronacases_002", "radiopaedia_10_85902_1"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def fails(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, out
    assert err.startswith("covlight.prepare: error: ") and "Traceback" not in err
    return err


def case(root, dataset: str, case_id: str):
    """(image array, label array or None, image affine) of an imported case."""
    image = nib.load(root / dataset / "images" / f"{case_id}.nii.gz")
    label_path = root / dataset / "labels" / f"{case_id}.nii.gz"
    label = np.asarray(nib.load(label_path).dataobj) if label_path.is_file() else None
    return np.asarray(image.dataobj), label, image.affine


def split_ids(*files: str) -> set[str]:
    return {c for name in files for lists in load_split_file(name) for c in lists["train"] + lists["val"]}


def assert_canonical(root, dataset: str):
    """Every case: RAS+ affine, float32 image in 0..255, canonical label values, left lung at lower x."""
    ds = read_dataset(root / dataset)
    for case_id in ds.cases:
        image, label, affine = case(root, dataset, case_id)
        assert nib.aff2axcodes(affine) == ("R", "A", "S")
        assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 255.0
        if label is not None:
            assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3}
            if (label == 1).any() and (label == 2).any():
                assert np.argwhere(label == 1)[:, 0].mean() < np.argwhere(label == 2)[:, 0].mean()
    return ds


@pytest.fixture(scope="module")
def covid_zips(tmp_path_factory):
    return fakes.covid_download(tmp_path_factory.mktemp("covid"), COVID_SUBSET)


# ---- COVID-19-CT-Seg --------------------------------------------------------------------------------------------


def test_covid_zips_become_canonical_cases_with_official_ids(covid_zips, tmp_path, capsys):
    out = ok(capsys, "covid19_ct_seg", "--src", covid_zips, "--dest", tmp_path)
    ds = assert_canonical(tmp_path, "covid19_ct_seg")
    assert set(ds.cases) == set(COVID_SUBSET) <= set(COVID_CASES) == split_ids("Task1_COVID_datasplit.json")
    for case_id in COVID_SUBSET:
        p = fakes.phantom(case_id)
        image, label, _ = case(tmp_path, "covid19_ct_seg", case_id)
        np.testing.assert_array_equal(label, p.label)
        if case_id.startswith("coronacases"):
            assert ds.cases[case_id]["intensity"] == "hu"
            np.testing.assert_allclose(image, hu_to_0_255(fakes.hu(p)), atol=1e-3)
        else:  # already 0..255: recognised and left alone
            assert ds.cases[case_id]["intensity"] == "window_0_255"
            np.testing.assert_array_equal(image, np.rint(hu_to_0_255(p.image_hu)))
    meta = ds.meta
    assert "zenodo.org/record/3757476" in meta["source"] and "CC BY" in meta["licence"]
    assert meta["annotated"] == ["left_lung", "right_lung", "infection"] and len(meta["source_fingerprint"]) == 64
    assert meta["missing_official_cases"] == [c for c in COVID_CASES if c not in COVID_SUBSET]
    assert ds.cases["coronacases_002"]["source_files"] == {  # zips with and without a folder inside
        "image": "COVID-19-CT-Seg_20cases.zip:COVID-19-CT-Seg_20cases/coronacases_002.nii.gz",
        "lung_infection": "Lung_and_Infection_Mask.zip:coronacases_002.nii.gz"}
    assert "coronacases_001: 64x64x" in out and "17 of the 20 official cases are missing" in out


def test_rerun_is_idempotent_and_another_source_needs_force(covid_zips, tmp_path, capsys):
    ok(capsys, "covid19_ct_seg", "--src", covid_zips, "--dest", tmp_path)
    dataset_json = (tmp_path / "covid19_ct_seg" / "dataset.json").read_bytes()
    image = tmp_path / "covid19_ct_seg" / "images" / "coronacases_001.nii.gz"
    written = image.stat().st_mtime_ns
    out = ok(capsys, "covid19_ct_seg", "--src", covid_zips, "--dest", tmp_path)
    assert "0 imported, 3 already done" in out and "radiopaedia_10_85902_1: already imported, skipped" in out
    assert (tmp_path / "covid19_ct_seg" / "dataset.json").read_bytes() == dataset_json
    assert image.stat().st_mtime_ns == written
    assert not list(tmp_path.glob(".covlight-extract-*"))  # staging removed

    other = fakes.covid_download(tmp_path / "other", COVID_SUBSET, seed=1)
    err = fails(capsys, "covid19_ct_seg", "--src", other, "--dest", tmp_path)
    assert "different source" in err and "--force" in err
    out = ok(capsys, "covid19_ct_seg", "--src", other, "--dest", tmp_path, "--force")
    assert "3 imported" in out
    assert json.loads((tmp_path / "covid19_ct_seg" / "dataset.json").read_bytes())["source_fingerprint"] != \
        json.loads(dataset_json)["source_fingerprint"]


def test_covid_lung_and_infection_masks_are_combined_from_folders(tmp_path, capsys):
    src = fakes.covid_download(tmp_path, ["coronacases_003"], zipped=False)
    for path in (src / "Lung_and_Infection_Mask").iterdir():
        path.unlink()
    (src / "Lung_and_Infection_Mask").rmdir()
    ok(capsys, "covid19_ct_seg", "--src", src, "--dest", tmp_path / "data")
    _, label, _ = case(tmp_path / "data", "covid19_ct_seg", "coronacases_003")
    np.testing.assert_array_equal(label, fakes.phantom("coronacases_003").label)


def test_interrupted_import_never_counts_a_half_written_case(covid_zips, tmp_path, capsys, monkeypatch):
    save, calls = canonical.save_nifti, []

    def killed_on_second_label(path, array, affine):
        calls.append(path)
        if len(calls) == 4:  # case 1: image, label; case 2: image, then the kill before its label
            raise KeyboardInterrupt
        save(path, array, affine)

    monkeypatch.setattr(canonical, "save_nifti", killed_on_second_label)
    with pytest.raises(KeyboardInterrupt):
        main(["covid19_ct_seg", "--src", str(covid_zips), "--dest", str(tmp_path)])
    monkeypatch.setattr(canonical, "save_nifti", save)
    root = tmp_path / "covid19_ct_seg"
    assert not (root / "dataset.json").exists()
    log = [json.loads(line) for line in (root / ".prepare-progress.jsonl").read_text().splitlines()]
    assert "import_options" in log[0] and [record["case"] for record in log[1:]] == ["coronacases_001"]
    assert (root / "images" / "coronacases_002.nii.gz").is_file()
    assert not (root / "labels" / "coronacases_002.nii.gz").exists()
    capsys.readouterr()
    out = ok(capsys, "covid19_ct_seg", "--src", covid_zips, "--dest", tmp_path)
    assert "coronacases_001: already imported, skipped" in out and "coronacases_002: 64x64x" in out
    assert "2 imported, 1 already done" in out and not (root / ".prepare-progress.jsonl").exists()
    assert_canonical(tmp_path, "covid19_ct_seg")


# ---- MosMed, StructSeg, NSCLC, MSD ---------------------------------------------------------------------------


def test_mosmed_labelled_and_unlabelled_pool(tmp_path, capsys):
    src = fakes.mosmed_download(tmp_path, ["study_0255", "study_0256"], {"study_0001": "CT-0", "study_0400": "CT-1"})
    out = ok(capsys, "mosmed", "--src", src, "--dest", tmp_path / "data")
    ds = assert_canonical(tmp_path / "data", "mosmed")
    assert set(ds.cases) == {"study_0255", "study_0256"} and ds.annotated == ["infection"]
    for case_id in ds.cases:
        _, label, _ = case(tmp_path / "data", "mosmed", case_id)
        np.testing.assert_array_equal(label, np.where(fakes.phantom(case_id).label == 3, 3, 0))
    assert "48 of the 50 official cases are missing" in out
    ok(capsys, "mosmed", "--src", src, "--dest", tmp_path / "data", "--unlabelled")
    pool = assert_canonical(tmp_path / "data", "mosmed_unlabelled")
    assert set(pool.cases) == {"study_0001", "study_0400"} and pool.annotated == []
    assert not any(pool.has_label(c) for c in pool.cases)


def test_structseg_lungs_and_gtv(tmp_path, capsys):
    src = fakes.structseg_download(tmp_path, [1, 2])
    out = ok(capsys, "structseg", "--src", src, "--dest", tmp_path / "data")
    lungs = assert_canonical(tmp_path / "data", "structseg_lung")
    gtv = assert_canonical(tmp_path / "data", "structseg_gtv")
    assert set(lungs.cases) == set(gtv.cases) == {"train_1", "train_2"}
    assert set(lungs.cases) <= split_ids("Task200_StructSegLung_datasplit.json", "Task203_StructSegTumor_datasplit.json")
    assert lungs.annotated == ["left_lung", "right_lung"] and gtv.annotated == ["infection"]
    for case_id in lungs.cases:
        p = fakes.phantom(case_id, "tumour")
        np.testing.assert_array_equal(case(tmp_path / "data", "structseg_lung", case_id)[1],
                                      np.where(p.label == 3, 0, p.label))  # heart and cord codes dropped
        np.testing.assert_array_equal(case(tmp_path / "data", "structseg_gtv", case_id)[1],
                                      np.where(p.label == 3, 3, 0))
    assert "48 of the 50 official cases are missing" in out
    ok(capsys, "structseg", "--src", src, "--dest", tmp_path / "gtv_only", "--part", "gtv")
    assert [p.name for p in (tmp_path / "gtv_only").iterdir()] == ["structseg_gtv"]


def test_nsclc_dicom_and_nifti_ct_with_plethora_masks(tmp_path, capsys):
    src = fakes.nsclc_download(tmp_path)
    ok(capsys, "nsclc", "--src", src, "--dest", tmp_path / "data")
    lungs = assert_canonical(tmp_path / "data", "nsclc_lung")
    effusion = assert_canonical(tmp_path / "data", "nsclc_effusion")
    assert set(lungs.cases) == set(effusion.cases) == {"LUNG1-001", "LUNG1-002"}
    assert set(lungs.cases) <= split_ids("Task201_NSCLCLung_datasplit.json")
    assert set(effusion.cases) <= split_ids("Task204_NSCLCPE_datasplit.json")
    assert "left_right" in lungs.meta["derived"]
    for case_id in lungs.cases:
        p = fakes.phantom(case_id, "effusion")
        image, label, _ = case(tmp_path / "data", "nsclc_lung", case_id)
        np.testing.assert_allclose(image, hu_to_0_255(fakes.hu(p)), atol=1e-3)  # DICOM and NIfTI alike
        assert lungs.cases[case_id]["left_right"] == "derived"
        np.testing.assert_array_equal(label > 0, p.label > 0)  # the cavity holds lungs and effusion
        assert (label[p.label == 1] == 1).all() and (label[p.label == 2] == 2).all()
        np.testing.assert_array_equal(case(tmp_path / "data", "nsclc_effusion", case_id)[1],
                                      np.where(p.label == 3, 3, 0))


def test_msd_tumour_from_tar_and_separate_lung_masks(tmp_path, capsys):
    archive, masks = fakes.msd_download(tmp_path, ["lung_001", "lung_003"])
    out = ok(capsys, "msd_lung", "--src", archive, "--dest", tmp_path / "data", "--lung-masks", masks)
    tumour = assert_canonical(tmp_path / "data", "msd_lung_tumour")
    lungs = assert_canonical(tmp_path / "data", "msd_lung")
    assert set(tumour.cases) == set(lungs.cases) == {"lung_001", "lung_003"}
    assert set(tumour.cases) <= split_ids("Task202_MSD_LungTumor_datasplit.json")
    for case_id in tumour.cases:
        p = fakes.phantom(case_id, "tumour")
        np.testing.assert_array_equal(case(tmp_path / "data", "msd_lung_tumour", case_id)[1],
                                      np.where(p.label == 3, 3, 0))
        np.testing.assert_array_equal(case(tmp_path / "data", "msd_lung", case_id)[1],
                                      np.where(p.label == 3, 0, p.label))
    assert "61 of the 63 official cases are missing" in out


# ---- folder: any pairs, and the real samples --------------------------------------------------------------------


def write_itk(path, canonical_array, spacing, dtype):
    """Save a canonical (RAS+) array as an LPS file through SimpleITK (NRRD, MHA)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(canonical_array[::-1, ::-1].astype(dtype)).transpose(2, 1, 0))
    image.SetSpacing([float(s) for s in spacing])
    sitk.WriteImage(image, str(path))


def test_folder_volumes_with_label_map_and_lung_split(tmp_path, capsys):
    p = fakes.phantom("train_1", "tumour")  # lungs apart: they split by components
    (tmp_path / "src").mkdir()
    write_itk(tmp_path / "src" / "scan_a.mha", fakes.hu(p), p.spacing, np.int16)
    write_itk(tmp_path / "src" / "mask_a.nrrd", np.select([p.label == 3, p.label > 0], [2, 1], 0), p.spacing, np.uint8)
    out = ok(capsys, "folder", "--src", tmp_path / "src", "--dest", tmp_path / "data", "--name", "mine",
             "--images", "scan_*.mha", "--labels", "mask_*.nrrd", "--label-map", "1:1,2:3", "--split-lungs",
             "--intensity", "hu", "--licence", "CC0")
    ds = assert_canonical(tmp_path / "data", "mine")
    assert list(ds.cases) == ["a"] and ds.annotated == ["left_lung", "right_lung", "infection"]
    assert "connected components" in ds.meta["derived"]["left_right"] and ds.meta["licence"] == "CC0"
    label = case(tmp_path / "data", "mine", "a")[1]
    np.testing.assert_array_equal(label > 0, p.label > 0)
    assert (label != p.label).sum() <= 5  # a few specks near the midline may join the other lung: nearer to it
    assert "left_right: derived" in out


def test_cip_chest_ct_nrrd_with_cip_region_codes(shared_data, tmp_path, capsys):
    cip = shared_data / "cip_chest_ct64"
    ok(capsys, "folder", "--src", cip / "original", "--dest", tmp_path, "--name", "cip_chest_ct64",
       "--images", "ct-*.nrrd", "--labels", "lm-*.nrrd", "--cip-regions", "--intensity", "hu",
       "--licence", "CIP licence (BSD-style)")
    ds = assert_canonical(tmp_path, "cip_chest_ct64")
    image, label, affine = case(tmp_path, "cip_chest_ct64", "64")
    derived = nib.as_closest_canonical(nib.load(cip / "derived" / "lung_left1_right2-64.nii.gz"))
    ct = nib.as_closest_canonical(nib.load(cip / "derived" / "ct-64.nii.gz"))
    np.testing.assert_array_equal(label, np.asarray(derived.dataobj))
    np.testing.assert_allclose(image, hu_to_0_255(np.asarray(ct.dataobj)), atol=1e-3)
    np.testing.assert_allclose(affine, derived.affine, atol=1e-3)
    assert ds.cases["64"]["shape"] == [64, 64, 79] and ds.cases["64"]["intensity"] == "hu"


def test_png_slices_with_both_lungs_mask_and_infection(shared_data, tmp_path, capsys):
    src = shared_data / "covid_ctseg_png256_case01"
    ok(capsys, "folder", "--src", src, "--dest", tmp_path, "--name", "covid_png", "--images", "ct/*.png",
       "--labels", "lungs/*.png", "--label-map", "255:1", "--labels", "infection/*.png", "--label-map", "255:3",
       "--split-lungs", "--intensity", "8bit")
    ds = assert_canonical(tmp_path, "covid_png")
    assert len(ds.cases) == len(list((src / "ct").glob("*.png"))) == 159
    assert ds.meta["slices"]["spacing_given"] is False and ds.cases["0080"]["spacing"] == [1.0, 1.0, 1.0]
    image, label, _ = case(tmp_path, "covid_png", "0080")
    picture = np.asarray(Image.open(src / "ct" / "0080.png"))
    np.testing.assert_array_equal(image[:, :, 0], picture[::-1, ::-1].T)  # radiological: image left = patient right
    infection = np.asarray(Image.open(src / "infection" / "0080.png")) > 0
    assert (label == 3).sum() == infection.sum()
    columns = np.nonzero(label[:, :, 0].T[::-1, ::-1] == 1)[1]  # back in the picture's frame
    assert columns.mean() > 128, "the left lung is on the image's right"
    sides = sum(np.bincount(case(tmp_path, "covid_png", c)[1].ravel(), minlength=4)[1:3] for c in ("0040", "0080"))
    assert sides[1] > sides[0], "the right lung is the larger"


# ---- errors: one clear message naming the file and the fix --------------------------------------------------------


@pytest.fixture
def covid_folders(tmp_path):
    return fakes.covid_download(tmp_path, ["coronacases_001"], zipped=False)


def test_corrupt_and_unsafe_archives(tmp_path, capsys):
    src = tmp_path / "zips"
    src.mkdir()
    good = fakes.covid_download(tmp_path / "good", ["coronacases_001"])
    data = (good / "COVID-19-CT-Seg_20cases.zip").read_bytes()
    (src / "COVID-19-CT-Seg_20cases.zip").write_bytes(data[: len(data) // 2])
    (src / "Lung_and_Infection_Mask.zip").write_bytes((good / "Lung_and_Infection_Mask.zip").read_bytes())
    err = fails(capsys, "covid19_ct_seg", "--src", src, "--dest", tmp_path / "data")
    assert "COVID-19-CT-Seg_20cases.zip" in err and "corrupt" in err and "download it again" in err

    (src / "COVID-19-CT-Seg_20cases.zip").write_bytes(data)
    with zipfile.ZipFile(src / "Lung_and_Infection_Mask.zip", "a") as archive:
        archive.writestr("../../evil.nii.gz", b"x")
    err = fails(capsys, "covid19_ct_seg", "--src", src, "--dest", tmp_path / "data")
    assert "Lung_and_Infection_Mask.zip" in err and "outside the extraction folder" in err
    assert not (tmp_path / "evil.nii.gz").exists() and not (tmp_path / "data" / "covid19_ct_seg").exists()

    link = tmp_path / "Task06_Lung.tar"
    with tarfile.open(link, "w") as archive:
        member = tarfile.TarInfo("Task06_Lung/imagesTr/lung_001.nii.gz")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(member)
    err = fails(capsys, "msd_lung", "--src", link, "--dest", tmp_path / "data")
    assert "Task06_Lung.tar" in err and "link" in err


def test_corrupt_member_names_the_member(tmp_path, capsys):
    src = fakes.covid_download(tmp_path, ["coronacases_001"])
    path = src / "Lung_and_Infection_Mask.zip"
    data = bytearray(path.read_bytes())
    start = data.index(b"coronacases_001.nii.gz") + 40  # inside the member's compressed bytes
    data[start:start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    err = fails(capsys, "covid19_ct_seg", "--src", src, "--dest", tmp_path / "data")
    assert "Lung_and_Infection_Mask.zip" in err and ("corrupt" in err or "damaged" in err)


@pytest.fixture
def mask(covid_folders):
    """(path, array, affine) of the fake's Lung_and_Infection_Mask of coronacases_001, to be spoilt."""
    path = covid_folders / "Lung_and_Infection_Mask" / "coronacases_001.nii.gz"
    image = nib.load(path)
    return path, np.asarray(image.dataobj), image.affine


def spoil(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), path)


def import_covid(capsys, src, tmp_path) -> str:
    return fails(capsys, "covid19_ct_seg", "--src", src, "--dest", tmp_path / "data")


def test_geometry_mismatch(covid_folders, mask, tmp_path, capsys):
    path, label, affine = mask
    spoil(path, label[:, :-2], affine)
    err = import_covid(capsys, covid_folders, tmp_path)
    assert str(path) in err and "shape" in err and "does not belong to this image" in err
    shifted = affine.copy()
    shifted[0, 3] += 3.0
    spoil(path, label, shifted)
    err = import_covid(capsys, covid_folders, tmp_path)
    assert str(path) in err and "origin offset 3" in err


def test_unexpected_and_fractional_label_values(covid_folders, mask, tmp_path, capsys):
    path, label, affine = mask
    spoil(path, np.where(label == 3, 7, label).astype(np.uint8), affine)
    err = import_covid(capsys, covid_folders, tmp_path)
    assert str(path) in err and "unexpected label values [7]" in err
    spoil(path, label.astype(np.float32) * 0.5, affine)
    err = import_covid(capsys, covid_folders, tmp_path)
    assert str(path) in err and "fractional" in err


def test_left_right_contradicting_anatomy_stops(covid_folders, mask, tmp_path, capsys):
    path, label, affine = mask
    spoil(path, np.where(label == 1, 2, np.where(label == 2, 1, label)).astype(np.uint8), affine)
    err = import_covid(capsys, covid_folders, tmp_path)
    assert str(path) in err and "left/right label codes are swapped" in err and "left lung has the smaller x" in err


def test_missing_files(covid_folders, mask, tmp_path, capsys):
    mask[0].unlink()
    (covid_folders / "Lung_Mask" / "coronacases_001.nii.gz").unlink()  # no fallback either
    err = import_covid(capsys, covid_folders, tmp_path)
    assert "coronacases_001" in err and "Lung_Mask + Infection_Mask" in err and "Add the mask" in err
    err = import_covid(capsys, covid_folders / "Lung_Mask", tmp_path)
    assert "COVID-19-CT-Seg_20cases" in err and "zenodo.org/record/3757476" in err


def test_hu_check_and_one_sided_lung_mask(tmp_path, capsys):
    p = fakes.phantom("train_2", "tumour")
    for name, array in (("images/a.nii.gz", hu_to_0_255(p.image_hu)), ("labels/a.nii.gz", p.label)):
        fakes.save_lps(tmp_path / "src" / name, array, p.spacing, array.dtype)
    common = ("folder", "--src", tmp_path / "src", "--dest", tmp_path / "data", "--name", "x")
    err = fails(capsys, *common, "--intensity", "hu")
    assert "images/a.nii.gz" in err and "not a CT in Hounsfield units" in err and "window_0_255" in err
    err = fails(capsys, *common, "--intensity", "window_0_255", "--label-map", "1:1,2:1,3:3")
    assert "labels/a.nii.gz" in err and "only the left lung" in err and "--split-lungs" in err
    ok(capsys, *common, "--intensity", "window_0_255", "--label-map", "1:1,2:1,3:3", "--split-lungs")
    err = fails(capsys, *common, "--intensity", "window_0_255")
    assert "different source" in err and "other options" in err


def test_touching_lungs_cannot_be_split(tmp_path, capsys):
    p = fakes.phantom("study_0255")  # its lungs touch behind the sternum
    fakes.save_lps(tmp_path / "src" / "images" / "a.nii.gz", fakes.hu(p), p.spacing, np.int16)
    fakes.save_lps(tmp_path / "src" / "labels" / "a.nii.gz", p.label > 0, p.spacing, np.uint8)
    err = fails(capsys, "folder", "--src", tmp_path / "src", "--dest", tmp_path / "data", "--name", "x",
                "--intensity", "hu", "--split-lungs")
    assert "labels/a.nii.gz" in err and "one connected region" in err


def test_bad_label_map_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["folder", "--src", str(tmp_path), "--name", "x", "--intensity", "hu", "--label-map", "1=3"])
    assert stop.value.code == 2 and "SOURCE:TARGET" in capsys.readouterr().err
