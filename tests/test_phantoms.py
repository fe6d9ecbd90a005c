"""Phantom generator: determinism, anatomy a threshold cannot solve, both layouts on disk, the CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from covlight.benchmark import COVID_CASES
from covlight.data.canonical import hu_to_0_255, read_dataset
from covlight.data.synthetic import (
    case_ids,
    lungs_with_lesions,
    make_phantom,
    write_phantom_dataset,
)
from covlight.errors import DatasetError
from covlight.phantoms import main


@pytest.fixture(scope="module")
def small_covid():
    return [make_phantom(case, 0, size="small") for case in COVID_CASES]


def x_centroid(mask: np.ndarray) -> float:
    return float(np.argwhere(mask)[:, 0].mean())


def interior_air(phantom, k: int) -> np.ndarray:
    """Air in slice k that is not connected (in-plane) to the air outside the body."""
    components, _ = ndimage.label(phantom.image_hu[:, :, k] < -400)
    border = np.unique(np.concatenate([components[[0, -1]].ravel(), components[:, [0, -1]].ravel()]))
    return (components > 0) & ~np.isin(components, border)


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    first, again = (make_phantom("radiopaedia_4_85506_1", 7, size="small") for _ in range(2))
    assert first.image_hu.tobytes() == again.image_hu.tobytes()
    assert first.label.tobytes() == again.label.tobytes() and first.spacing == again.spacing
    for other in (make_phantom("radiopaedia_4_85506_1", 8, size="small"), make_phantom("coronacases_001", 7, size="small")):
        assert other.image_hu.shape != first.image_hu.shape or not np.array_equal(other.image_hu, first.image_hu)


def test_arrays_labels_and_grids(small_covid):
    shapes = set()
    for phantom in small_covid:
        assert phantom.image_hu.dtype == np.float32 and phantom.label.dtype == np.uint8
        assert set(np.unique(phantom.label)) == {0, 1, 2, 3}
        nx, ny, nz = phantom.label.shape
        assert (nx, ny) == (64, 64) and 16 <= nz <= 24
        assert 5.5 <= phantom.spacing[0] == phantom.spacing[1] <= 6.5
        shapes.add((nz, phantom.spacing))
    assert len(shapes) > 5  # spacing and slice count vary across cases
    demo = make_phantom("coronacases_001", 0)
    assert demo.image_hu.shape[:2] == (128, 128) and 28 <= demo.image_hu.shape[2] <= 44
    assert 2.6 <= demo.spacing[0] <= 3.2 and 5.0 <= demo.spacing[2] <= 8.0
    lung_fraction = np.isin(demo.label, (1, 2, 3)).sum(axis=(0, 1)).max() / 128**2
    assert 0.15 < lung_fraction < 0.45  # lungs fill a realistic part of the slice


def test_left_lung_at_low_x_and_right_lung_larger(small_covid):
    for phantom in small_covid:
        lungs = lungs_with_lesions(phantom.label, "covid")
        assert x_centroid(lungs == 1) < phantom.label.shape[0] / 2 < x_centroid(lungs == 2)
        assert (lungs == 2).sum() > 1.05 * (lungs == 1).sum()


def test_trachea_is_air_but_not_lung(small_covid):
    for phantom in small_covid:
        air = interior_air(phantom, phantom.label.shape[2] - 1)  # top slice: above the lungs' apices or beside them
        trachea = air & (phantom.label[:, :, -1] == 0)
        assert trachea.sum() >= 1
        assert abs(x_centroid(trachea) - 31.5) < 12  # near the middle


def test_intensities_overlap_between_structures(small_covid):
    """What makes a threshold fail: lesions span ground-glass to soft tissue, as vessels and the heart do."""
    lesion = np.concatenate([p.image_hu[p.label == 3] for p in small_covid])
    assert np.mean(lesion < -300) > 0.2 and np.mean(lesion > -100) > 0.05
    bright_lung = np.concatenate([p.image_hu[np.isin(p.label, (1, 2))] for p in small_covid])
    assert np.mean(bright_lung > -300) > 0.01  # vessels are lung


def test_lesion_burden_varies(small_covid):
    burden = [(p.label == 3).sum() / (p.label > 0).sum() for p in small_covid]
    assert min(burden) < 0.03 and max(burden) > 0.12


@pytest.mark.parametrize("kind", ["tumour", "effusion"])
def test_non_covid_kinds(kind):
    for case in case_ids(kind, 2):
        phantom = make_phantom(case, 0, kind=kind)
        lesion = phantom.label == 3
        lungs = np.isin(phantom.label, (1, 2))
        assert lesion.any() and x_centroid(phantom.label == 1) < x_centroid(phantom.label == 2)
        core = ndimage.binary_erosion(lesion, ndimage.generate_binary_structure(3, 1)[:, :, 1:2])  # in-plane
        assert -60 < np.median(phantom.image_hu[core if core.any() else lesion]) < 80  # solid or fluid, not GGO
        if kind == "tumour":
            assert ndimage.label(lesion)[1] == 1
        else:  # dependent: behind the lungs' centre
            assert np.argwhere(lesion)[:, 1].mean() < np.argwhere(lungs)[:, 1].mean()


def test_canonical_dataset(tmp_path):
    out = tmp_path / "phantoms"
    write_phantom_dataset(out, cases=3, size="small", progress=False)
    dataset = read_dataset(out)
    assert dataset.name == "phantom_covid" and list(dataset.cases) == list(COVID_CASES[:3])
    assert dataset.annotated == ["left_lung", "right_lung", "infection"]
    assert dataset.meta["licence"] == "CC0 (synthetic)" and dataset.meta["source"] == "covlight.phantoms"
    for case, entry in dataset.cases.items():
        assert entry["intensity"] == "hu"
        image = nib.load(dataset.image_path(case))
        assert np.allclose(image.affine.diagonal()[:3], entry["spacing"]) and (image.affine.diagonal() > 0).all()
        data = np.asarray(image.dataobj)
        assert data.dtype == np.float32 and data.min() >= 0 and data.max() <= 255
        phantom = make_phantom(case, 0, size="small")
        assert np.array_equal(data, hu_to_0_255(phantom.image_hu))
        assert np.array_equal(np.asarray(nib.load(dataset.label_path(case)).dataobj), phantom.label)


def test_official_layout_and_orientation(tmp_path):
    cases = ["coronacases_002", "radiopaedia_29_86490_1"]
    write_phantom_dataset(tmp_path, cases=cases, size="small", layout="official", progress=False)
    for case, stem in zip(cases, ["coronacases_org_002", "radiopaedia_29_86490_1"], strict=True):
        phantom = make_phantom(case, 0, size="small")
        image = nib.load(tmp_path / "COVID-19-CT-Seg_20cases" / f"{stem}.nii.gz")
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # not canonical: the importer must reorient
        data = np.asarray(nib.as_closest_canonical(image).dataobj)
        if case.startswith("coronacases"):
            assert data.dtype == np.int16 and data.min() < -900 and data.max() > 200  # raw HU
        else:
            assert data.min() >= 0 and data.max() <= 255  # already windowed
        masks = {folder: np.asarray(nib.as_closest_canonical(nib.load(tmp_path / folder / f"{case}.nii.gz")).dataobj)
                 for folder in ("Lung_Mask", "Infection_Mask", "Lung_and_Infection_Mask")}
        assert np.array_equal(masks["Lung_and_Infection_Mask"], phantom.label)
        assert np.array_equal(masks["Infection_Mask"], (phantom.label == 3).astype(np.uint8))
        lungs = masks["Lung_Mask"]
        assert set(np.unique(lungs)) == {0, 1, 2} and np.array_equal(lungs > 0, phantom.label > 0)
        assert x_centroid(lungs == 1) < x_centroid(lungs == 2)  # left lung at low x once in RAS+


def test_refuses_a_folder_holding_something_else(tmp_path):
    out = tmp_path / "data"
    write_phantom_dataset(out, cases=2, size="small", progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    write_phantom_dataset(out, cases=2, size="small", progress=False)  # same arguments: nothing to do
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(DatasetError, match="seed 0 .asked: 1"):
        write_phantom_dataset(out, cases=2, seed=1, size="small", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a covlight phantom dataset"):
        write_phantom_dataset(other, cases=2, size="small", progress=False)


def test_cli_writes_dataset_and_montage(tmp_path, capsys):
    out, png = tmp_path / "msd", tmp_path / "montage.png"
    assert main(["--out", str(out), "--cases", "2", "--size", "small", "--kind", "tumour", "--montage", str(png)]) == 0
    assert list(read_dataset(out).cases) == ["phantom_tumour_001", "phantom_tumour_002"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "dataset.json").read_text())["phantom"] == {"kind": "tumour", "size": "small", "seed": 0}
    assert main(["--out", str(out), "--cases", "2", "--size", "small"]) == 2
    assert "different phantom dataset" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--cases", "21"]) == 2
