"""A saved head (``model/``): what ``finetune`` writes and ``predict`` loads.

``head.json`` (format, task, classes, feature blocks and their feature names, the head's settings),
``head.npz`` (its arrays; loaded with ``allow_pickle=False``) and, for the image block, a copy of the
encoder (``encoder.pt``, ``encoder.json``), so that the folder is self-contained.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..errors import InputError
from .heads import head_from_state

if TYPE_CHECKING:
    from .endtoend import FinetuneHead
    from .heads import KnnHead, ProbeHead

__all__ = ["save_model", "load_model", "MODEL_FORMAT"]

MODEL_FORMAT = "ssl-rcc-head/2"  # 2: the image block is the embedding alone (its descriptors: the lesion block)


def save_model(folder: str | os.PathLike, head: ProbeHead | KnnHead | FinetuneHead, *, task: str,
               blocks: Sequence[str], feature_names: Mapping[str, Sequence[str]],
               encoder: str | os.PathLike | None = None, settings: dict | None = None,
               provenance: dict | None = None) -> None:
    """Write a fitted head to ``folder`` (created); ``encoder`` the encoder.pt used for the image block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta, arrays = head.state()
    description = {"format": MODEL_FORMAT, "ssl_rcc_version": __version__, "task": task, "blocks": list(blocks),
                   "feature_names": {b: list(feature_names[b]) for b in blocks}, "head": meta,
                   "settings": settings or {}, "provenance": provenance or {}}
    if encoder is not None:
        shutil.copyfile(encoder, folder / "encoder.pt")
        shutil.copyfile(Path(encoder).with_suffix(".json"), folder / "encoder.json")
    np.savez(folder / "head.npz", **arrays)
    (folder / "head.json").write_text(json.dumps(description, indent=2))


def load_model(folder: str | os.PathLike) -> tuple[dict, ProbeHead | KnnHead | FinetuneHead]:
    """(description dict, fitted head) of a saved model; InputError for a folder that is not one, or one
    written by another format version."""
    folder = Path(folder)
    path = folder / "head.json"
    if not path.is_file() or not (folder / "head.npz").is_file():
        raise InputError(f"{folder}: not a saved model (it needs head.json and head.npz, as finetune writes in DIR/model).")
    try:
        description = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path}: not valid JSON.") from None
    if description.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: model format {description.get('format')!r}; this version of ssl-rcc reads {MODEL_FORMAT!r} "
                         "(run finetune again to make one).")
    try:
        with np.load(folder / "head.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        head = head_from_state(description["head"], arrays)
    except (KeyError, ValueError, OSError) as err:
        raise InputError(f"{folder}: the saved head is incomplete or damaged ({type(err).__name__}).") from None
    if "image" in description["blocks"] and not (folder / "encoder.pt").is_file():
        raise InputError(f"{folder}: the model uses image features but its encoder.pt is missing.")
    return description, head
