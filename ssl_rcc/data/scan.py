"""Finding the images of an archive: a folder (NIfTI files and DICOM series, recursively) or a CSV.

Each image becomes an :class:`ArchiveItem` with a non-identifying case id. Nothing here reads pixels
except to group DICOM files into series (headers only).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .volume import Volume, _stem, case_id_for, read_dicom_series, read_nifti

__all__ = ["ArchiveItem", "scan_archive", "load_item", "scrub_paths"]

log = logging.getLogger("ssl_rcc")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_COLUMNS = ("image", "ct", "path")  # the first of these present in a CSV holds the image paths
MASK_COLUMNS = ("kidney_mask", "mask")
LESION_COLUMNS = ("tumor_mask", "tumour_mask", "lesion_mask")  # a case table's lesion column, first present
LESION_SUFFIXES = LESION_COLUMNS  # and the file names (``ct_tumor_mask.nii.gz``) of lesion masks in a folder


@dataclass
class ArchiveItem:
    """One image of an archive: ``kind`` 'nifti' or 'dicom', its ``files``, an optional kidney ``mask``
    and ``lesion_mask`` (NIfTI paths; a segmentation model's output will do), a ``case_id`` and a
    ``modality`` if the archive said it."""

    kind: str
    files: list
    case_id: str
    mask: str | None = None
    modality: str | None = None
    extra: dict = field(default_factory=dict)
    lesion_mask: str | None = None


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _is_mask(path: Path) -> bool:
    """NIfTI files named ``*mask`` (``ct_kidney_mask.nii.gz``, ``mask.nii.gz``) are masks, not images."""
    return _is_nifti(path) and _stem(path).lower().endswith("mask")


def _pair_masks(images, masks):
    """({image: kidney mask}, {image: lesion mask}, unpaired) for masks beside their image: kidney masks
    named ``IMAGE_mask``, ``*kidney_mask`` or ``mask``, lesion masks ``*tumor_mask``, ``*tumour_mask`` or
    ``*lesion_mask``; each pairs with the folder's only image, or the image whose stem begins the
    mask's (``ct.nii.gz`` and ``ct_kidney_mask.nii.gz``). Unpaired masks come with the reason."""
    by_folder = defaultdict(list)
    for p in images:
        by_folder[p.parent].append(p)
    kidney, lesion, unpaired = {}, {}, []
    for m in masks:
        here, name = by_folder.get(m.parent, []), _stem(m).lower()
        named = [p for p in here if name == _stem(p).lower() + "_mask"]  # ct.nii.gz and ct_mask.nii.gz
        if name.endswith(LESION_SUFFIXES):
            pairs = lesion
        elif named or name.endswith("kidney_mask") or name == "mask":
            pairs = kidney
        else:
            unpaired.append((m, "a mask that is neither a kidney mask (*kidney_mask, IMAGE_mask) nor a lesion "
                                "mask (*tumor_mask, *lesion_mask)"))
            continue
        match = named or (here if len(here) == 1 else [p for p in here if name.startswith(_stem(p).lower() + "_")])
        if len(match) == 1 and match[0] not in pairs:
            pairs[match[0]] = m
        else:
            unpaired.append((m, "a mask file without one image to pair with in its folder"))
    return kidney, lesion, unpaired


def _dicom_series(files):
    """Group candidate DICOM files into series by header; files that are not DICOM are returned apart."""
    import pydicom

    groups, rejected = defaultdict(list), []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            orientation = tuple(round(float(v), 3) for v in ds.ImageOrientationPatient)
            key = (str(getattr(ds, "SeriesInstanceUID", "") or f.parent), orientation, int(ds.Rows), int(ds.Columns))
        except Exception as err:  # not DICOM, or not an image slice
            rejected.append((f, f"not a DICOM image slice ({type(err).__name__})"))
            continue
        groups[key].append(f)
    return groups, rejected


def scan_archive(source: str | os.PathLike, *,
                 hash_ids: bool = False) -> tuple[list[ArchiveItem], list[tuple[Path, str]]]:
    """The images of a folder (recursive) or of a CSV with an ``image`` (or ``ct``/``path``) column.

    NIfTI images are named by their file stem (or a CSV's ``case_id``), or, with ``hash_ids``, by a
    hash of their path, for archives whose file names carry identifiers; DICOM series are always
    named by a hash.

    Returns
    -------
    items : list of ArchiveItem
    rejected : list of (path, reason)
        Files that are neither NIfTI nor DICOM image slices.
    """
    source = Path(source)
    if source.is_file() and source.suffix == ".csv":
        items, rejected = _scan_csv(source)
        if hash_ids:
            for item in items:
                item.case_id = case_id_for(item.files[0])
        return items, rejected
    if not source.is_dir():
        raise InputError(f"{source}: no such folder or CSV file.")
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    nifti = [p for p in files if _is_nifti(p) and not _is_mask(p)]
    masks, lesions, unpaired = _pair_masks(nifti, [p for p in files if _is_mask(p)])
    others = [p for p in files if not _is_nifti(p) and p.suffix.lower() not in (".csv", ".json", ".txt", ".md", ".png")]
    items, seen = [], set()
    for p in nifti:
        stem = _stem(p)
        if hash_ids:
            case_id = case_id_for(str(p.relative_to(source)))
        else:
            # a repeated stem (case_1/ct.nii.gz, case_2/ct.nii.gz) gets a hash of its path, not its folder
            # names, which often carry a patient's name or record number
            case_id = stem if stem not in seen else f"{stem}-{case_id_for(str(p.relative_to(source)), prefix='')[1:9]}"
        seen.add(case_id)
        items.append(ArchiveItem("nifti", [str(p)], case_id, str(masks[p]) if p in masks else None,
                                 lesion_mask=str(lesions[p]) if p in lesions else None))
    groups, rejected = _dicom_series(others)
    rejected += unpaired
    for (series_key, *_), group in sorted(groups.items(), key=lambda kv: str(kv[1][0])):
        # the id hashes the series UID (or folder): it names the series without identifying anyone
        items.append(ArchiveItem("dicom", [str(f) for f in sorted(group)], case_id_for(series_key, prefix="dicom")))
    return items, rejected


def _scan_csv(path: Path):
    try:
        table = pd.read_csv(path, keep_default_na=False)
    except Exception as err:
        raise InputError(f"{path}: cannot read the CSV ({err}).") from None
    column = next((c for c in IMAGE_COLUMNS if c in table.columns), None)
    if column is None:
        raise InputError(f"{path}: the CSV needs one of the columns {list(IMAGE_COLUMNS)}; it has {list(table.columns)}.")
    mask_column = next((c for c in MASK_COLUMNS if c in table.columns), None)
    lesion_column = next((c for c in LESION_COLUMNS if c in table.columns), None)
    items, rejected = [], []
    for i, row in table.iterrows():
        if not str(row[column]).strip():
            rejected.append((path, f"row {i + 2} has no image path"))
            continue
        image = (path.parent / str(row[column])).resolve()
        mask = str((path.parent / str(row[mask_column])).resolve()) if mask_column and row[mask_column] else None
        lesion = str((path.parent / str(row[lesion_column])).resolve()) if lesion_column and row[lesion_column] else None
        case_id = str(row["case_id"]) if "case_id" in table.columns and row["case_id"] else _stem(image)
        modality = str(row["modality"]) if "modality" in table.columns and row["modality"] else None
        if _is_nifti(image) or not image.is_dir():
            kind, files = ("nifti" if _is_nifti(image) else "dicom"), [str(image)]
        else:  # a folder holding one DICOM series (stray non-DICOM files in it are left out)
            groups, _ = _dicom_series(sorted(f for f in image.iterdir() if f.is_file()))
            if not groups:
                rejected.append((image, "the folder holds no DICOM image slice"))
                continue
            kind, files = "dicom", [str(f) for f in sorted(max(groups.values(), key=len))]
        items.append(ArchiveItem(kind, files, case_id, mask, modality, lesion_mask=lesion))
    return items, rejected


MAX_LABELS = 1000  # TotalSegmentator writes 117 classes


def label_count(data) -> int | None:
    """The number of labels if ``data`` (C, X, Y, Z) looks like a segmentation, else None: non-negative
    integers, at most :data:`MAX_LABELS` distinct values (on a strided sample of 200,000 voxels), and
    piecewise constant (over 90% of the labelled voxels equal their neighbour along x). CT spans values
    below zero; MR, even 8-bit, varies from voxel to voxel inside the body."""
    volume = np.asarray(data)
    flat = volume.reshape(-1)
    sample = np.asarray(flat[:: max(1, flat.size // 200_000)], np.float64)
    if sample.size == 0 or sample.min() < 0 or not np.all(sample == np.round(sample)):
        return None
    n = len(np.unique(sample))
    if n > MAX_LABELS:
        return None
    first = volume[0] if volume.ndim == 4 else volume
    labelled = first[:-1] != 0
    if not labelled.any() or np.mean((first[:-1] == first[1:])[labelled]) < 0.9:
        return None
    return n


def load_item(item: ArchiveItem) -> Volume:
    """Read an archive item's image (raises InputError with the file and the problem, also for a
    segmentation whose name does not say it is a mask)."""
    if item.kind == "nifti":
        volume = read_nifti(item.files[0], modality=item.modality, case_id=item.case_id)
        labels = label_count(volume.data)
        if labels is not None:
            raise InputError(f"{item.files[0]}: a label map ({labels} integer values), not an image; name masks "
                             "*kidney_mask or *tumor_mask to pair them with their image.")
        return volume
    volume = read_dicom_series(item.files, case_id=item.case_id)
    if item.modality:
        volume.modality = item.modality
    return volume


def scrub_paths(message: str, item: ArchiveItem) -> str:
    """The message with every path of the item replaced by its case id: folder and file names of an
    archive often carry patient names or record numbers."""
    paths = set(item.files) | {m for m in (item.mask, item.lesion_mask) if m}
    paths |= {str(Path(f).parent) for f in paths}
    for p in sorted(paths, key=len, reverse=True):
        message = message.replace(p, item.case_id)
    return message
