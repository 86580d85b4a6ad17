"""``python -m ssl_rcc embed``: one embedding per image (or per tumour) from a pretrained encoder.

The encoder is rebuilt from RUN/encoder.json and its weights loaded with ``weights_only=True``; inputs
are preprocessed exactly as in pretraining (orientation, spacing, normalisation from the JSON).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike

from kinetics.io import output_file
from kinetics.provenance import provenance

from .data import load_item, preprocess_volume, scan_archive
from .data.cases import read_case_table
from .data.scan import IMAGE_COLUMNS, scrub_paths
from .data.volume import read_mask
from .errors import InputError
from .models import ENCODER_FORMAT, Encoder

__all__ = ["load_encoder", "read_encoder_meta", "embed_archive", "embed_volume"]

log = logging.getLogger("ssl_rcc")


def read_encoder_meta(path: str | os.PathLike) -> dict:
    """The checked ``encoder.json`` beside an ``encoder.pt`` (architecture, preprocessing, method)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise InputError(f"{path}: an encoder needs the weights file and its {meta_path.name} beside it.")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{meta_path}: not valid JSON.") from None
    if not isinstance(meta, dict) or meta.get("format") != ENCODER_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{meta_path}: not an ssl-rcc encoder description (format {found!r}).")
    return meta


def load_encoder(path: str | os.PathLike) -> tuple[Encoder, dict]:
    """An :class:`Encoder` from ``encoder.pt`` and its sidecar ``encoder.json``; returns (encoder, meta)."""
    path = Path(path)
    meta = read_encoder_meta(path)
    encoder = Encoder(meta["architecture"], meta["in_channels"], meta["patch"], meta.get("vit_patch", 16))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path}: the weights do not fit a {meta['architecture']} encoder ({str(err).splitlines()[0]}).") from None
    except Exception as err:
        raise InputError(f"{path}: cannot load the encoder weights ({type(err).__name__}).") from None
    return encoder.eval(), meta


def _tiles(shape, patch):
    """Start indices of crops that cover the volume (the last one flush with the far edge)."""
    axes = [sorted(set(list(range(0, max(s - p, 0) + 1, p)) + [max(s - p, 0)])) for s, p in zip(shape, patch)]
    return [np.array([a, b, c]) for a in axes[0] for b in axes[1] for c in axes[2]]


@torch.no_grad()
def embed_volume(encoder: Encoder, data: ArrayLike, *, mask: ArrayLike | None = None,
                 batch_size: int = 8) -> np.ndarray:
    """Embedding (out_dim,) of a preprocessed (C, X, Y, Z) volume: the lesion ``mask`` as
    :func:`ssl_rcc.features.image.tumour_embedding` sees it or, without one, the mean over crops
    tiling the whole volume."""
    from .features.image import tumour_embedding

    data = np.asarray(data, np.float32)
    if mask is not None and np.any(mask):
        return tumour_embedding(encoder, data, mask)
    patch = np.array(encoder.patch)
    pad = [(0, 0)] + [(0, int(max(p - s, 0))) for s, p in zip(data.shape[1:], patch)]
    data = np.pad(data, pad, mode="edge")
    starts = _tiles(np.array(data.shape[1:]), patch)
    crops = np.stack([data[(slice(None),) + tuple(slice(s, s + p) for s, p in zip(st, patch))] for st in starts])
    features = torch.cat([encoder(torch.from_numpy(crops[i:i + batch_size])) for i in range(0, len(crops), batch_size)])
    return features.mean(dim=0).numpy()


def embed_archive(encoder_path: str | os.PathLike, data: str | os.PathLike, *, out: str | os.PathLike,
                  overwrite: bool = False, batch_size: int = 8, hash_ids: bool = False, progress: bool = True) -> Path:
    """Embed every image of ``data`` (folder, or CSV; with a ``tumor_mask`` column, the tumour as
    :func:`ssl_rcc.features.image.lesion_crop` shows it) and write ``out`` (parquet: case_id, e0..e{d-1}); returns ``out``. ``hash_ids`` names the
    rows by a hash of each image's path rather than its file stem or the CSV's case_id."""
    from kinetics.options import number

    batch_size = number(batch_size, "batch_size", integer=True, positive=True)
    encoder, meta = load_encoder(encoder_path)
    from .features.image import preprocess_config

    config = preprocess_config(meta)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output file exists; choose another or pass --overwrite.")
    items, _ = scan_archive(data, hash_ids=hash_ids)
    tumour_masks = {}  # by image path: case ids may be hashes
    if Path(data).suffix == ".csv":
        header = pd.read_csv(data, nrows=0).columns
        column = next((c for c in IMAGE_COLUMNS if c in header), None)
        if "tumor_mask" in header and column and "case_id" in header:
            table = read_case_table(data)
            tumour_masks = {str(Path(i).resolve()): m for i, m in zip(table[column], table["tumor_mask"]) if i and m}
    rows, skipped = [], 0
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="embed", unit="image", leave=False)
    for item in items:
        try:
            volume = load_item(item)
            mask = None
            image = item.files[0] if item.kind == "nifti" else str(Path(item.files[0]).parent)
            if image in tumour_masks:
                mask = read_mask(tumour_masks[image], volume)
            arr, _, mask = preprocess_volume(volume, config, mask)
        except (InputError, OSError, ValueError) as err:  # one bad image is skipped, as in the cache
            log.warning("skipped %s", scrub_paths(str(err), item))
            skipped += 1
            continue
        if arr.shape[0] != meta["in_channels"]:
            raise InputError(f"{item.case_id}: {arr.shape[0]} channels, the encoder takes {meta['in_channels']}.")
        rows.append([item.case_id] + embed_volume(encoder, arr, mask=mask, batch_size=batch_size).tolist())
    if not rows:
        raise InputError(f"{data}: no image could be embedded ({skipped} skipped).")
    frame = pd.DataFrame(rows, columns=["case_id"] + [f"e{i}" for i in range(len(rows[0]) - 1)])
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    origin = provenance("ssl_rcc", {"encoder": encoder_path, "encoder_json": Path(encoder_path).with_suffix(".json")},
                        command=not hash_ids)
    # in the file's schema metadata: pandas.read_parquet ignores it, pyarrow.parquet.read_schema(path).metadata has it
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"ssl_rcc": json.dumps(origin).encode()})
    with output_file(out, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp)
    log.info("embedded %d images (%d skipped) into %s", len(rows), skipped, out)
    return out
