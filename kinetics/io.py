"""NIfTI and text in; NIfTI maps and one ``xarray.Dataset`` (``maps.nc``) out.

``io`` alone builds Datasets (dims ``x, y, z[, t]``, ``units`` attributes); the rest of the package
works on numpy arrays. Output directories are written under a temporary name and renamed at the end,
so a failed run leaves nothing behind and an existing directory is never overwritten by accident.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, DTypeLike

from .errors import KineticsInputError

__all__ = [
    "load_image",
    "read_times",
    "read_scalar_or_image",
    "check_same_grid",
    "read_mask",
    "follow_umask",
    "save_image",
    "maps_dataset",
    "output_directory",
    "output_file",
    "check_output_file",
    "table_sidecar",
    "write_table",
]


def load_image(
    path: str | os.PathLike, *, ndim: int | tuple[int, ...] | None = None, name: str = "image"
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a NIfTI image: returns (data, affine, header); ``data`` keeps the file's float dtype.

    Parameters
    ----------
    path : str or Path
    ndim : None, int or tuple of int
        Required number of dimensions; a 4D file with one frame counts as 3D.
    name : str
        What the file is, for error messages ("DCE series", "mask").
    """
    path = Path(path)
    if not path.is_file():
        raise KineticsInputError(f"{path}: {name} file not found.")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for a corrupt or foreign file
        raise KineticsInputError(f"{path}: cannot read the {name} as NIfTI ({err}).") from None
    if data.ndim == 4 and data.shape[-1] == 1 and ndim == 3:
        data = data[..., 0]
    wanted = (ndim,) if isinstance(ndim, int) else ndim
    if wanted is not None and data.ndim not in wanted:
        expected = " or ".join(f"{d}D" for d in wanted)
        raise KineticsInputError(f"{path}: the {name} is {data.ndim}D with shape {data.shape}; expected {expected}.")
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    return data, img.affine, img.header


