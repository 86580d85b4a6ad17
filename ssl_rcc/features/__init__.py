"""Per-lesion feature blocks, each a pure function of a case-table row to a named vector, cached per case.

- ``image``: the encoder's embedding of the crop scaled to the tumour (:mod:`ssl_rcc.features.image`);
- ``lesion``: what that crop cannot carry: the tumour's size, per-phase levels and spreads, and those
  of a ring around it (:func:`ssl_rcc.features.lesion.lesion_features`; no encoder needed);
- ``kinetic``: tumour statistics of Ktrans, ve, vp, kep (:mod:`ssl_rcc.features.kinetic`);
- ``radiomic``: PyRadiomics (IBSI) features per phase and enhancement ratios (:mod:`ssl_rcc.features.radiomic`).

:func:`compute_features` runs the kinetic and radiomic blocks over cases in parallel processes and the
image and lesion blocks in this process (torch; the preprocessed lesion they share is cached), taking
every case it can from a :class:`FeatureCache`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from kinetics.options import available_cpus

from ..errors import InputError
from .cache import FeatureCache, default_cache_dir, file_digest
from .kinetic import MODEL as KINETIC_MODEL
from .lesion import LESION_MARGIN, RING_MM
from .kinetic import check_kinetic_row, kinetic_features, kinetic_inputs
from .radiomic import SETTINGS_FILE, radiomic_features

if TYPE_CHECKING:
    from ..data import PreprocessConfig

__all__ = ["BLOCKS", "parse_blocks", "compute_features", "FeatureCache", "default_cache_dir", "block_columns",
           "preprocessing_for"]

log = logging.getLogger("ssl_rcc")
BLOCKS = ("image", "lesion", "kinetic", "radiomic")
IN_PROCESS = ("image", "lesion")  # the blocks computed in this process, after the others' workers


def parse_blocks(features) -> tuple:
    """Block names from 'image,kinetic' or a sequence; each known, none repeated."""
    names = [f.strip() for f in (features.split(",") if isinstance(features, str) else features)]
    unknown = [n for n in names if n not in BLOCKS]
    if unknown or not names:
        raise InputError(f"features: unknown block(s) {unknown or names!r}; expected a subset of {list(BLOCKS)}.")
    if len(set(names)) != len(names):
        raise InputError(f"features: {names} names a block twice.")
    return tuple(names)


def block_columns(block: str) -> tuple:
    """Case-table columns a block needs in every row."""
    return {"image": ("tumor_mask",), "lesion": ("tumor_mask",), "kinetic": ("dce_tumor_mask",),
            "radiomic": ("tumor_mask",)}[block]


def _image_column(row):
    return "ct" if row.get("ct") else "image"


def _job_key(block, row, encoder_files=(), preprocessing=None):
    if block == "radiomic":
        files = [row[_image_column(row)], row["tumor_mask"]] + ([row["kidney_mask"]] if row.get("kidney_mask") else [])
        return FeatureCache.key(block, {"settings": file_digest(SETTINGS_FILE), "version": 1}, files)
    if block == "kinetic":
        columns = kinetic_inputs(row)
        values = [row.get(c, "") for c in ("tr_s", "fa_deg", "r1", "baseline_frames")] if "dce" in columns else []
        aif = row.get("aif", "")
        files = [row[c] for c in columns if c != "aif" or Path(aif).exists()]
        return FeatureCache.key(block, {"model": KINETIC_MODEL, "version": 1, "aif": Path(aif).name}, files, values)
    if block == "lesion":
        return FeatureCache.key(block, {"preprocessing": preprocessing, "margin": LESION_MARGIN, "ring_mm": RING_MM,
                                        "version": 1},
                                [row[_image_column(row)], row["tumor_mask"]])
    return FeatureCache.key(block, {"version": 4}, [row[_image_column(row)], row["tumor_mask"], *encoder_files])


def preprocessing_for(encoder: str | os.PathLike | None) -> PreprocessConfig:
    """The preprocessing of ``encoder`` (its encoder.json: spacing in mm, CT window in HU, MR
    percentiles), or the default one: what the image and lesion blocks resample and scale with."""
    from ..data import PreprocessConfig

    if encoder is None:
        return PreprocessConfig()
    from ..embed import read_encoder_meta
    from .image import preprocess_config

    return preprocess_config(read_encoder_meta(encoder))


def _tabular(job):
    block, row = job
    return radiomic_features(row) if block == "radiomic" else kinetic_features(row)


def _single_threaded():
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _progress(iterable, total, desc, progress):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="case", leave=False)


def compute_features(table: pd.DataFrame, blocks, *, encoder=None, cache=None, workers=None, progress=True) -> dict:
    """Feature blocks of every row of a case table (from :func:`ssl_rcc.data.cases.read_case_table`).

    Parameters
    ----------
    blocks : sequence of str
        Among :data:`BLOCKS`.
    encoder : None or str or Path
        ``encoder.pt`` (with its encoder.json) for the image block; the lesion block takes its
        preprocessing (spacing, intensity window), or the default one without an encoder.
    cache : None, str, Path or FeatureCache
        Where per-case vectors are kept (None: no cache).
    workers : int or None
        Processes for the tabular blocks (None: every core).

    Returns
    -------
    dict of str to pandas.DataFrame
        Per block, one row per case (index ``case_id``, in table order) and one column per feature.
    """
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    rows = [dict(r) for _, r in table.iterrows()]
    out = {}
    config = preprocessing_for(encoder)
    for block in sorted(blocks, key=lambda b: b in IN_PROCESS):  # fork the tabular workers before torch starts threads
        encoder_files = ()
        if block == "image":
            if encoder is None:
                raise InputError("features: the image block needs an encoder (--encoder RUN/encoder.pt or none).")
            encoder_files = (Path(encoder), Path(encoder).with_suffix(".json"))
        if block == "kinetic":
            for r in rows:
                check_kinetic_row(r, f"{table.attrs.get('source', 'case table')}, case {r['case_id']}")
        elif not all(r.get("ct") or r.get("image") for r in rows):
            case = next(r["case_id"] for r in rows if not (r.get("ct") or r.get("image")))
            raise InputError(f"{table.attrs.get('source', 'case table')}, case {case}: {block} features need a ct (or "
                             "image) file.")
        keys = [_job_key(block, r, encoder_files, config.to_dict()) for r in rows]
        values = [cache.get(block, k) for k in keys]
        todo = [i for i, v in enumerate(values) if v is None]
        if todo:
            log.info("%s features: %d of %d cases to compute (%d cached)", block, len(todo), len(rows), len(rows) - len(todo))
        if block == "image" and todo:
            from ..embed import load_encoder
            from .image import image_features

            model, meta = load_encoder(encoder)
            for i in _progress(todo, len(todo), "image features", progress):
                values[i] = image_features(rows[i], model, meta, cache=cache)
                cache.put(block, keys[i], values[i])
        elif block == "lesion" and todo:
            from .lesion import lesion_features

            for i in _progress(todo, len(todo), "lesion features", progress):
                values[i] = lesion_features(rows[i], config, cache=cache)
                cache.put(block, keys[i], values[i])
        elif todo:
            n_workers = min(len(todo), workers or available_cpus())
            jobs = [(block, rows[i]) for i in todo]
            if n_workers > 1:
                pool = ProcessPoolExecutor(n_workers, mp_context=get_context("fork"), initializer=_single_threaded)
                try:
                    results = _progress(pool.map(_tabular, jobs, chunksize=1), len(jobs), f"{block} features", progress)
                    for i, result in zip(todo, results):
                        values[i] = result
                        cache.put(block, keys[i], result)
                finally:  # a bad case stops the run at once: the cases not started are cancelled
                    pool.shutdown(wait=True, cancel_futures=True)
            else:
                for i, job in zip(todo, _progress(jobs, len(jobs), f"{block} features", progress)):
                    values[i] = _tabular(job)
                    cache.put(block, keys[i], values[i])
        names = list(values[0])
        for r, v in zip(rows, values):
            if list(v) != names:
                raise InputError(f"case {r['case_id']}: its {block} features differ from those of case {rows[0]['case_id']} "
                                 f"({len(v)} against {len(names)}: another number of channels?).")
        frame = pd.DataFrame([[v[n] for n in names] for v in values], columns=names,
                             index=pd.Index([r["case_id"] for r in rows], name="case_id"))
        out[block] = frame.astype(float)
    return out
