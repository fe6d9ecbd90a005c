"""Reading image files into (array, affine) volumes in nibabel's (x, y, z) order and RAS+ world coordinates.

NIfTI is read with nibabel (its own affine); NRRD, MHA/MHD and DICOM series with SimpleITK, whose LPS geometry
is turned into a RAS affine; 2D slices (PNG, JPG, BMP, TIFF) with Pillow as volumes of one slice. A slice carries
no orientation, so slice sets are read in the radiological display convention (image left = patient right, image
top = anterior): the canonical array is the picture flipped both ways and transposed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

from covlight.errors import DatasetError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SLICE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray  # (x, y, z)
    affine: np.ndarray  # voxel index -> RAS+ world (mm)
    name: str  # the file, for messages

    @property
    def spacing(self) -> np.ndarray:
        return nib.affines.voxel_sizes(self.affine)


def strip_suffix(name: str) -> str | None:
    """The file name without a known image suffix, or None when it is not an image file."""
    lower = name.lower()
    for suffix in sorted(VOLUME_SUFFIXES + SLICE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_slice_file(name: str) -> bool:
    return name.lower().endswith(SLICE_SUFFIXES)


def read_volume(path: Path, name: str, spacing=None) -> Volume:
    """Read one image file; `spacing` (mm) is used for 2D slices only, which record none (default 1, 1, 1)."""
    lower = str(path).lower()
    try:
        if lower.endswith(NIFTI_SUFFIXES):
            image = nib.load(path)
            array, affine = np.asanyarray(image.dataobj), image.affine
        elif lower.endswith(ITK_SUFFIXES):
            array, affine = _from_sitk(sitk.ReadImage(str(path)), name)
        elif lower.endswith(SLICE_SUFFIXES):
            return _read_slice(path, name, spacing)
        else:
            raise DatasetError(f"{name}: unsupported file type; use NIfTI, NRRD, MHA/MHD, or PNG/JPG slices.")
    except DatasetError:
        raise
    except Exception as error:  # nibabel, SimpleITK and zlib raise many kinds for a damaged file
        raise DatasetError(f"{name} cannot be read ({type(error).__name__}: {error}). The file is damaged or "
                           "incomplete: download or extract it again.") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DatasetError(f"{name}: expected a 3D image, found shape {array.shape}.")
    return Volume(array, np.asarray(affine, dtype=float), name)


def read_dicom_series(folder: Path, name: str) -> Volume:
    """The largest DICOM series in `folder` (SimpleITK's ImageSeriesReader; slices sorted by position)."""
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series),
                    key=len, default=())
        if not files:
            raise DatasetError(f"{name}: no DICOM series found. Point the importer at the CT series folder.")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        array, affine = _from_sitk(reader.Execute(), name)
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"{name}: the DICOM series cannot be read ({error}). Download the series again.") from None
    return Volume(array, affine, name)


def _from_sitk(image: sitk.Image, name: str) -> tuple[np.ndarray, np.ndarray]:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{name}: expected a 3D single-channel image, found {image.GetDimension()}D with "
                           f"{image.GetNumberOfComponentsPerPixel()} component(s).")
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return array, LPS_TO_RAS @ affine


def _read_slice(path: Path, name: str, spacing) -> Volume:
    with Image.open(path) as picture:
        pixels = np.asarray(picture)
    if pixels.ndim == 3:
        if not all(np.array_equal(pixels[..., 0], pixels[..., c]) for c in range(1, min(3, pixels.shape[2]))):
            raise DatasetError(f"{name}: a colour picture; CT slices and label masks must be single-channel "
                               "(grey or palette). Convert it first.")
        pixels = pixels[..., 0]
    sx, sy, sz = (list(spacing) + [1.0])[:3] if spacing else (1.0, 1.0, 1.0)
    affine = np.diag([float(sx), float(sy), float(sz), 1.0])
    return Volume(pixels[::-1, ::-1].T[:, :, None], affine, name)


def canonical(volume: Volume) -> Volume:
    """The volume reoriented to RAS+ (nibabel's closest canonical: axes permuted and flipped, never resampled)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    array = nib.orientations.apply_orientation(volume.array, ornt)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.array.shape)
    return Volume(np.ascontiguousarray(array), affine, volume.name)


def same_grid(image: Volume, label: Volume, fix: str = "") -> None:
    """Stop unless `label` lies on exactly the voxel grid of `image` (shape and affine)."""
    if label.array.shape != image.array.shape:
        problem = f"shape {label.array.shape} differs from the image's {image.array.shape}"
    elif not np.allclose(label.affine, image.affine, rtol=1e-4, atol=1e-3):
        offset = float(np.abs(label.affine[:3, 3] - image.affine[:3, 3]).max())
        problem = (f"voxel grid differs from the image's (spacing {np.round(label.spacing, 4).tolist()} vs "
                   f"{np.round(image.spacing, 4).tolist()} mm, origin offset {offset:.3g} mm)")
    else:
        return
    raise DatasetError(f"{label.name}: {problem} ({image.name}). The mask does not belong to this image; "
                       f"{fix or 'check which mask goes with which image, or re-export the mask on the image grid.'}")
