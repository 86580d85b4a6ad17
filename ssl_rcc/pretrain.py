"""``python -m ssl_rcc pretrain``: self-supervised pretraining of a 3D encoder on an unlabeled archive.

RUN/checkpoints/last.ckpt (Lightning, for --resume), RUN/encoder.pt (plain state_dict),
RUN/encoder.json (everything needed to rebuild and feed it), RUN/metrics.csv, RUN/tb/ (TensorBoard),
RUN/run.json (the options), RUN/cache/ (preprocessed volumes, unless --cache points elsewhere).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kinetics.io import output_file
from kinetics.provenance import provenance

from .data import PreprocessConfig, build_cache
from .data.cache import open_cache
from .data.volume import case_id_for
from .data.batch_views import BatchViewTransform
from .data.shards import ShardIndex, ShardStream, is_shard_folder
from .data.views import IntensityViewTransform, PretrainDataset, ViewTransform
from .errors import InputError
from .methods import get_method
from .models import ENCODER_FORMAT
from .pretrain_config import OPTIONS, PretrainConfig

__all__ = ["pretrain", "export_encoder", "ENCODER_FORMAT"]

log = logging.getLogger("ssl_rcc")
# what a resumed run must share with the run it continues and only the images tell (PretrainConfig.resolve
# compares the options, before the images are opened): the method, the channels, the spacing of shards
_IDENTITY = ("method", "channels", "spacing_mm")


def _process_ranks():
    """(local rank, node rank) of this process: set by Lightning's DDP launcher for the processes it
    starts, or by SLURM when ``srun`` starts every process itself."""
    env = os.environ
    if "LOCAL_RANK" in env or "NODE_RANK" in env or int(env.get("SLURM_NTASKS", 1)) <= 1:
        return int(env.get("LOCAL_RANK", 0)), int(env.get("NODE_RANK", 0))
    return int(env.get("SLURM_LOCALID", 0)), int(env.get("SLURM_NODEID", 0))


def _cache_built_for(cache_dir, preprocessing):
    """Whether ``cache_dir`` holds a finished cache made with ``preprocessing`` (its config.json)."""
    try:
        return (json.loads((cache_dir / "config.json").read_text()) == preprocessing.to_dict()
                and (cache_dir / "manifest.csv").is_file())
    except (OSError, ValueError):
        return False


def _secondary_rank():
    """True in every process but the first of the first node: those do not prepare RUN."""
    return any(r > 0 for r in _process_ranks())


def export_encoder(module, run_dir: Path, config: dict):
    """Write RUN/encoder.pt (state_dict of the backbone) and RUN/encoder.json, each atomically."""
    state = {k: v.detach().cpu() for k, v in module.backbone.state_dict().items()}
    with output_file(run_dir / "encoder.pt", overwrite=True) as tmp:
        torch.save(state, tmp)
    meta = dict(module.backbone.config(), format=ENCODER_FORMAT, **config)
    with output_file(run_dir / "encoder.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def _removes_a_failed_new_run(train):
    """``train`` (pretrain's body), except that a run directory it created is removed again when an
    input error stops it before anything was trained (no checkpoint, no encoder), so that the corrected
    command is not refused with "run directory exists"."""

    @functools.wraps(train)
    def wrapper(data, *, out, resume=False, **options):
        run = Path(out)
        new = not resume and not _secondary_rank() and not (run.exists() and any(run.iterdir()))
        try:
            return train(data, out=out, resume=resume, **options)
        except InputError:
            if new and run.is_dir() and not (run / "checkpoints").exists() and not (run / "encoder.pt").exists():
                shutil.rmtree(run, ignore_errors=True)
            raise

    return wrapper


@_removes_a_failed_new_run
def pretrain(data: str | os.PathLike, *, method: str, out: str | os.PathLike, resume: bool = False,
             overwrite: bool = False, cache: str | os.PathLike | None = None, probe: str | os.PathLike | None = None,
             hash_ids: bool = False, progress: bool = True, **options: Any) -> Path:
    """Pretrain an encoder with ``method`` on the images of ``data`` (folder, CSV or shards); returns RUN.

    ``options`` are those of :data:`~ssl_rcc.pretrain_config.OPTIONS` (the command line's
    ``python -m ssl_rcc pretrain --help`` lists them); an unknown one is refused. Options left out (or
    None) come from the ``recipe`` (:mod:`ssl_rcc.recipes`: ``cpu``, ``gpu``, or ``auto`` by the device)
    or, when resuming, from the run's own run.json; given ones must then equal the run's, except
    ``max_steps``, which lengthens or shortens it (the cosine schedule is then that of the new length).
    A run directory ``out`` is never overwritten without ``overwrite``; ``resume`` continues RUN from
    ``checkpoints/last.ckpt`` with the same data order, so the steps and the loss curve are those of an
    uninterrupted run. ``max_steps=0`` exports the untrained encoder (the from-scratch baseline);
    ``max_time`` (minutes) stops training after that long, and run.json records the steps actually
    trained. ``cache`` is the preprocessing cache (default RUN/cache), ``probe`` a labelled case table
    for the k-NN probe, ``hash_ids`` names images by a hash of their path.

    The steps: the options are resolved and checked (:class:`~ssl_rcc.pretrain_config.PretrainConfig`),
    RUN is prepared, the images opened (cache or shards), the schedule and run.json written, then the
    model, its views and the Trainer are built and trained, and the encoder exported.
    """
    import pytorch_lightning as pl

    run = Path(out)
    run_file = run / "run.json"
    get_method(method)  # an unknown method is the first thing to hear about
    try:
        previous = json.loads(run_file.read_text()) if resume and run_file.is_file() else {}
    except ValueError:
        raise InputError(f"{run_file}: not valid JSON; the run cannot be resumed.") from None
    accelerator = options.get("accelerator") or OPTIONS["accelerator"].default
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    given = dict(options, method=method)
    config = PretrainConfig.resolve(given, previous, cuda=use_cuda, where=str(run))
    last = run / "checkpoints" / "last.ckpt"
    secondary = _secondary_rank()
    _prepare_run_directory(run, last, resume=resume, overwrite=overwrite, secondary=secondary)
    images = _open_images(data, config, run, cache=cache, progress=progress, secondary=secondary, hash_ids=hash_ids)
    identity = {"method": method, "architecture": config.architecture, "patch": config.patch,
                "vit_patch": config.vit_patch, "channels": images.channels, "spacing_mm": images.spacing_mm}
    if resume and not secondary:
        differ = {k: (previous.get(k), identity[k]) for k in _IDENTITY if previous.get(k) != identity[k]}
        if differ:
            raise InputError(f"{last}: the checkpoint is of another run ({', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}).")
    max_steps = config.max_steps
    if max_steps is None and previous:  # a resumed run keeps its length and schedule
        max_steps = previous.get("max_steps")
    if max_steps is None:
        n_epochs = config.epochs if config.epochs is not None else 1
        max_steps = max(1, math.ceil(n_epochs * images.n_images / (config.batch_size * config.accumulate * config.world)))
    warmup = max_steps // 10 if config.warmup_steps is None else config.warmup_steps
    precision = config.precision or ("16-mixed" if use_cuda else "32-true")
    on_device = config.augment == "device" or (config.augment == "auto" and use_cuda)
    if previous.get("augment") not in (None, "device" if on_device else "loader"):
        log.warning("resuming with views made by the %s, where the run made them by the %s: the views from here on "
                    "differ from an uninterrupted run's", "device" if on_device else "loader", previous["augment"])
    # run.json: the config as resolved, what it left open decided (length, warm-up, precision, where views are made)
    options = dict(dataclasses.asdict(config), **identity, max_steps=max_steps, warmup_steps=warmup, precision=precision,
                   augment="device" if on_device else "loader",
                   data=case_id_for(str(Path(data).resolve()), prefix="data") if hash_ids else str(data),
                   n_images=images.n_images, preprocessing=images.preprocessing.to_dict(),
                   source="shards" if images.shards is not None else "cache",
                   provenance=provenance("ssl_rcc", command=not hash_ids))
    if not secondary:
        run_file.write_text(json.dumps(options, indent=2))
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = _method_module(config, images.channels, max_steps=max_steps, warmup_steps=warmup)
    encoder_meta = {"method": method, "spacing_mm": [images.spacing_mm] * 3,
                    "normalisation": {"CT": {"hu_window": list(images.preprocessing.ct_window)},
                                      "MR": {"percentiles": list(images.preprocessing.mr_percentiles)}},
                    "axis_order": "RAS", "input": "(B, C, X, Y, Z), values in [0, 1]"}
    if max_steps == 0:  # the untrained encoder, as initialised from the seed: the from-scratch baseline
        if not secondary:
            export_encoder(module, run, dict(encoder_meta, steps=0))
            run_file.write_text(json.dumps(dict(options, steps_trained=0), indent=2))
            log.info("exported the untrained %s encoder (--max-steps 0): %s", config.architecture, run)
        return run
    datamodule = _training_data(config, images, module, max_steps=max_steps, on_device=on_device)
    callbacks = _monitors(config, images, probe, max_steps=max_steps)
    steps = _train(config, module, datamodule, callbacks, run, last, resume=resume, max_steps=max_steps,
                   precision=precision, use_cuda=use_cuda, progress=progress, encoder_meta=encoder_meta,
                   options=options, data=data)
    if steps is not None:
        stopped = "max_steps" if steps >= max_steps else ("max_time" if config.max_time_min is not None else "interrupted")
        run_file.write_text(json.dumps(dict(options, steps_trained=steps, stopped_by=stopped), indent=2))
        if stopped == "max_time":
            log.warning("stopped by --max-time after %d of %d steps; the learning rate had not finished its schedule",
                        steps, max_steps)
        log.info("pretrained %s (%s) for %d steps: %s", config.architecture, method, steps, run)
    return run


def _prepare_run_directory(run: Path, last: Path, *, resume: bool, overwrite: bool, secondary: bool) -> None:
    """Check that RUN may be written (or resumed) and create it; DDP's other processes leave it to rank 0."""
    if secondary:
        pass  # DDP re-runs pretrain in every process: rank 0 has already checked and prepared RUN
    elif resume:
        if not last.is_file():
            raise InputError(f"{run}: --resume needs {last}, which does not exist.")
    elif run.exists() and any(run.iterdir()):
        if not overwrite:
            raise InputError(f"{run}: run directory exists; pass --resume to continue it or --overwrite to replace it.")
        if not (run / "run.json").is_file():
            raise InputError(f"{run}: not a pretraining run (no run.json); --overwrite only replaces runs.")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class _Images:
    """The images a run trains on: a cache (``archive``) or TFRecord ``shards``, with what the run records."""

    archive: Any
    shards: Any
    channels: int
    n_images: int
    spacing_mm: float
    preprocessing: PreprocessConfig


def _open_images(data, config: PretrainConfig, run: Path, *, cache, progress: bool, secondary: bool,
                 hash_ids: bool) -> _Images:
    """TFRecord shards from ``pack`` (preprocessed already, streamed), or the archive's preprocessed cache,
    built by the node's first process (the others open it)."""
    if is_shard_folder(data):
        shards = ShardIndex(data)
        preprocessing = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in shards.meta["preprocessing"].items()})
        return _Images(None, shards, shards.channels, len(shards), shards.spacing_mm, preprocessing)
    preprocessing = PreprocessConfig(spacing_mm=(config.spacing_mm,) * 3)
    cache_dir = Path(cache) if cache else run / "cache"
    if _process_ranks()[0] > 0 and _cache_built_for(cache_dir, preprocessing):
        archive = open_cache(cache_dir)
    else:
        archive = build_cache(data, cache_dir, config=preprocessing, progress=progress and not secondary,
                              write_reports=not secondary, hash_ids=bool(hash_ids))
    return _Images(archive, None, archive.channels, len(archive), config.spacing_mm, preprocessing)


