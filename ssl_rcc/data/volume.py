"""Reading images into :class:`Volume`: NIfTI files and DICOM series, with no patient identifiers.

A Volume holds channel-first voxel data, its affine (voxel to RAS+ world, mm), the modality and a case
id. Case ids come from a hash of the series (DICOM) or the file stem (NIfTI): DICOM patient fields
(name, id, birth date, ...) are never read into it, so they cannot reach outputs or logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from kinetics.io import check_same_grid

from ..errors import InputError

__all__ = ["Volume", "read_nifti", "read_dicom_series", "read_mask", "case_id_for", "MODALITIES"]

MODALITIES = ("CT", "MR")


@dataclass
class Volume:
    """``data`` (C, X, Y, Z) float32; ``affine`` (4, 4) voxel -> RAS+ mm; ``modality`` 'CT' or 'MR';
    ``case_id`` (no patient identifiers); ``source`` the path it was read from."""

    data: np.ndarray
    affine: np.ndarray
    modality: str
    case_id: str
    source: str

    @property
    def spacing_mm(self) -> tuple:
        """Voxel size along the array axes (mm)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def case_id_for(text: str, *, prefix="case") -> str:
    """A stable, non-identifying id: ``prefix-`` and the first 12 hex digits of the SHA-1 of ``text``."""
    return f"{prefix}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def guess_modality(data) -> str:
    """'CT' when values reach air (below -500, Hounsfield units), else 'MR'."""
    return "CT" if np.nanmin(data) < -500 else "MR"


def read_nifti(path, *, modality=None, case_id=None) -> Volume:
    """Read a 3D or 4D NIfTI (4D: the last axis holds channels, such as CT phases or MR sequences).

    Parameters
    ----------
    modality : None, 'CT' or 'MR'
        None guesses from the values (:func:`guess_modality`).
    case_id : None or str
        None uses the file stem.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:
        raise InputError(f"{path}: cannot read as NIfTI ({err}).") from None
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise InputError(f"{path}: the image is {data.ndim}D with shape {data.shape}; expected 3D or 4D.")
    data = _finite(data, path)
    modality = modality or guess_modality(data)
    if modality not in MODALITIES:
        raise InputError(f"{path}: unknown modality {modality!r}; expected one of {list(MODALITIES)}.")
    return Volume(np.ascontiguousarray(data), img.affine.astype(float), modality, case_id or _stem(path), str(path))


def _finite(data, path):
    """``data`` with NaN and infinite voxels (outside a reconstruction's field of view, say) set to the
    lowest finite value of their channel, so that nothing non-finite reaches a cache or a network."""
    finite = np.isfinite(data)
    if data.size == 0 or not finite.any():
        raise InputError(f"{path}: the image has no finite value.")
    if finite.all():
        return data
    lowest = np.where(finite, data, np.inf).reshape(len(data), -1).min(axis=1)
    return np.where(finite, data, lowest.reshape((-1,) + (1,) * (data.ndim - 1))).astype(np.float32)


def read_mask(path, like: Volume) -> np.ndarray:
    """A mask file as a boolean array on the grid of ``like``; InputError when it cannot be read or
    lies on another grid (shape or affine), where its voxels would label the wrong anatomy."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        mask = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ...
        raise InputError(f"{path}: cannot read the mask as NIfTI ({type(err).__name__}).") from None
    mask = mask.reshape(mask.shape[:3]) if mask.ndim == 4 and mask.shape[3] == 1 else mask
    if mask.shape != like.data.shape[1:]:
        raise InputError(f"{path}: the mask has shape {mask.shape}, its image {like.data.shape[1:]}.")
    check_same_grid(path, img.affine, like.affine, error=InputError)
    return mask > 0


def read_dicom_series(files, *, case_id=None) -> Volume:
    """Read one DICOM series (a list of slice files) as a 3D Volume in world (RAS+) coordinates.

    Slices are ordered by their position along the slice normal (not by file name or instance
    number), pixel values rescaled (CT to HU), and the affine built from ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing. Only geometry, pixel and modality tags are read.
    """
    import pydicom

    files = [Path(f) for f in files]
    if not files:
        raise InputError("DICOM series: no files given.")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            pixels = ds.pixel_array.astype(np.float32)
            position = np.array(ds.ImagePositionPatient, dtype=float)
            orientation = np.array(ds.ImageOrientationPatient, dtype=float)
            spacing = np.array(ds.PixelSpacing, dtype=float)
            slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        except Exception as err:  # pydicom raises many types for broken or non-image files
            raise InputError(f"{f}: cannot read as a DICOM image slice ({type(err).__name__}: {err}).") from None
        slices.append((position, orientation, spacing, pixels * slope + intercept, str(getattr(ds, "Modality", ""))))
    orientation = slices[0][1]
    if any(not np.allclose(s[1], orientation, atol=1e-4) or s[3].shape != slices[0][3].shape for s in slices):
        raise InputError(f"{files[0].parent}: the DICOM slices differ in orientation or size; not one series.")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    order = np.argsort([s[0] @ normal for s in slices])
    slices = [slices[i] for i in order]
    positions = np.array([s[0] for s in slices])
    if len(slices) > 1:
        steps = np.diff(positions @ normal)
        if np.any(steps <= 1e-6):
            raise InputError(f"{files[0].parent}: two DICOM slices share a position; not one series.")
        if np.ptp(steps) > 0.05 * np.median(steps):
            raise InputError(f"{files[0].parent}: the DICOM slices are unevenly spaced ({steps.min():.2f}-{steps.max():.2f} mm).")
        slice_step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        slice_step = normal * 1.0
    # pixel_array is (rows, columns): rows advance along the column direction, columns along the row direction
    data = np.stack([s[3].T for s in slices], axis=-1)  # (columns, rows, slices) = (i along row, j along col, k)
    dr, dc = slices[0][2]  # PixelSpacing: (row spacing, column spacing)
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = slice_step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient space is LPS+; NIfTI world is RAS+
    modality = slices[0][4] if slices[0][4] in MODALITIES else guess_modality(data)
    data = _finite(data[None].astype(np.float32), files[0].parent)
    return Volume(data, affine, modality, case_id or "dicom-series", str(files[0].parent))
