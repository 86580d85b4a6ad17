"""Image features of a lesion: the encoder's embedding of the tumour, from the case table's image.

:func:`tumour_embedding` is the one place that decides what part of the image the encoder sees and
how its feature map becomes a vector; ``embed``, the k-NN probe and the heads all call it. Today it
embeds the ``patch``-sized crop centred on the tumour at the encoder's spacing (all CT phases or MR
sequences as channels) and averages the encoder's output over it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import PreprocessConfig, preprocess_volume, read_mask, read_nifti
from ..data.crops import centred_crop
from ..errors import InputError

__all__ = ["tumour_embedding", "image_features", "preprocess_config", "tumour_crop", "tumour_crops", "write_untrained_encoder"]


def preprocess_config(meta: dict) -> PreprocessConfig:
    """The preprocessing an exported encoder was trained with (from its encoder.json)."""
    return PreprocessConfig(spacing_mm=tuple(meta["spacing_mm"]), ct_window=tuple(meta["normalisation"]["CT"]["hu_window"]),
                            mr_percentiles=tuple(meta["normalisation"]["MR"]["percentiles"]))


def tumour_crop(data, mask, patch) -> np.ndarray:
    """The (C, *patch) float32 crop the encoder sees for one lesion (centred on ``mask``)."""
    return np.ascontiguousarray(centred_crop(np.asarray(data, np.float32), patch, mask=mask))


@torch.no_grad()
def tumour_embedding(encoder, data, mask) -> np.ndarray:
    """Embedding (out_dim,) of the lesion ``mask`` in a preprocessed (C, X, Y, Z) volume ``data``."""
    crop = torch.from_numpy(tumour_crop(data, mask, encoder.patch))[None]
    param = next(encoder.parameters())
    return encoder(crop.to(param.device, param.dtype)).float().cpu().numpy()[0]


def _preprocessed_lesion(row, encoder, meta):
    volume = read_nifti(row.get("ct") or row.get("image"), case_id=str(row["case_id"]))
    mask = read_mask(row["tumor_mask"], volume)
    if not mask.any():
        raise InputError(f"{row['tumor_mask']}: the tumour mask of case {row['case_id']} is empty.")
    if volume.data.shape[0] != encoder.in_channels:
        raise InputError(f"case {row['case_id']}: the image has {volume.data.shape[0]} channels, the encoder takes "
                         f"{encoder.in_channels}.")
    data, _, mask = preprocess_volume(volume, preprocess_config(meta), mask.astype(np.uint8))
    return data, mask


def tumour_crops(table, encoder, meta, *, progress=False) -> np.ndarray:
    """(n, C, *patch) float32 tumour crops of every row, as the encoder sees them (end-to-end training)."""
    rows = [dict(r) for _, r in table.iterrows()]
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="tumour crops", unit="case", leave=False)
    return np.stack([tumour_crop(*_preprocessed_lesion(r, encoder, meta), encoder.patch) for r in rows])


def image_features(row, encoder, meta) -> dict:
    """``e0 .. e{out_dim-1}``: :func:`tumour_embedding` of one case-table row (``ct``/``image``, ``tumor_mask``)."""
    data, mask = _preprocessed_lesion(row, encoder, meta)
    return {f"e{i}": float(v) for i, v in enumerate(tumour_embedding(encoder, data, mask))}


def write_untrained_encoder(folder, *, architecture, in_channels, patch, spacing_mm, seed=0, vit_patch=16):
    """Write ``folder/encoder.pt`` and ``encoder.json`` of a randomly initialised encoder (the
    from-scratch baseline: the same architecture with no pretraining); returns the .pt path."""
    import json
    from pathlib import Path

    from kinetics.io import output_file

    from ..data.preprocess import PreprocessConfig
    from ..models import ENCODER_FORMAT, build_encoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's generator
        torch.manual_seed(int(seed))
        encoder = build_encoder(architecture, in_channels=in_channels, patch=tuple(patch), vit_patch=vit_patch)
    config = PreprocessConfig()
    meta = dict(encoder.config(), format=ENCODER_FORMAT, method="none", steps=0, seed=int(seed),
                spacing_mm=[float(spacing_mm)] * 3,
                normalisation={"CT": {"hu_window": list(config.ct_window)}, "MR": {"percentiles": list(config.mr_percentiles)}},
                axis_order="RAS", input="(B, C, X, Y, Z), values in [0, 1]")
    with output_file(folder / "encoder.pt", overwrite=True) as tmp:
        torch.save(encoder.state_dict(), tmp)
    with output_file(folder / "encoder.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return folder / "encoder.pt"
