"""Radiomic features of a lesion: IBSI-defined PyRadiomics features per phase, and enhancement ratios.

PyRadiomics (the ``pyradiomics-bhklab`` wheel, module ``radiomics``) computes first-order and texture
features (GLCM, GLRLM, GLSZM, GLDM, NGTDM) of every channel of the image (CT phases or MR sequences)
inside the tumour mask, on the raw values (HU for CT), with the settings of ``radiomics.yaml``, and
the shape features once per lesion. Beside them, the tumour-to-cortex enhancement ratio of every
contrast phase: (tumour - tumour unenhanced) / (cortex - cortex unenhanced), mean HU, where channel 0
is the unenhanced phase and the cortex is estimated as the most enhancing quarter of the kidney
outside the tumour in channel 1 (the corticomedullary phase), since case tables carry kidney masks,
not cortex masks.

References
----------
van Griethuysen JJM et al. Computational radiomics system to decode the radiographic phenotype.
Cancer Res 2017;77:e104-e107. doi:10.1158/0008-5472.CAN-17-0339
Zwanenburg A et al. The Image Biomarker Standardization Initiative. Radiology 2020;295:328-338.
doi:10.1148/radiol.2020191145
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.volume import read_mask, read_nifti
from ..errors import InputError

__all__ = ["radiomic_features", "radiomic_settings", "SETTINGS_FILE", "PHASE_NAMES"]

SETTINGS_FILE = Path(__file__).with_name("radiomics.yaml")
PHASE_NAMES = ("unenhanced", "corticomedullary", "nephrographic", "excretory")  # 4-channel CT, in order


def radiomic_settings(path=SETTINGS_FILE) -> dict:
    """The PyRadiomics settings (a dict as in its parameter files)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


@lru_cache(maxsize=4)
def _extractors(settings_text: str):
    """(per-phase extractor, shape extractor) for one settings text; built once per process."""
    import yaml
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)  # it logs every feature class at INFO
    settings = yaml.safe_load(settings_text)
    per_phase = featureextractor.RadiomicsFeatureExtractor(settings)
    shape = featureextractor.RadiomicsFeatureExtractor(dict(settings, featureClass={"shape": []}))
    return per_phase, shape


def _sitk(array, spacing_mm):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).T))  # sitk's x is numpy's axis 0
    image.SetSpacing(tuple(float(s) for s in spacing_mm))
    return image


def _values(result, prefix):
    return {f"{prefix}{k[len('original_'):]}": float(v) for k, v in result.items() if k.startswith("original_")}


def channel_names(n_channels: int) -> tuple:
    """Phase names of a 4-channel CT, ``c0, c1, ...`` otherwise."""
    return PHASE_NAMES if n_channels == len(PHASE_NAMES) else tuple(f"c{i}" for i in range(n_channels))


def enhancement_ratios(data, tumour, kidney) -> dict:
    """Tumour-to-cortex enhancement ratio of channels 1.. against channel 0 (see the module docstring).

    Parameters
    ----------
    data : (C, X, Y, Z) ndarray, HU
    tumour, kidney : (X, Y, Z) bool ndarrays; ``kidney`` may be None (ratios are then NaN)
    """
    names = channel_names(len(data))
    out = {f"{n}_enhancement_ratio": float("nan") for n in names[1:]}
    if kidney is None or len(data) < 2:
        return out
    from scipy import ndimage

    outside = kidney & ~ndimage.binary_dilation(tumour, iterations=2)
    if outside.sum() < 8:
        return out
    early = data[1][outside]
    cortex = early >= np.percentile(early, 75)
    tumour_mean = data[:, tumour].mean(axis=1)
    cortex_mean = data[:, outside][:, cortex].mean(axis=1)
    for c, name in enumerate(names[1:], start=1):
        cortex_gain = cortex_mean[c] - cortex_mean[0]
        if abs(cortex_gain) > 1e-6:
            out[f"{name}_enhancement_ratio"] = float((tumour_mean[c] - tumour_mean[0]) / cortex_gain)
    return out


def radiomic_features(row, *, settings=None) -> dict:
    """Radiomic features of one case-table row (``ct`` or ``image``, ``tumor_mask``, ``kidney_mask``).

    Returns
    -------
    dict of str to float
        ``shape_*`` once, ``{phase}_{class}_{feature}`` per channel (PyRadiomics names), and
        ``{phase}_enhancement_ratio`` for channels after the first.
    """
    import yaml

    settings = radiomic_settings() if settings is None else settings
    image_path = row.get("ct") or row.get("image")
    volume = read_nifti(image_path, case_id=str(row["case_id"]))
    tumour = read_mask(row["tumor_mask"], volume)
    if not tumour.any():
        raise InputError(f"{row['tumor_mask']}: the tumour mask of case {row['case_id']} is empty.")
    kidney = read_mask(row["kidney_mask"], volume) if row.get("kidney_mask") else None
    per_phase, shape = _extractors(yaml.safe_dump(settings, sort_keys=True))
    spacing = volume.spacing_mm
    mask_image = _sitk(tumour.astype(np.uint8), spacing)
    try:
        out = _values(shape.execute(_sitk(volume.data[0], spacing), mask_image), "")
        for name, channel in zip(channel_names(len(volume.data)), volume.data):
            out.update(_values(per_phase.execute(_sitk(channel, spacing), mask_image), f"{name}_"))
    except ValueError as err:  # PyRadiomics refuses masks below its minimum size or dimensions
        raise InputError(f"{row['tumor_mask']}: PyRadiomics cannot use the tumour mask of case {row['case_id']} ({err}).") from None
    out.update(enhancement_ratios(volume.data, tumour, kidney))
    return out
