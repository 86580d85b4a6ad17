"""A preprocessing cache: each image decoded, oriented, resampled and normalised once.

Entries are float16 ``.npy`` arrays named by a content hash (the source files' bytes and the
preprocessing config), listed in ``manifest.csv``; unreadable or degenerate images are skipped, with
the reason, in ``skipped.csv``. A second run, or a second epoch, reads the arrays directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from kinetics.io import output_file
from kinetics.options import available_cpus

from ..errors import InputError
from .preprocess import PreprocessConfig, preprocess_volume
from .scan import ArchiveItem, load_item, scan_archive, scrub_paths
from .volume import case_id_for, read_mask

__all__ = ["build_cache", "open_cache", "content_key", "label_mask", "CachedArchive", "KIDNEY", "LESION"]

log = logging.getLogger("ssl_rcc")
MIN_VOXELS_PER_AXIS = 8
KIDNEY, LESION = 1, 2  # labels of the cached mask


def content_key(item: ArchiveItem, config: PreprocessConfig) -> str:
    """SHA-1 of the item's files (and masks) and of the preprocessing config: the cache entry's name."""
    h = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode())
    if item.lesion_mask:
        h.update(b"lesion")  # the same file as kidney or as lesion mask makes another label map
    for f in list(item.files) + [m for m in (item.mask, item.lesion_mask) if m]:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def _process(args):
    """Build one entry; returns a manifest row, or a skipped row with the reason (never raises)."""
    item, cache_dir, config = args
    try:
        key = content_key(item, config)
        path = Path(cache_dir) / f"{key}.npy"
        mask_path = Path(cache_dir) / f"{key}_mask.npy" if (item.mask or item.lesion_mask) else None
        if path.is_file() and (mask_path is None or mask_path.is_file()):
            data = np.load(path, mmap_mode="r")
        else:
            volume = load_item(item)
            mask = label_mask(item, volume)
            data, _, mask = preprocess_volume(volume, config, mask)
            if min(data.shape[1:]) < MIN_VOXELS_PER_AXIS:
                raise InputError(f"{item.files[0]}: {data.shape[1:]} voxels after resampling; too small to crop from.")
            if float(np.ptp(data)) == 0.0:
                raise InputError(f"{item.files[0]}: the image is constant after normalisation.")
            _save_npy(path, data.astype(np.float16))
            if mask is not None:
                _save_npy(mask_path, mask.astype(np.uint8))
        return {"case_id": item.case_id, "key": key, "shape": "x".join(map(str, data.shape)),
                "modality": item.modality or "", "has_mask": mask_path is not None, "status": "ok", "reason": ""}
    except (InputError, OSError, ValueError) as err:
        return {"case_id": item.case_id, "key": "", "shape": "", "modality": item.modality or "", "has_mask": False,
                "status": "skipped", "reason": scrub_paths(str(err), item)}


def label_mask(item: ArchiveItem, volume):
    """The item's masks as one uint8 label map on the volume's grid (KiTS's convention): :data:`KIDNEY`
    where the kidney mask is set, :data:`LESION` where the lesion mask is (over the kidney); None without
    masks. Crops centre on label > 0, lesion views on :data:`LESION`."""
    if not (item.mask or item.lesion_mask):
        return None
    labels = read_mask(item.mask, volume).astype(np.uint8) * KIDNEY if item.mask else np.zeros(volume.data.shape[1:], np.uint8)
    if item.lesion_mask:
        labels[read_mask(item.lesion_mask, volume)] = LESION
    return labels


def _save_npy(path: Path, array):
    with output_file(path, overwrite=True) as tmp:  # unique temporary name: safe with several nodes at once
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _save_text(path: Path, text: str):
    with output_file(path, overwrite=True) as tmp:
        tmp.write_text(text)


class CachedArchive:
    """The usable entries of a cache: ``manifest`` (DataFrame) and ``load(i)`` -> (data float16 memmap
    (C, X, Y, Z), mask or None)."""

    def __init__(self, cache_dir, manifest: pd.DataFrame):
        self.cache_dir = Path(cache_dir)
        self.manifest = manifest.reset_index(drop=True)

    def __len__(self):
        return len(self.manifest)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """(C, X, Y, Z) of every entry, ints."""
        return [tuple(int(v) for v in str(s).split("x")) for s in self.manifest["shape"]]

    @property
    def channels(self) -> int:
        """The images' number of channels; InputError if they differ (one kind of image at a time)."""
        counts = {shape[0] for shape in self.shapes}
        if len(counts) > 1:
            raise InputError(f"{self.cache_dir}: the images have different numbers of channels {sorted(counts)}; "
                             f"pretrain on one kind at a time.")
        return counts.pop()

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        row = self.manifest.iloc[int(i)]
        return self._open(row["key"], bool(row["has_mask"]))

    @lru_cache(maxsize=128)  # memory maps stay open (two descriptors each): a sample reads pages, it does not reopen files
    def _open(self, key, has_mask):
        data = np.load(self.cache_dir / f"{key}.npy", mmap_mode="r")
        mask = np.load(self.cache_dir / f"{key}_mask.npy", mmap_mode="r") if has_mask else None
        return data, mask


def build_cache(source, cache_dir, *, config=PreprocessConfig(), workers=None, progress=True,
                hash_ids=False, write_reports=True) -> CachedArchive:
    """Scan ``source`` (folder or CSV), preprocess every image into ``cache_dir``, skip the bad ones.

    ``hash_ids`` names NIfTI images by a hash of their path instead of their file stem;
    ``write_reports=False`` leaves the report files alone (for DDP processes other than the first,
    which find every entry already built).
    Writes ``manifest.csv`` (usable entries), ``skipped.csv`` (path-free reasons) and ``config.json``.
    Raises InputError when nothing in the archive is usable.
    """
    items, rejected = scan_archive(source, hash_ids=hash_ids)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    n_workers = min(max(len(items), 1), workers or available_cpus())
    jobs = [(item, str(cache_dir), config) for item in items]
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers, mp_context=get_context("fork")) as pool:
            iterator = pool.map(_process, jobs, chunksize=1)
            rows = list(_progress(iterator, len(jobs), progress))
    else:
        rows = list(_progress(map(_process, jobs), len(jobs), progress))
    table = pd.DataFrame(rows, columns=["case_id", "key", "shape", "modality", "has_mask", "status", "reason"])
    skipped = table[table["status"] != "ok"][["case_id", "reason"]]
    skipped = pd.concat([skipped, pd.DataFrame({"case_id": [case_id_for(str(p), prefix="file") for p, _ in rejected],
                                                "reason": [r for _, r in rejected]})], ignore_index=True)
    ok = table[table["status"] == "ok"].drop(columns=["status", "reason"])
    if write_reports:  # each written whole (other processes may read them); config.json last marks them done
        _save_text(cache_dir / "manifest.csv", ok.to_csv(index=False))
        _save_text(cache_dir / "skipped.csv", skipped.to_csv(index=False))
        _save_text(cache_dir / "config.json", json.dumps(config.to_dict(), indent=2))
    log.info("cache %s: %d usable images, %d skipped (see skipped.csv)", cache_dir, len(ok), len(skipped))
    if ok.empty:
        first = f"; the first: {skipped['reason'].iloc[0]}" if len(skipped) else ""
        raise InputError(f"{source}: no usable image among {len(items) + len(rejected)} files ({len(skipped)} skipped{first}).")
    return CachedArchive(cache_dir, ok)


def open_cache(cache_dir) -> CachedArchive:
    """The archive of a cache that :func:`build_cache` has written (its ``manifest.csv``)."""
    cache_dir = Path(cache_dir)
    try:
        manifest = pd.read_csv(cache_dir / "manifest.csv", keep_default_na=False,
                               dtype={"case_id": str, "key": str, "shape": str, "modality": str})
    except (OSError, ValueError) as err:
        raise InputError(f"{cache_dir}: cannot read the cache's manifest.csv ({type(err).__name__}).") from None
    return CachedArchive(cache_dir, manifest)


def _progress(iterator, total, enabled):
    if not enabled:
        return iterator
    from tqdm import tqdm

    return tqdm(iterator, total=total, desc="preprocessing", unit="image")
