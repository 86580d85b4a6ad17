"""A per-case cache of feature vectors, keyed by the content of the files they come from.

A key is a hash of the block's name, its settings and the bytes of every input file of the case, so
a repeat, another protocol or another task reuses what was computed, and an edited file or a changed
setting is recomputed. Entries are small JSON files written atomically: two runs sharing a cache
never see half an entry. Arrays (a case's preprocessed lesion) are npz files, read without pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from kinetics.io import follow_umask
from kinetics.provenance import file_digest  # noqa: F401  (re-exported: the features use it)

__all__ = ["FeatureCache", "file_digest", "default_cache_dir"]



def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ssl-rcc/features`` (``~/.cache/ssl-rcc/features``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssl-rcc" / "features"


class FeatureCache:
    """Feature vectors on disk under ``root/<block>/<key>.json``; ``root=None`` caches nothing."""

    def __init__(self, root=None):
        self.root = None if root is None else Path(root)

    @staticmethod
    def key(block: str, settings: dict, files, values=()) -> str:
        """The cache key of one case: block, settings, the content of ``files`` and other ``values``."""
        h = hashlib.sha1(json.dumps([block, settings, list(map(str, values))], sort_keys=True, default=str).encode())
        for f in files:
            h.update(file_digest(f).encode())
        return h.hexdigest()

    def get(self, block: str, key: str):
        """The cached ``{name: value}`` or None."""
        if self.root is None:
            return None
        path = self.root / block / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, block: str, key: str, features: dict) -> None:
        if self.root is None:
            return
        # NaN is written as NaN, which json reads back
        self._write(block, f"{key}.json", lambda f: f.write(json.dumps(features).encode()))

    def get_arrays(self, block: str, key: str):
        """The cached ``{name: ndarray}`` of :meth:`put_arrays`, or None."""
        if self.root is None:
            return None
        try:
            with np.load(self.root / block / f"{key}.npz", allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, KeyError):
            return None

    def put_arrays(self, block: str, key: str, arrays: dict) -> None:
        """Keep ``{name: ndarray}`` (an npz file, written atomically; never pickled)."""
        if self.root is None:
            return
        self._write(block, f"{key}.npz", lambda f: np.savez(f, **arrays))

    def _write(self, block: str, name: str, write) -> None:
        """``write(binary file)`` into a temporary file beside ``root/block/name``, then renamed onto it."""
        folder = self.root / block
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=Path(name).suffix, dir=folder)
        follow_umask(tmp, directory=False)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, folder / name)