def read_times(path: str | os.PathLike, *, n_frames: int | None = None) -> np.ndarray:
    """Frame times (s) from a text file, one a line; checked finite, increasing and one per frame."""
    path = Path(path)
    if not path.is_file():
        raise KineticsInputError(f"{path}: times file not found.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: refused below, in one sentence
            t = np.loadtxt(path, dtype=float, ndmin=1, delimiter=None)
    except ValueError:
        raise KineticsInputError(f"{path}: the times file has a line that is not a number.") from None
    t = t.reshape(-1)
    if t.size == 0:
        raise KineticsInputError(f"{path}: the times file holds no time.")
    if not np.all(np.isfinite(t)):
        raise KineticsInputError(f"{path}: {np.sum(~np.isfinite(t))} of the {t.size} times are not finite.")
    if np.any(np.diff(t) <= 0):
        i = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise KineticsInputError(f"{path}: times must increase, but line {i + 2} ({t[i + 1]:g} s) follows {t[i]:g} s.")
    if n_frames is not None and t.size != n_frames:
        raise KineticsInputError(f"{path}: {t.size} times for {n_frames} frames.")
    return t


GRID_TOLERANCE_MM = 0.01  # largest difference between two affines' entries that still means one grid


def check_same_grid(
    path: str | os.PathLike,
    affine: ArrayLike,
    like_affine: ArrayLike,
    name: str = "mask",
    *,
    error: type[Exception] = KineticsInputError,
) -> None:
    """KineticsInputError unless ``affine`` (of the file ``path``) equals ``like_affine`` within
    :data:`GRID_TOLERANCE_MM`: a map or mask of the same shape on another grid (shifted, another
    orientation) would label the wrong voxels without any other sign. ``error``: the exception class
    raised (ssl_rcc passes its own)."""
    difference = float(np.max(np.abs(np.asarray(affine, float) - np.asarray(like_affine, float))))
    if difference > GRID_TOLERANCE_MM:
        raise error(f"{path}: the {name}'s affine differs from its image's by up to {difference:.3g} mm "
                                 "(another grid or orientation); resample it onto the image first.")


def read_scalar_or_image(
    value: float | str | os.PathLike, *, name: str, shape: Sequence[int], unit: str, affine: ArrayLike | None = None
) -> float | np.ndarray:
    """A per-voxel quantity given either as a number or as a NIfTI path; returns float or (shape) array.
    With ``affine``, the file must lie on that grid (:func:`check_same_grid`)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    data, file_affine, _ = load_image(value, ndim=3, name=name)
    if data.shape != tuple(shape):
        raise KineticsInputError(f"{value}: the {name} has shape {data.shape}, the series {tuple(shape)}.")
    if affine is not None:
        check_same_grid(value, file_affine, affine, name)
    return np.asarray(data, dtype=float)


def read_mask(mask: str | os.PathLike | None, spatial: tuple, affine: ArrayLike | None = None) -> np.ndarray | None:
    """The mask file ``mask`` (voxels > 0) as a boolean array of the images' shape ``spatial``, checked
    against their grid (``affine``); None for None. A mask of another shape or grid, or one that selects
    no voxel, is one sentence."""
    if mask is None:
        return None
    m, mask_affine, _ = load_image(mask, ndim=3, name="mask")
    if m.shape != tuple(spatial):
        raise KineticsInputError(f"{mask}: the mask has shape {m.shape}, the images {tuple(spatial)}.")
    if affine is not None:
        check_same_grid(mask, mask_affine, affine)
    roi = m > 0
    if not roi.any():
        raise KineticsInputError(f"{mask}: the mask selects no voxel.")
    return roi


def save_image(
    path: str | os.PathLike, data: ArrayLike, affine: ArrayLike, header: Any = None, *, dtype: DTypeLike | None = None
) -> None:
    """Write ``data`` as NIfTI with the given affine (and the reference header's other fields).

    ``dtype`` stores the values in that type (for example int16 for a signal series), with the
    scale factor nibabel computes from the data range; None keeps the array's own type.
    """
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    hdr = None
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, affine, hdr)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def maps_dataset(
    params: Mapping[str, ArrayLike],
    units: Mapping[str, str],
    *,
    affine: ArrayLike,
    rmse: ArrayLike | None = None,
    r2: ArrayLike | None = None,
    fit_ok: ArrayLike | None = None,
    fit_status: ArrayLike | None = None,
    attrs: Mapping | None = None,
) -> xr.Dataset:
    """Maps as an ``xarray.Dataset`` with dims (x, y, z), ``units`` attributes and the affine.

    Parameters
    ----------
    params : dict of str to (x, y, z) ndarray
    units : dict of str to str
    affine : (4, 4) ndarray
        Stored as the ``affine`` attribute (row-major, 16 numbers).
    fit_status : None or (x, y, z) ndarray
        :mod:`kinetics.status` codes, stored with CF ``flag_values`` and ``flag_meanings``.
    """
    dims = ("x", "y", "z")
    data_vars = {name: (dims, np.asarray(v, np.float32), {"units": units.get(name, "1")}) for name, v in params.items()}
    if rmse is not None:
        data_vars["rmse"] = (dims, np.asarray(rmse, np.float32), {"units": "mM"})
    if r2 is not None:
        data_vars["r2"] = (dims, np.asarray(r2, np.float32), {"units": "1"})
    if fit_ok is not None:
        data_vars["fit_ok"] = (dims, np.asarray(fit_ok, np.uint8), {"units": "1", "flag_values": "0 1"})
    if fit_status is not None:
        from .status import FIT_STATUS

        data_vars["fit_status"] = (dims, np.asarray(fit_status, np.uint8), {
            "flag_values": " ".join(str(c) for c in FIT_STATUS), "flag_meanings": " ".join(FIT_STATUS.values())})
    ds = xr.Dataset(data_vars)
    ds.attrs.update(attrs or {})
    ds.attrs["affine"] = np.asarray(affine, dtype=float).reshape(-1)
    return ds


def _umask() -> int:
    mask = os.umask(0o022)  # read by setting: Python has no getter
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, *, directory: bool) -> None:
    """mkdtemp and mkstemp create 0700 / 0600; give the output the mode any other tool would (umask)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _check_parent(path):
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise KineticsInputError(f"{path}: its parent {parent} is a file, not a directory.")
    parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def output_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` that becomes ``path`` when the block succeeds.

    An existing ``path`` raises unless ``overwrite``; on any error the temporary directory is removed
    and an existing ``path`` is left as it was. Without ``overwrite`` the name is reserved at the start
    (an empty directory, made atomically), so a second run to the same ``path`` is refused then instead
    of silently replacing the first one's output at the end.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KineticsInputError(f"{path}: exists and is not a directory.")
    if path.exists() and not overwrite:
        raise KineticsInputError(f"{path}: output directory exists; choose another or pass --overwrite.")
    _check_parent(path)
    reserved = False
    if not overwrite:
        try:
            path.mkdir()
        except FileExistsError:
            raise KineticsInputError(f"{path}: output directory exists; choose another or pass --overwrite.") from None
        reserved = True
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        follow_umask(tmp, directory=True)
        yield tmp
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if reserved:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    if reserved:
        tmp.rename(path)  # onto the empty reservation: atomic
    elif path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        path.rename(old / path.name)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``path`` as a file to write: a directory there, or an existing file without ``overwrite``, is one
    sentence (so that a command can check before its work, not only when it writes)."""
    path = Path(path)
    if path.is_dir():
        raise KineticsInputError(f"{path}: is a directory; give a file name.")
    if path.exists() and not overwrite:
        raise KineticsInputError(f"{path}: output file exists; choose another or pass --overwrite.")
    return path


def table_sidecar(path: str | os.PathLike) -> Path:
    """``<path>.json``: where :func:`write_table` puts a table's options and provenance."""
    path = Path(path)
    return path.with_name(path.name + ".json")


@contextlib.contextmanager
def output_file(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same extension) that replaces ``path`` on success.

    An existing ``path`` raises unless ``overwrite``; a directory there always raises; on any error the
    temporary file is removed.
    """
    path = check_output_file(path, overwrite=overwrite)
    _check_parent(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    follow_umask(tmp, directory=False)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if another run wrote path meanwhile, where a rename would replace it
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise KineticsInputError(f"{path}: written by another run meanwhile; it is left as it was (pass --overwrite "
                                 "to replace it).") from None
    except OSError:  # a file system without hard links: the check above has to do
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_table(path: str | os.PathLike, table, origin: dict, *, overwrite: bool = False) -> Path:
    """Write ``table`` (a DataFrame) as CSV to ``path`` and ``origin`` (its provenance and options) as
    ``<path>.json`` beside it, each atomically (:func:`output_file`); returns ``path``."""
    import json

    path, sidecar = Path(path), table_sidecar(path)
    # the table is committed last: a table on disk always has its sidecar
    with output_file(path, overwrite=overwrite) as tmp, output_file(sidecar, overwrite=overwrite) as meta:
        table.to_csv(tmp, index=False, float_format="%.6g")
        meta.write_text(json.dumps(origin, indent=2, default=str))
    return path
