"""Miniature fakes of the official downloads, made from small phantoms, for the importer tests.

Each writer lays files out as the real download does (names, folders, archives, label codes) with LPS-oriented
affines as scanners and converters write them, so the importers must reorient them to RAS+.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from covlight.data.synthetic import make_phantom, write_phantom_dataset

SEED = 0


def phantom(case_id: str, kind: str = "covid", seed: int = SEED):
    return make_phantom(case_id, seed, size="small", kind=kind)


def lps_affine(spacing, shape) -> np.ndarray:
    """Affine of an array flipped along x and y (LPS-like), placing voxels where the canonical array has them."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[0, 3], affine[1, 3] = (shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1]
    return affine


def save_lps(path: Path, canonical: np.ndarray, spacing, dtype) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(canonical)[::-1, ::-1].astype(dtype)
    nib.save(nib.Nifti1Image(array, lps_affine(spacing, canonical.shape)), path)
    return path


def hu(p) -> np.ndarray:
    return np.clip(np.rint(p.image_hu), -1024, 3071).astype(np.int16)


def zip_folder(folder: Path, archive: Path, inner: bool = True) -> Path:
    """Zip `folder`'s files, under a top folder of the same name (inner) or at the archive's root."""
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder.parent if inner else folder).as_posix()
                out.write(path, name)
    return archive


# ---- the five sources ------------------------------------------------------------------------------------------


def covid_download(root: Path, cases: list[str], seed: int = SEED, zipped: bool = True) -> Path:
    """The four Zenodo zips (Lung_and_Infection_Mask.zip without an inner folder, the others with one).

    Image names use every official form: coronacases_org_NNN, coronacases_NNN and Radiopaedia's long name."""
    raw = root / "extracted"
    write_phantom_dataset(raw, cases, seed=seed, layout="official", size="small", progress=False)
    images = raw / "COVID-19-CT-Seg_20cases"
    for path in images.glob("coronacases_org_002*"):
        path.rename(images / path.name.replace("_org_", "_"))
    for path in images.glob("radiopaedia_*"):
        path.rename(images / path.name.replace("radiopaedia_", "radiopaedia_org_covid-19-pneumonia-", 1)
                    .replace(".nii.gz", "-dcm.nii.gz"))
    (raw / ".covlight-phantoms.json").unlink()
    if not zipped:
        return raw
    download = root / "zenodo"
    download.mkdir()
    for folder in sorted(raw.iterdir()):
        zip_folder(folder, download / f"{folder.name}.zip", inner=folder.name != "Lung_and_Infection_Mask")
    return download


def mosmed_download(root: Path, labelled: list[str], unlabelled: dict[str, str]) -> Path:
    """COVID19_1110/studies/CT-k/study_XXXX.nii.gz and masks/study_XXXX_mask.nii.gz (infection = 1)."""
    top = root / "COVID19_1110"
    for case in labelled:
        p = phantom(case)
        save_lps(top / "studies" / "CT-1" / f"{case}.nii.gz", hu(p), p.spacing, np.int16)
        save_lps(top / "masks" / f"{case}_mask.nii.gz", p.label == 3, p.spacing, np.uint8)
    for case, group in unlabelled.items():
        p = phantom(case)
        save_lps(top / "studies" / group / f"{case}.nii.gz", hu(p), p.spacing, np.int16)
    return top