def _method_module(config: PretrainConfig, channels: int, *, max_steps: int, warmup_steps: int):
    """The method's LightningModule around a fresh encoder (initialised from the seed set just before)."""
    encoder = {"architecture": config.architecture, "in_channels": channels, "patch": config.patch,
               "vit_patch": config.vit_patch}
    extra = {"simclr": {"temperature": float(config.temperature)},
             "mae": {"normalise_target": bool(config.normalise_target)}}.get(config.method, {})
    return get_method(config.method)(encoder, lr=float(config.lr), max_steps=max(max_steps, 1),
                                     warmup_steps=warmup_steps, **extra)


def _training_data(config: PretrainConfig, images: _Images, module, *, max_steps: int, on_device: bool):
    """The views (random resized crops with light intensity changes, as the recipes make them, or, without
    crop_scale, crops of the patch with MONAI's augmentations) and the data module that batches them;
    views made on the device are set on ``module``."""
    from .training import PretrainData

    method_cls = get_method(config.method)
    gamma = None if config.gamma is None else tuple(config.gamma)
    light = dict(intensity=config.intensity, gamma=gamma, noise_std=0.02)
    if on_device:
        module.device_transform = (BatchViewTransform(geometric=False, intensity=light["intensity"],
                                                      gamma=light["gamma"] or (1.0, 1.0), noise_std=0.02)
                                   if config.crop_scale else BatchViewTransform(geometric=method_cls.geometric_views))
    if config.crop_scale:
        transform = IntensityViewTransform(**light)
    else:
        transform = ViewTransform() if method_cls.geometric_views else IntensityViewTransform()
    if images.shards is not None:
        dataset = ShardStream(images.shards, config.patch, batch_size=config.batch_size,
                              total_batches=max_steps * config.accumulate, n_views=method_cls.n_views, seed=config.seed,
                              transform=transform, device_views=on_device, scale=config.crop_scale)
    else:
        dataset = PretrainDataset(images.archive, config.patch, n_views=method_cls.n_views, seed=config.seed,
                                  device_views=on_device, transform=transform, scale=config.crop_scale)
    return PretrainData(dataset, batch_size=config.batch_size, accumulate=config.accumulate, max_steps=max_steps,
                        workers=config.workers)


