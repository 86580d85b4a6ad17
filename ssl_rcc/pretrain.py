"""``python -m ssl_rcc pretrain``: self-supervised pretraining of a 3D encoder on an unlabeled archive.

RUN/checkpoints/last.ckpt (Lightning, for --resume), RUN/encoder.pt (plain state_dict),
RUN/encoder.json (everything needed to rebuild and feed it), RUN/metrics.csv, RUN/tb/ (TensorBoard),
RUN/run.json (the options), RUN/cache/ (preprocessed volumes, unless --cache points elsewhere).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from kinetics.io import output_file
from kinetics.options import number
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

__all__ = ["pretrain", "export_encoder", "ENCODER_FORMAT"]

log = logging.getLogger("ssl_rcc")
# options a resumed run must share with the run it continues (it reads them from its run.json)
_IDENTITY = ("method", "architecture", "patch", "vit_patch", "channels", "spacing_mm")
# whole-model half precision ("bf16-true") left the weights non-finite within two steps here: mixed only
_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def _patch3(patch):
    values = patch if isinstance(patch, (tuple, list)) else (patch,) * 3
    if len(values) != 3:
        raise InputError(f"patch: give one size or three, not {len(values)}.")
    return [number(p, "patch", "voxels", integer=True, low=8) for p in values]


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
def pretrain(data: str | os.PathLike, *, method: str, out: str | os.PathLike, architecture: str | None = None,
             epochs: float | None = None, max_steps: int | None = None, batch_size: int | None = None,
             patch: int | Sequence[int] | None = None, resume: bool = False, overwrite: bool = False, devices: int = 1,
             num_nodes: int = 1, accelerator: str = "auto", precision: str | None = None,
             accumulate: int | None = None, lr: float | None = None, warmup_steps: int | None = None,
             checkpoint_every: int = 50, seed: int | None = None, workers: int = 2, spacing: float | None = None,
             cache: str | os.PathLike | None = None, vit_patch: int | None = None,
             probe: str | os.PathLike | None = None, probe_every: int = 50, augment: str = "auto",
             hash_ids: bool = False, progress: bool = True, recipe: str | None = None,
             temperature: float | None = None, crop_scale: str | Sequence[float] | None = None,
             max_time: float | None = None, intensity: float | None = None, gamma: Sequence[float] | None = None,
             normalise_target: bool | None = None) -> Path:
    """Pretrain an encoder with ``method`` on the images of ``data`` (folder, CSV or shards); returns RUN.

    See ``python -m ssl_rcc pretrain --help`` for the options. Options left out (None) come from the
    ``recipe`` (:mod:`ssl_rcc.recipes`: ``cpu``, ``gpu``, or ``auto`` by the device) or, when resuming,
    from the run's own run.json; given ones must then equal the run's, except ``max_steps``, which
    lengthens or shortens it (the cosine schedule is then that of the new length). A run directory is
    never overwritten without ``overwrite``; ``resume`` continues RUN from ``checkpoints/last.ckpt`` with
    the same data order, so the steps and the loss curve are those of an uninterrupted run.
    ``max_steps=0`` exports the untrained encoder (the from-scratch baseline); ``max_time`` (minutes)
    stops training after that long, and run.json records the steps actually trained. ``intensity`` (largest
    scale and shift of a view's intensities, in window units) and ``gamma`` ((lo, hi) or None) change the
    recipe's light views, and ``normalise_target`` MAE's per-patch normalised target (API only: the
    recipe's values are the measured choice).
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from .training import (AtomicCheckpointIO, CheckpointOnSigterm, MetricsCSV, PretrainData, StepProgressBar,
                           quiet_lightning)

    from .recipes import RUN_OPTIONS, recipe_defaults

    method_cls = get_method(method)
    run = Path(out)
    run_file = run / "run.json"
    try:
        previous = json.loads(run_file.read_text()) if resume and run_file.is_file() else {}
    except ValueError:
        raise InputError(f"{run_file}: not valid JSON; the run cannot be resumed.") from None
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise InputError(f"accelerator: {accelerator!r} is not one of auto, cpu, gpu.")
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    recipe, defaults = recipe_defaults(recipe or previous.get("recipe", "auto"), method, cuda=use_cuda)
    given = {"architecture": architecture, "patch": patch, "vit_patch": vit_patch, "spacing_mm": spacing,
             "batch_size": batch_size, "lr": lr, "temperature": temperature, "crop_scale": crop_scale,
             "accumulate": accumulate, "seed": seed, "intensity": intensity, "gamma": gamma,
             "normalise_target": normalise_target}
    chosen = {k: given[k] if given.get(k) is not None else previous.get(k, defaults[k]) for k in RUN_OPTIONS}
    architecture = chosen["architecture"]
    patch = _patch3(chosen["patch"])
    vit_patch = number(chosen["vit_patch"], "vit_patch", "voxels", integer=True, positive=True)
    spacing = number(chosen["spacing_mm"], "spacing", "mm", positive=True)
    batch_size = number(chosen["batch_size"], "batch_size", integer=True, positive=True)
    accumulate = number(chosen["accumulate"], "accumulate", integer=True, positive=True)
    seed = number(chosen["seed"], "seed", integer=True, low=0)
    lr = number(chosen["lr"], "lr", positive=True)
    temperature = number(chosen["temperature"], "temperature", positive=True)
    crop_scale = chosen["crop_scale"]
    if crop_scale is not None:
        if isinstance(crop_scale, str):
            crop_scale = crop_scale.split(",")
        if len(crop_scale) != 2:
            raise InputError(f"crop_scale: give two factors (smallest, largest view side over the patch), not {crop_scale!r}.")
        crop_scale = [number(c, "crop_scale", positive=True) for c in crop_scale]
        if crop_scale[0] > crop_scale[1]:
            raise InputError(f"crop_scale: {crop_scale[0]:g} is larger than {crop_scale[1]:g}.")
    for name in ("batch_size", "accumulate", "seed", "lr", "temperature", "crop_scale"):
        if name in previous and given[name] is not None and previous[name] != chosen[name]:
            raise InputError(f"{run}: --{name.replace('_', '-')} {given[name]} differs from the run's {previous[name]}; "
                             f"a resumed run continues with its own (leave the option out).")
    if batch_size < method_cls.min_batch_size:
        raise InputError(f"batch_size: {batch_size} volume per device; {method} needs at least {method_cls.min_batch_size} "
                         f"(its loss compares samples of the batch and its head normalises over it).")
    devices = number(devices, "devices", integer=True, positive=True)
    num_nodes = number(num_nodes, "num_nodes", integer=True, positive=True)
    checkpoint_every = number(checkpoint_every, "checkpoint_every", "steps", integer=True, positive=True)
    workers = number(workers, "workers", integer=True, low=0)
    if max_time is not None:
        max_time = number(max_time, "max_time", "minutes", positive=True)
    if augment not in ("auto", "loader", "device"):
        raise InputError(f"augment: {augment!r} is not one of auto, loader, device.")
    if precision is not None and str(precision) not in _PRECISIONS:
        raise InputError(f"precision: {precision!r} is not one of {', '.join(_PRECISIONS)}.")
    if previous and (previous.get("devices", devices) * previous.get("num_nodes", num_nodes) != devices * num_nodes
                     or previous.get("workers", workers) != workers):
        log.warning("resuming with another number of processes or loader workers: the samples from here on are "
                    "not those an uninterrupted run would have drawn")
    last = run / "checkpoints" / "last.ckpt"
    secondary = _secondary_rank()
    if secondary:
        pass  # DDP re-runs this function in every process: rank 0 has already checked and prepared RUN
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
    stream = is_shard_folder(data)
    if stream:  # TFRecord shards from `pack`: preprocessed already, streamed
        shards = ShardIndex(data)
        channels, n_images, spacing = shards.channels, len(shards), shards.spacing_mm
        preprocessing = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in shards.meta["preprocessing"].items()})
    else:
        preprocessing = PreprocessConfig(spacing_mm=(spacing,) * 3)
        cache_dir = Path(cache) if cache else run / "cache"
        local_rank = _process_ranks()[0]
        if local_rank > 0 and _cache_built_for(cache_dir, preprocessing):  # the node's first process built it
            archive = open_cache(cache_dir)
        else:
            archive = build_cache(data, cache_dir, config=preprocessing, progress=progress and not secondary,
                                  write_reports=not secondary, hash_ids=bool(hash_ids))
        channels, n_images = archive.channels, len(archive)
    encoder = {"architecture": architecture, "in_channels": channels, "patch": patch, "vit_patch": int(vit_patch)}
    identity = {"method": method, "architecture": architecture, "patch": patch, "vit_patch": int(vit_patch),
                "channels": channels, "spacing_mm": spacing}
    if resume and not secondary:
        differ = {k: (previous.get(k), identity[k]) for k in _IDENTITY if previous.get(k) != identity[k]}
        if differ:
            raise InputError(f"{last}: the checkpoint is of another run ({', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}).")
    world = devices * num_nodes
    if max_steps is None and previous:  # a resumed run keeps its length and schedule
        max_steps = previous.get("max_steps")
    if max_steps is None:
        n_epochs = number(epochs if epochs is not None else 1, "epochs", positive=True)
        max_steps = max(1, math.ceil(n_epochs * n_images / (batch_size * accumulate * world)))
    max_steps = number(max_steps, "max_steps", integer=True, low=0)
    warmup = max_steps // 10 if warmup_steps is None else number(warmup_steps, "warmup_steps", integer=True, low=0)
    precision = precision or ("16-mixed" if use_cuda else "32-true")
    on_device = augment == "device" or (augment == "auto" and use_cuda)
    if previous.get("augment") not in (None, "device" if on_device else "loader"):
        log.warning("resuming with views made by the %s, where the run made them by the %s: the views from here on "
                    "differ from an uninterrupted run's", "device" if on_device else "loader", previous["augment"])
    options = dict(identity, recipe=recipe, max_steps=max_steps, batch_size=batch_size, accumulate=accumulate, lr=lr,
                   warmup_steps=warmup, temperature=temperature, crop_scale=crop_scale, intensity=chosen["intensity"],
                   gamma=chosen["gamma"], normalise_target=chosen["normalise_target"], max_time_min=max_time, devices=devices, num_nodes=num_nodes, precision=precision,
                   seed=int(seed), data=case_id_for(str(Path(data).resolve()), prefix="data") if hash_ids else str(data),
                   augment="device" if on_device else "loader",
                   n_images=n_images, preprocessing=preprocessing.to_dict(), workers=workers,
                   source="shards" if stream else "cache", provenance=provenance("ssl_rcc", command=not hash_ids))
    if not secondary:
        run_file.write_text(json.dumps(options, indent=2))
    pl.seed_everything(int(seed), workers=True, verbose=False)
    extra = {"simclr": {"temperature": float(temperature)},
             "mae": {"normalise_target": bool(chosen["normalise_target"])}}.get(method, {})
    module = method_cls(encoder, lr=float(lr), max_steps=max(max_steps, 1), warmup_steps=warmup, **extra)
    encoder_meta = {"method": method, "spacing_mm": [spacing] * 3,
                    "normalisation": {"CT": {"hu_window": list(preprocessing.ct_window)},
                                      "MR": {"percentiles": list(preprocessing.mr_percentiles)}},
                    "axis_order": "RAS", "input": "(B, C, X, Y, Z), values in [0, 1]"}
    if max_steps == 0:  # the untrained encoder, as initialised from the seed: the from-scratch baseline
        if not secondary:
            export_encoder(module, run, dict(encoder_meta, steps=0))
            run_file.write_text(json.dumps(dict(options, steps_trained=0), indent=2))
            log.info("exported the untrained %s encoder (--max-steps 0): %s", architecture, run)
        return run
    # views: random resized crops with light intensity changes (the recipes) or, without crop_scale,
    # crops of the patch with MONAI's geometric and intensity augmentations
    gamma = chosen["gamma"]
    light = dict(intensity=float(chosen["intensity"]), gamma=None if gamma is None else tuple(gamma), noise_std=0.02)
    if on_device:
        module.device_transform = (BatchViewTransform(geometric=False, intensity=light["intensity"],
                                                      gamma=light["gamma"] or (1.0, 1.0), noise_std=0.02)
                                   if crop_scale else BatchViewTransform(geometric=method_cls.geometric_views))
    if crop_scale:
        transform = IntensityViewTransform(**light)
    else:
        transform = ViewTransform() if method_cls.geometric_views else IntensityViewTransform()
    if stream:
        dataset = ShardStream(shards, patch, batch_size=batch_size, total_batches=max_steps * accumulate,
                              n_views=method_cls.n_views, seed=int(seed), transform=transform, device_views=on_device,
                              scale=crop_scale)
    else:
        dataset = PretrainDataset(archive, patch, n_views=method_cls.n_views, seed=int(seed), device_views=on_device,
                                  transform=transform, scale=crop_scale)
    datamodule = PretrainData(dataset, batch_size=batch_size, accumulate=accumulate, max_steps=max_steps, workers=workers)
    every = number(probe_every, "probe_every", "steps", integer=True, positive=True)
    callbacks = []
    if not stream:  # a fixed set of crops, drawn apart from the training samples, embedded as training goes
        from .training import RepresentationHealth

        fixed = PretrainDataset(archive, patch, n_views=1, seed=int(seed) + 7919, device_views=True, scale=crop_scale)
        callbacks.append(RepresentationHealth(np.stack([fixed[i][0].numpy() for i in range(64)]), every_n_steps=every,
                                              max_steps=max_steps))
    if probe is not None:
        from .probe import KnnProbe

        monitor = KnnProbe(probe, patch=patch, spacing_mm=spacing, every_n_steps=every)
        if monitor.crops.shape[1] != channels:  # checked here, on every rank, not inside training on rank 0
            raise InputError(f"{probe}: the probe cases have {monitor.crops.shape[1]} channels, the images {channels}.")
        callbacks.append(monitor)
    checkpoints = ModelCheckpoint(dirpath=run / "checkpoints", every_n_train_steps=checkpoint_every, save_last=True,
                                  save_top_k=0, save_on_train_epoch_end=False)
    on_sigterm = CheckpointOnSigterm(last)
    # Lightning cannot see that StepSampler resumes by itself (it starts at the restored step)
    with quiet_lightning(".*your dataloader is not resumable.*"):
        trainer = pl.Trainer(
            max_steps=max_steps, max_epochs=-1, accelerator="gpu" if use_cuda else ("cpu" if accelerator == "auto" else accelerator),
            devices=devices, num_nodes=num_nodes, strategy="ddp" if world > 1 else "auto", precision=precision,
            # BatchNorm over every GPU's samples: per-device batches are small, and BatchNorm is the
            # normalisation that keeps absolute levels (GroupNorm or InstanceNorm centre each sample, losing
            # attenuation). PyTorch's SyncBatchNorm runs on GPUs only; CPU processes keep their own statistics.
            sync_batchnorm=world > 1 and use_cuda,
            accumulate_grad_batches=accumulate,
            callbacks=callbacks + [checkpoints, MetricsCSV(run / "metrics.csv"), on_sigterm]
            + ([StepProgressBar(batch_size * world)] if progress else []),
            logger=TensorBoardLogger(str(run), name="tb", version=""), plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False, enable_progress_bar=bool(progress), log_every_n_steps=1,
            enable_model_summary=False, default_root_dir=str(run),
            max_time=None if max_time is None else timedelta(minutes=float(max_time)),
        )
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
        except SIGTERMException:
            if trainer.is_global_zero and on_sigterm.saved_step is not None:
                steps = on_sigterm.saved_step
                export_encoder(module, run, dict(encoder_meta, steps=steps))
                run_file.write_text(json.dumps(dict(options, steps_trained=steps, stopped_by="sigterm"), indent=2))
                log.warning("stopped by SIGTERM after %d of %d steps; the checkpoint is saved: continue with "
                            "python -m ssl_rcc pretrain --data %s --method %s --out %s --resume", steps, max_steps, data,
                            method, run)
            raise SystemExit(128 + signal.SIGTERM) from None  # what a shell reports for a job ended by SIGTERM
        except InputError as err:  # from a loader worker, the message carries the worker's traceback: keep its sentence
            raise InputError(str(err).strip().splitlines()[-1].split("InputError: ", 1)[-1]) from None
        except RuntimeError as err:
            text = str(err)
            if resume and ("size mismatch" in text or "Missing key" in text or "Unexpected key" in text):
                raise InputError(f"{last}: the checkpoint does not fit a {architecture} {method} model ({str(err).splitlines()[0]}).") from None
            raise
    trainer.save_checkpoint(last, weights_only=False)  # collective under DDP: every rank calls it, rank 0 writes
    if trainer.is_global_zero:
        steps = int(trainer.global_step)
        export_encoder(module, run, dict(encoder_meta, steps=steps))
        stopped = "max_steps" if steps >= max_steps else ("max_time" if max_time is not None else "interrupted")
        run_file.write_text(json.dumps(dict(options, steps_trained=steps, stopped_by=stopped), indent=2))
        if stopped == "max_time":
            log.warning("stopped by --max-time after %d of %d steps; the learning rate had not finished its schedule",
                        steps, max_steps)
        log.info("pretrained %s (%s) for %d steps: %s", architecture, method, steps, run)
    return run
