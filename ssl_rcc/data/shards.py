"""Preprocessed volumes in sharded TFRecord files, and a resumable stream of training samples from them.

``pack`` preprocesses an archive once (through the cache) and writes ``shard-00000-of-000NN.tfrecord``
files of ``tf.train.Example`` records, images spread over the shards in a seeded random order, and an
``index.json`` (format ``ssl-rcc-shards/1``) written last: a folder without it is not a finished pack.
Records carry a content-hash ``case_id``, never a name or path:

    case_id   bytes   content hash of the source files and preprocessing
    image     bytes   float16, C order, shape ``shape``, values in [0, 1]
    shape     int64   (C, X, Y, Z)
    mask      bytes   uint8 kidney mask (X, Y, Z), or empty
    modality  bytes   CT | MR | ""
    spacing_mm float  (3,)

:class:`ShardStream` reads the shards sequentially (TensorFlow's reader, CRC-checked, imported in the
loader processes only and kept off the GPUs). Each loader worker owns a *lane*: batches ``b`` with
``b % lanes == lane`` of this rank. A lane walks its own shards (when their number is a multiple of
all processes' lanes) or every lanes-th record of all shards, in a seeded order, cycle after cycle, and
keeps a buffer of ``buffer`` consecutive volumes of that walk, advancing one volume every ``turnover``
samples; sample ``n`` of a lane crops a buffered volume chosen by ``(seed, lane, n)``. Every sample is
therefore a function of the run seed and its position, and a resumed run skips to the volume its lane
had reached (reading, not decoding, the records before it): the samples after a resume are those of an
uninterrupted run, provided the number of loader workers and processes is the same.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kinetics.io import follow_umask

from ..errors import InputError
from .cache import build_cache
from .preprocess import PreprocessConfig
from .views import LESION_PROB, check_patch_fits, make_views

__all__ = ["pack", "ShardIndex", "ShardStream", "is_shard_folder", "FORMAT"]

log = logging.getLogger("ssl_rcc")
FORMAT = "ssl-rcc-shards/1"
TF_MISSING = "TensorFlow is needed for TFRecord shards: install the tf extra (pip install 'ssl-rcc[tf]')."


def _tensorflow():
    """TensorFlow for file I/O only: its GPUs hidden, so a loader process never takes GPU memory."""
    try:  # Triton's and TensorFlow's bundled LLVMs clash: loading libtriton after TensorFlow segfaults
        import triton  # noqa: F401
    except ImportError:
        pass
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError:
        raise InputError(TF_MISSING) from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised in this process: devices were set then
        pass
    return tf


def is_shard_folder(path) -> bool:
    """Whether ``path`` is a folder written by :func:`pack` (it holds an ``index.json`` of the format)."""
    index = Path(path) / "index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def pack(data, out, *, spacing=1.5, shards=None, shard_mb=512, seed=0, overwrite=False, cache=None, workers=None,
         hash_ids=False, progress=True) -> Path:
    """Preprocess ``data`` (folder or CSV) and write it to TFRecord shards in ``out``; returns ``out``.

    ``shards`` fixes the number of shards (default: enough for about ``shard_mb`` MiB each, at least
    one); for multi-process training pack a multiple of devices x loader workers, so that every loader
    lane reads its own files (otherwise every lane reads all of them and keeps its share of records).
    ``cache`` keeps the preprocessing cache (default: a temporary one). The images must all have the
    same number of channels.
    """
    from kinetics.options import number

    tf = _tensorflow()
    out = Path(out)
    spacing = number(spacing, "spacing", "mm", positive=True)
    shard_mb = number(shard_mb, "shard_mb", "MiB", positive=True)
    shards = None if shards is None else number(shards, "shards", integer=True, positive=True)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: exists; pass --overwrite to replace it.")
        if not (out / "index.json").is_file():
            raise InputError(f"{out}: not a shard folder (no index.json); --overwrite only replaces packs.")
    config = PreprocessConfig(spacing_mm=(spacing,) * 3)
    with tempfile.TemporaryDirectory(prefix="ssl-rcc-pack-") as tmp:
        archive = build_cache(data, Path(cache) if cache else Path(tmp) / "cache", config=config, workers=workers,
                              progress=progress, hash_ids=hash_ids)
        shapes, channels = archive.shapes, archive.channels
        float16_bytes = sum(2 * int(np.prod(shape)) for shape in shapes)
        n_shards = min(shards or max(1, int(np.ceil(float16_bytes / (shard_mb * 2**20)))), len(archive))
        order = np.random.default_rng(int(seed)).permutation(len(archive))
        staging = Path(tempfile.mkdtemp(prefix=".pack-", dir=out.parent if out.parent.exists() else None))
        follow_umask(staging, directory=True)
        try:
            counts = [0] * n_shards
            names = [f"shard-{i:05d}-of-{n_shards:05d}.tfrecord" for i in range(n_shards)]
            writers = [tf.io.TFRecordWriter(str(staging / name)) for name in names]
            try:
                for j, i in enumerate(order):
                    writers[j % n_shards].write(_example(tf, archive, int(i), spacing).SerializeToString())
                    counts[j % n_shards] += 1
            finally:
                for w in writers:
                    w.close()
            shutil.copy(archive.cache_dir / "skipped.csv", staging / "skipped.csv")
            index = {"format": FORMAT, "n_images": len(archive), "channels": channels,
                     "largest_shape": [int(v) for v in np.max([shape[1:] for shape in shapes], axis=0)],
                     "preprocessing": config.to_dict(), "seed": int(seed),
                     "shards": [{"file": n, "records": c} for n, c in zip(names, counts)]}
            (staging / "index.json").write_text(json.dumps(index, indent=2))  # last: marks the pack complete
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("packed %d images into %d shards: %s", len(archive), n_shards, out)
    return out


def _example(tf, archive, i, spacing):
    row = archive.manifest.iloc[i]
    data, mask = archive.load(i)
    shape = [int(v) for v in np.shape(data)]
    feature = {
        "case_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(row["key"]).encode()])),
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(data, "<f2").tobytes()])),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=shape)),
        "mask": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"" if mask is None else np.ascontiguousarray(mask, np.uint8).tobytes()])),
        "modality": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(row["modality"] or "").encode()])),
        "spacing_mm": tf.train.Feature(float_list=tf.train.FloatList(value=[float(spacing)] * 3)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def decode_example(tf, record: bytes):
    """(case_id, image float16 (C, X, Y, Z), mask uint8 (X, Y, Z) or None) of a serialised record."""
    f = tf.train.Example.FromString(record).features.feature
    shape = tuple(f["shape"].int64_list.value)
    image = np.frombuffer(f["image"].bytes_list.value[0], dtype="<f2").reshape(shape)
    raw = f["mask"].bytes_list.value[0]
    mask = np.frombuffer(raw, dtype=np.uint8).reshape(shape[1:]) if raw else None
    return f["case_id"].bytes_list.value[0].decode(), image, mask


class ShardIndex:
    """A pack's ``index.json``: shard files, record counts, channels, preprocessing."""

    def __init__(self, folder):
        self.folder = Path(folder)
        try:
            meta = json.loads((self.folder / "index.json").read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{self.folder}: cannot read index.json ({err}).") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InputError(f"{self.folder}: index.json is not of format {FORMAT}.")
        self.meta = meta
        try:
            self.files = [self.folder / s["file"] for s in meta["shards"]]
            self.records = [int(s["records"]) for s in meta["shards"]]
            self.channels = int(meta["channels"])
            self.spacing_mm = float(meta["preprocessing"]["spacing_mm"][0])
            self.largest_shape = tuple(int(v) for v in meta["largest_shape"])
            int(meta["n_images"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(f"{self.folder}: index.json lacks or garbles an entry ({type(err).__name__}: {err}); pack the archive again.") from None
        missing = [f.name for f in self.files if not f.is_file()]
        if missing:
            raise InputError(f"{self.folder}: shard {missing[0]} is missing ({len(missing)} of {len(self.files)}).")

    def __len__(self):
        return int(self.meta["n_images"])


class ShardStream(IterableDataset):
    """Training samples streamed from a pack, batch by batch (see the module docstring).

    Parameters
    ----------
    index : ShardIndex
    patch : (3,) int
    batch_size : int
        Samples per batch (the loader's batch size).
    total_batches : int
        Batches of this rank in the whole run (steps x accumulation).
    start_batch : int
        Batches already done (after a resume, the restored step times the accumulation). A plain
        number, so that the stream pickles into loader workers under any start method.
    rank, world : int
        This process and the number of processes.
    buffer, turnover : int
        Volumes held per lane, and samples between two new volumes.
    """

    def __init__(self, index: ShardIndex, patch, *, batch_size, total_batches, start_batch=0, rank=0, world=1,
                 n_views=2, seed=0, kidney_prob=0.8, transform=None, device_views=False, buffer=8, turnover=2, scale=None,
                 lesion_prob=LESION_PROB):
        self.index, self.patch, self.batch_size = index, np.asarray(patch, int), int(batch_size)
        self.total_batches, self.start_batch, self.rank, self.world = int(total_batches), start_batch, int(rank), int(world)
        self.n_views, self.seed, self.kidney_prob = int(n_views), int(seed), float(kidney_prob)
        self.lesion_prob = float(lesion_prob)
        self.transform, self.device_views = transform, bool(device_views)
        self.buffer, self.turnover = int(buffer), int(turnover)
        self.scale = None if scale is None else tuple(float(f) for f in scale)
        self.channels = index.channels
        check_patch_fits(self.patch, index.largest_shape)

    def _lane_parts(self, lane_id, lanes):
        """(shard, first record, step) of each part of the shards that makes up the lane's cycle: its own
        shards when their number is a multiple of the lanes, else every lanes-th record of all of them
        (so each image weighs the same); all records when a lane would get none."""
        records, n = self.index.records, len(self.index.files)
        if n % lanes == 0:
            parts = [(f, 0, 1) for f in range(n) if f % lanes == lane_id]
        else:
            starts = np.cumsum([0] + records[:-1])  # global number of each shard's first record
            parts = [(f, int((lane_id - starts[f]) % lanes), lanes) for f in range(n)]
        parts = [(f, first, step) for f, first, step in parts if first < records[f]]
        return parts or [(f, 0, 1) for f in range(n)]

    def _walk(self, lane_id, lanes, skip):
        """The lane's volumes from number ``skip`` on: (image, mask), cycle after cycle."""
        tf = _tensorflow()
        parts = self._lane_parts(lane_id, lanes)
        sizes = [len(range(first, self.index.records[f], step)) for f, first, step in parts]
        cycle, skip = divmod(int(skip), sum(sizes))
        while True:
            for k in np.random.default_rng([self.seed, lane_id, cycle]).permutation(len(parts)):
                if skip >= sizes[k]:  # resuming: whole parts before the lane's position are not read
                    skip -= sizes[k]
                    continue
                f, first, step = parts[k]
                records = tf.data.TFRecordDataset(str(self.index.files[f])).skip(first).shard(step, 0).skip(skip)
                try:
                    for record in records.as_numpy_iterator():
                        _, image, mask = decode_example(tf, record)
                        yield image, mask
                except (tf.errors.OpError, KeyError, IndexError, ValueError) as err:  # corrupt or foreign records
                    reason = str(getattr(err, "message", err)).splitlines()[0]
                    raise InputError(f"{self.index.files[f]}: unreadable record ({type(err).__name__}: {reason}).") from None
                skip = 0
            cycle += 1

    def __iter__(self):
        info = get_worker_info()
        lanes, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        b0 = int(self.start_batch)
        first = b0 + worker  # the loader asks its workers in turn: this worker makes b0+worker, +lanes, ...
        if first >= self.total_batches:
            return
        lane = first % lanes
        lane_id = self.rank * lanes + lane
        n0 = (first // lanes) * self.batch_size  # the lane's sample number
        t0 = n0 // self.turnover
        walk = self._walk(lane_id, self.world * lanes, t0)
        held = [next(walk) for _ in range(self.buffer)]  # volumes t0 .. t0 + buffer - 1
        t = t0
        for b in range(first, self.total_batches, lanes):
            n_start = (b // lanes) * self.batch_size
            for n in range(n_start, n_start + self.batch_size):
                while n // self.turnover > t:
                    held.pop(0)
                    held.append(next(walk))
                    t += 1
                rng = np.random.default_rng([self.seed, lane_id, n])
                image, mask = held[int(rng.integers(self.buffer))]
                yield make_views(image, mask, rng, self.patch, n_views=self.n_views, kidney_prob=self.kidney_prob,
                                 transform=None if self.device_views else self.transform, scale=self.scale,
                                 lesion_prob=self.lesion_prob)