def _monitors(config: PretrainConfig, images: _Images, probe, *, max_steps: int) -> list:
    """Callbacks that watch the representation: its health on a fixed set of crops, and the k-NN probe."""
    callbacks = []
    if images.shards is None:  # a fixed set of crops, drawn apart from the training samples
        from .training import RepresentationHealth

        fixed = PretrainDataset(images.archive, config.patch, n_views=1, seed=config.seed + 7919, device_views=True,
                                scale=config.crop_scale)
        callbacks.append(RepresentationHealth(np.stack([fixed[i][0].numpy() for i in range(64)]),
                                              every_n_steps=config.probe_every, max_steps=max_steps))
    if probe is not None:
        from .probe import KnnProbe

        monitor = KnnProbe(probe, patch=config.patch, spacing_mm=images.spacing_mm, every_n_steps=config.probe_every)
        if monitor.crops.shape[1] != images.channels:  # checked here, on every rank, not inside training on rank 0
            raise InputError(f"{probe}: the probe cases have {monitor.crops.shape[1]} channels, the images {images.channels}.")
        callbacks.append(monitor)
    return callbacks


def _train(config: PretrainConfig, module, datamodule, callbacks, run: Path, last: Path, *, resume: bool,
           max_steps: int, precision: str, use_cuda: bool, progress: bool, encoder_meta: dict, options: dict,
           data) -> int | None:
    """Build the Trainer, train (from ``last`` when resuming) and export the encoder; returns the steps
    trained on the first process (None on the others). SIGTERM saves, exports and exits 143."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from .training import AtomicCheckpointIO, CheckpointOnSigterm, MetricsCSV, StepProgressBar, quiet_lightning

    world = config.world
    checkpoints = ModelCheckpoint(dirpath=run / "checkpoints", every_n_train_steps=config.checkpoint_every,
                                  save_last=True, save_top_k=0, save_on_train_epoch_end=False)
    on_sigterm = CheckpointOnSigterm(last)
    accelerator = "gpu" if use_cuda else ("cpu" if config.accelerator == "auto" else config.accelerator)
    # Lightning cannot see that StepSampler resumes by itself (it starts at the restored step)
    with quiet_lightning(".*your dataloader is not resumable.*"):
        trainer = pl.Trainer(
            max_steps=max_steps, max_epochs=-1, accelerator=accelerator, devices=config.devices,
            num_nodes=config.num_nodes, strategy="ddp" if world > 1 else "auto", precision=precision,
            # BatchNorm over every GPU's samples: per-device batches are small, and BatchNorm is the
            # normalisation that keeps absolute levels (GroupNorm or InstanceNorm centre each sample, losing
            # attenuation). PyTorch's SyncBatchNorm runs on GPUs only; CPU processes keep their own statistics.
            sync_batchnorm=world > 1 and use_cuda,
            accumulate_grad_batches=config.accumulate,
            callbacks=callbacks + [checkpoints, MetricsCSV(run / "metrics.csv"), on_sigterm]
            + ([StepProgressBar(config.batch_size * world)] if progress else []),
            logger=TensorBoardLogger(str(run), name="tb", version=""), plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False, enable_progress_bar=bool(progress), log_every_n_steps=1,
            enable_model_summary=False, default_root_dir=str(run),
            max_time=None if config.max_time_min is None else timedelta(minutes=float(config.max_time_min)),
        )
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
        except SIGTERMException:
            if trainer.is_global_zero and on_sigterm.saved_step is not None:
                steps = on_sigterm.saved_step
                export_encoder(module, run, dict(encoder_meta, steps=steps))
                (run / "run.json").write_text(json.dumps(dict(options, steps_trained=steps, stopped_by="sigterm"),
                                                         indent=2))
                log.warning("stopped by SIGTERM after %d of %d steps; the checkpoint is saved: continue with "
                            "python -m ssl_rcc pretrain --data %s --method %s --out %s --resume", steps, max_steps, data,
                            config.method, run)
            raise SystemExit(128 + signal.SIGTERM) from None  # what a shell reports for a job ended by SIGTERM
        except RuntimeError as err:
            text = str(err)
            if resume and ("size mismatch" in text or "Missing key" in text or "Unexpected key" in text):
                raise InputError(f"{last}: the checkpoint does not fit a {config.architecture} {config.method} model "
                                 f"({str(err).splitlines()[0]}).") from None
            raise
    trainer.save_checkpoint(last, weights_only=False)  # collective under DDP: every rank calls it, rank 0 writes
    if not trainer.is_global_zero:
        return None
    steps = int(trainer.global_step)
    export_encoder(module, run, dict(encoder_meta, steps=steps))
    return steps
