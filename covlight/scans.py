"""New scans in and predictions out for `covlight.predict`, each on the input's own grid and in its format family.

Inputs: NIfTI, NRRD, MHA/MHD, a DICOM series folder, PNG/JPG slices, or the cases of a canonical dataset folder.
They are read by the importers' reader (`covlight.data.importers.volumes`), so a scan reaches the model exactly
as an imported case would: reoriented to RAS+ (axes permuted and flipped, never resampled) and scaled to the
stored 0..255 range by its intensity kind.

Outputs go back the same way: NIfTI volumes with the input's own affine and header (NRRD, MHA and DICOM inputs
get a NIfTI with their geometry in RAS), PNG label pictures of the input picture's size. A slice follows the
importer's radiological convention, `array[x, y] = picture[H - 1 - y, W - 1 - x]` (image left = patient right,
image top = anterior), and the output picture is the exact inverse. Every file is written under a temporary name
and renamed when whole, so no half-written output looks complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

from covlight.atomic import replacing
from covlight.data.canonical import INTENSITY_KINDS, read_dataset
from covlight.data.importers.checks import to_0_255
from covlight.data.importers.volumes import (
    Volume,
    is_slice_file,
    read_dicom_series,
    read_volume,
    strip_suffix,
)
from covlight.errors import DatasetError

DETACHED_DATA = (".raw", ".zraw", ".raw.gz")  # data files of .mhd/.nhdr headers, read through their header
SUPPORTED = "NIfTI, NRRD, MHA/MHD, PNG/JPG slices, or a DICOM series folder"
RAS = nib.orientations.axcodes2ornt("RAS")


@dataclass(frozen=True)
class Source:
    """One input: `kind` is volume, slice, dicom (a series folder), stored (a canonical dataset case, already
    0..255, `intensity` from its dataset.json) or unsupported (reported when its turn comes)."""

    path: Path
    name: str  # the outputs' file stem
    kind: str
    intensity: str | None = None


@dataclass
class Scan:
    """A source ready for the model, and what it takes to write results back on the source's grid."""

    source: Source
    image: np.ndarray  # float32, 0..255, RAS+ (x, y, z)
    affine: np.ndarray  # of `image`
    intensity: str
    orientation: np.ndarray  # the source array's axes relative to RAS+ (nibabel orientation)
    source_affine: np.ndarray  # voxel -> RAS world of the source array
    nifti: nib.spatialimages.SpatialImage | None  # NIfTI sources: their header is kept for the outputs


def find_sources(path: Path) -> list[Source]:
    """The inputs under `path`: a file, a DICOM series folder, a canonical dataset folder, or a folder of these
    (files and series sub-folders; hidden files and the data files of .mhd/.nhdr headers are skipped)."""
    if path.is_file():
        return [_file_source(path)]
    if (path / "dataset.json").is_file() and (path / "images").is_dir():
        dataset = read_dataset(path)
        return [Source(dataset.image_path(case), case, "stored", entry.get("intensity"))
                for case, entry in sorted(dataset.cases.items())]
    if dicom_series_ids(path):
        return [Source(path, path.name, "dicom")]
    sources = []
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or child.name.lower().endswith(DETACHED_DATA):
            continue
        sources.append(Source(child, child.name, "dicom") if child.is_dir() else _file_source(child))
    return sources


def dicom_series_ids(folder: Path) -> tuple[str, ...]:
    """The DICOM series in `folder`, without GDCM's warning on stderr for a folder that has none (pictures, NIfTI)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _file_source(path: Path) -> Source:
    stem = strip_suffix(path.name)
    if stem is None:
        return Source(path, path.name, "unsupported")
    return Source(path, stem, "slice" if is_slice_file(path.name) else "volume")


def read_scan(source: Source, intensity: str | None) -> Scan:
    """Read a source, reorient it to RAS+ and bring it to the stored 0..255 range (`intensity`: the source's
    kind; stored cases are 0..255 already). Raises DatasetError naming the file when it cannot be used."""
    if source.kind == "unsupported":
        raise DatasetError(f"{source.path}: unsupported file type; give {SUPPORTED}.")
    if source.kind == "dicom":
        if not dicom_series_ids(source.path):
            raise DatasetError(f"{source.path}: a folder without a DICOM series; give {SUPPORTED}.")
        volume = read_dicom_series(source.path, str(source.path))
    else:
        volume = read_volume(source.path, str(source.path))
    if not np.isfinite(volume.array).all():
        raise DatasetError(f"{source.path}: the image has NaN or infinite voxels.")
    orientation = nib.orientations.io_orientation(volume.affine)
    canonical = nib.orientations.apply_orientation(volume.array, orientation)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(orientation, volume.array.shape)
    if source.kind == "stored":
        if source.intensity not in INTENSITY_KINDS:
            raise DatasetError(f"{source.path}: dataset.json gives no valid intensity kind for this case "
                               f"({source.intensity!r}); re-import the dataset.")
        image, intensity = canonical.astype(np.float32), source.intensity
    else:
        image = to_0_255(Volume(np.ascontiguousarray(canonical), affine, str(source.path)), intensity)
    nifti = nib.load(source.path) if source.kind in ("volume", "stored") and _is_nifti(source.path) else None
    return Scan(source, image, affine, intensity, orientation, volume.affine, nifti)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def label_suffix(source: Source) -> str:
    return ".png" if source.kind == "slice" else ".nii.gz"


def probability_suffix(source: Source) -> str:
    return ".npy" if source.kind == "slice" else ".nii.gz"


def write_output(scan: Scan, array: np.ndarray, path: Path) -> None:
    """Write a RAS+ array of the scan's canonical shape on the source's grid: a label map (uint8; PNG or NIfTI)
    or one probability map (float32; .npy or NIfTI), by the suffix of `path`."""
    array = nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(RAS, scan.orientation))
    with replacing(path) as tmp:
        if scan.source.kind == "slice":
            picture = np.ascontiguousarray(array[:, :, 0].T[::-1, ::-1])
            if path.suffix == ".png":
                Image.fromarray(picture.astype(np.uint8)).save(tmp)
            else:
                np.save(tmp, picture.astype(np.float32))
        else:
            _nifti_like(scan, np.ascontiguousarray(array)).to_filename(tmp)


def _nifti_like(scan: Scan, array: np.ndarray) -> nib.spatialimages.SpatialImage:
    """A NIfTI image of `array` with the source's affine, and its header when the source is NIfTI."""
    if scan.nifti is not None:
        image = type(scan.nifti)(array, scan.nifti.affine, scan.nifti.header)
    else:
        image = nib.Nifti1Image(array, scan.source_affine)
        image.header.set_xyzt_units("mm")
    image.set_data_dtype(array.dtype)
    return image