def structseg_download(root: Path, numbers: list[int]) -> Path:
    """Thoracic_OAR.zip (OAR codes: 1 left lung, 2 right lung, 3 heart, 6 spinal cord) and Lung_GTV/ (1 tumour)."""
    download = root / "structseg"
    for n in numbers:
        p = phantom(f"train_{n}", "tumour")
        oar = np.where(p.label == 3, 0, p.label).astype(np.uint8)
        cx, cy, cz = (s // 2 for s in oar.shape)
        oar[cx - 3:cx + 3, cy:cy + 6, cz - 2:cz + 2][oar[cx - 3:cx + 3, cy:cy + 6, cz - 2:cz + 2] == 0] = 3
        oar[cx - 1:cx + 1, 8:10, :][oar[cx - 1:cx + 1, 8:10, :] == 0] = 6
        for part, label in (("Thoracic_OAR", oar), ("Lung_GTV", (p.label == 3).astype(np.uint8))):
            save_lps(download / part / str(n) / "data.nii.gz", hu(p), p.spacing, np.int16)
            save_lps(download / part / str(n) / "label.nii.gz", label, p.spacing, np.uint8)
    zip_folder(download / "Thoracic_OAR", download / "Thoracic_OAR.zip")
    shutil.rmtree(download / "Thoracic_OAR")
    return download


def write_dicom_series(folder: Path, canonical_hu: np.ndarray, spacing) -> Path:
    """A CT series as DICOM slices (LPS, identity direction), one file per slice, as TCIA serves them."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.ascontiguousarray(canonical_hu[::-1, ::-1].astype(np.int16))
    image = sitk.GetImageFromArray(lps.transpose(2, 1, 0))
    image.SetSpacing([float(s) for s in spacing])
    nx, ny, _ = lps.shape
    image.SetOrigin((-spacing[0] * (nx - 1), -spacing[1] * (ny - 1), 0.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.7"
    for k in range(lps.shape[2]):
        piece = image[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", series + ".0"), ("0020|000e", series),
                           ("0020|0013", str(k + 1)), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0018|0050", f"{spacing[2]:.6f}"), ("0028|1052", "0"), ("0028|1053", "1")):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"1-{k + 1:03d}.dcm"))
        writer.Execute(piece)
    return folder


def plethora_mask(canonical: np.ndarray, spacing, path: Path, header: bool) -> Path:
    """A PleThora mask: array stored L, A, S (TCIA's "RPI"), header either consistent or a bare identity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    if header:
        affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
        affine[0, 3] = (canonical.shape[0] - 1) * spacing[0]
    nib.save(nib.Nifti1Image(np.asarray(canonical)[::-1].astype(np.uint8), affine), path)
    return path


def nsclc_download(root: Path) -> Path:
    """LUNG1-001: DICOM CT, cavities coded 2 (left) and 1 (right), identity mask headers, masks zipped.
    LUNG1-002: NIfTI CT, both cavities coded 1, consistent mask headers. Both have effusions."""
    download = root / "nsclc"
    cavities = download / "Thoracic_Cavities"
    effusions = download / "Effusions"
    for case, dicom in (("LUNG1-001", True), ("LUNG1-002", False)):
        p = phantom(case, "effusion")
        if dicom:
            series = download / "NSCLC-Radiomics" / case / "01-01-2000-StudyID-NA-1"
            write_dicom_series(series / "0.000000-NA-1", hu(p), p.spacing)
            (series / "1.000000-RTSTRUCT-2").mkdir()
            (series / "1.000000-RTSTRUCT-2" / "1-1.dcm").write_bytes(b"not the CT")
            nearest = ndimage.distance_transform_edt(~np.isin(p.label, (1, 2)), return_distances=False,
                                                     return_indices=True)
            side = p.label[tuple(nearest)]  # the effusion belongs to the cavity of its side
            cavity = np.where(p.label > 0, np.where(side == 1, 2, 1), 0)
        else:
            save_lps(download / "NSCLC-Radiomics" / f"{case}.nii.gz", hu(p), p.spacing, np.int16)
            cavity = (p.label > 0).astype(np.uint8)
        plethora_mask(cavity, p.spacing, cavities / case / f"{case}_thor_cav_primary_reviewer.nii.gz", not dicom)
        plethora_mask(p.label == 3, p.spacing, effusions / case / f"{case}_effusion_first_reviewer.nii.gz", not dicom)
    zip_folder(cavities, download / "PleThora Thoracic_Cavities June 2020.zip")
    shutil.rmtree(cavities)
    return download


def msd_download(root: Path, cases: list[str]) -> tuple[Path, Path]:
    """Task06_Lung.tar.gz (with macOS clutter, as the real tar has) and a folder of lung masks (1 left, 2 right)."""
    task = root / "Task06_Lung"
    masks = root / "msd_lung_masks"
    (task / "imagesTs").mkdir(parents=True)
    task.joinpath("dataset.json").write_text(json.dumps({
        "name": "Lung", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(cases), "training": [{"image": f"./imagesTr/{c}.nii.gz",
                                                 "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}))
    for case in cases:
        p = phantom(case, "tumour")
        save_lps(task / "imagesTr" / f"{case}.nii.gz", hu(p), p.spacing, np.int16)
        save_lps(task / "labelsTr" / f"{case}.nii.gz", p.label == 3, p.spacing, np.uint8)
        (task / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
        save_lps(masks / f"{case}.nii.gz", np.where(p.label == 3, 0, p.label), p.spacing, np.uint8)
    archive = root / "Task06_Lung.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        out.add(task, arcname="Task06_Lung")
    shutil.rmtree(task)
    return archive, masks
