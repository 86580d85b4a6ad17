"""Pretraining recipes: the settings a run takes for every option it is not given.

``cpu`` learns within minutes on a 2-core machine; ``gpu`` is the larger network and crop for a lent
accelerator. ``pretrain --recipe auto`` (the default) takes ``gpu`` when CUDA is available and
``cpu`` otherwise; any option given on the command line wins over its recipe, and a resumed run
takes every option it is not given from its run.json.

Why these values (measured on phantoms, ``python -m benchmarks.ssl_value``; README "Self-supervised
pretraining"), and which are not measured yet:

- **Encoder** ``resnet10_slim`` on CPU: one basic block per stage, widths 16-128, a 3^3 first
  convolution; 65 volumes/s forward and backward at 32^3 x 4 channels on 2 cores, where ResNet-18
  manages 4.3 (and ResNet-10 slim with MONAI's 7^3 first convolution 12). A whole SimCLR run: 22-25
  samples/s (two views each) with one loader worker; 15 end to end in one process
  (``benchmarks/pretrain_throughput.py --recipe cpu``), 82x the ResNet-18 at 64^3.
- **Lesion views** where the archive has lesion masks (``ssl_rcc.data.views``: 80% of samples, each
  view 80-100% of the lesion's cube, the crop the heads embed): the first change that made
  pretraining beat its own untrained encoder, subtype +0.04 / +0.05 / +0.07 AUC at 10 / 20 / all labels
  per class, grade level, invasion -0.01 to -0.02 (intervals across 0). Views of 85-110% were worse on
  every task.
- **Crops** otherwise of 32^3 voxels at 1.5 mm, each sample a cube of 0.75-2x the patch (36-96 mm)
  resampled to it, centred on the kidney (mask) or enhancing soft tissue: the scales at which tumours
  are embedded. Views sharing the sample's scale lost less to the untrained encoder than views of
  independent scales (subtype -0.00 to -0.04 against -0.04 to -0.07 AUC); both lost to it.
- **Views** change intensity by at most 2% of the window (10 HU) and have no gamma, because absolute
  attenuation per phase is what separates the subtypes; not yet compared with stronger views in a run.
- **Batch** 32, lr 1e-3 with a tenth of the run as warm-up, **temperature 0.1** on CPU: against 0.2
  with lesion views, subtype SSL minus untrained +0.02 / +0.06 / +0.07 / +0.10 at 5 / 10 / 20 / all
  labels per class (intervals above 0 from 10 labels; 0.2 gave 0.00 / +0.04 / +0.05 / +0.07), grade
  and invasion level (-0.01 to +0.02), in fewer steps (371 in the 18-minute budget); the loss falls
  from 2.6 to 0.3, effective rank 56.4 of 128 with no dead dimension. The GPU recipe keeps 0.2 (not measured there); lr not swept.
- **MAE** reconstructs unnormalised voxels (the per-patch normalised target discards attenuation); its
  embedding stayed at the untrained encoder's level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InputError

__all__ = ["RECIPES", "recipe_defaults", "RUN_OPTIONS", "Option", "OPTIONS"]


@dataclass(frozen=True)
class Option:
    """A run-defining option of ``pretrain`` as a user gives it: its default (None: the recipe's, or a
    resumed run's own) and its help, which the command line shows."""

    default: Any
    help: str


# The options of a run, in the order ``--help`` lists them: the one place that names them. The Python
# function and the command line take exactly these (plus data, method, out and where things go).
OPTIONS: dict[str, Option] = {
    "recipe": Option(None, "auto | cpu | gpu: where the options left out come from (auto: gpu when CUDA is "
                           "available; README, Self-supervised pretraining); mae takes vit_tiny."),
    "architecture": Option(None, "resnet10_slim | resnet18 | resnet34 | resnet50 | vit_tiny | vit_small."),
    "epochs": Option(None, "passes over the archive (default 1), if max_steps is not given."),
    "max_steps": Option(None, "optimiser steps; 0 exports the untrained encoder (the from-scratch baseline)."),
    "max_time": Option(None, "stop after this many minutes (run.json records the steps trained)."),
    "batch_size": Option(None, "volumes per device and step."),
    "patch": Option(None, "crop size in voxels (one number or three)."),
    "devices": Option(1, "GPUs (or CPU processes) per node; more than one trains with DDP."),
    "num_nodes": Option(1, "machines, for multi-node DDP."),
    "accelerator": Option("auto", "auto | cpu | gpu."),
    "precision": Option(None, "32-true | 16-mixed | bf16-mixed (default 16-mixed on GPU, 32-true on CPU)."),
    "accumulate": Option(None, "gradient accumulation steps (default: the recipe's)."),
    "lr": Option(None, "peak learning rate (AdamW, warm-up then cosine decay; default: the recipe's)."),
    "warmup_steps": Option(None, "linear warm-up steps (default a tenth of the run)."),
    "temperature": Option(None, "SimCLR's softmax temperature (default: the recipe's)."),
    "crop_scale": Option(None, "smallest,largest side of a view's cube over the patch (default: the recipe's, views "
                               "at the scales of the tumour crops that are embedded)."),
    "intensity": Option(None, "largest scale and shift of a view's intensities, in window units (default: the "
                              "recipe's)."),
    "gamma": Option(None, "lo,hi exponents of a random gamma curve on each view (default: the recipe's)."),
    "normalise_target": Option(None, "MAE: reconstruct per-patch normalised voxels (default: the recipe's; the "
                                     "normalised target discards attenuation)."),
    "checkpoint_every": Option(50, "steps between checkpoints."),
    "seed": Option(None, "seed of initialisation and of the data order (default: the recipe's)."),
    "workers": Option(2, "data loader processes."),
    "spacing": Option(None, "voxel size after resampling, mm (default: the recipe's)."),
    "vit_patch": Option(None, "ViT token size, voxels."),
    "probe_every": Option(50, "steps between probe and representation-health measurements (effective rank, dead "
                              "dimensions; a warning when the representation collapses)."),
    "augment": Option("auto", "where the views are made: loader (CPU workers) or device (a batch at a time on the "
                              "training device) or auto (device on a GPU, loader on CPU)."),
}

RECIPES = {
    "cpu": {"architecture": "resnet10_slim", "patch": [32, 32, 32], "vit_patch": 8, "spacing_mm": 1.5, "batch_size": 32,
            "lr": 1e-3, "temperature": 0.1, "crop_scale": [0.75, 2.0], "intensity": 0.02, "gamma": None,
            "accumulate": 1, "seed": 0, "normalise_target": False},
    "gpu": {"architecture": "resnet18", "patch": [64, 64, 64], "vit_patch": 16, "spacing_mm": 1.5, "batch_size": 32,
            "lr": 1e-3, "temperature": 0.2, "crop_scale": [0.75, 2.0], "intensity": 0.02, "gamma": None,
            "accumulate": 1, "seed": 0, "normalise_target": False},
}
# options a recipe sets; a resumed run reads every one of them back from its run.json
RUN_OPTIONS = tuple(RECIPES["cpu"])


def recipe_defaults(recipe: str, method: str, *, cuda: bool) -> tuple[str, dict]:
    """(name, settings) of ``recipe`` (auto, cpu or gpu) for ``method``: MAE takes the ViT-tiny."""
    name = ("gpu" if cuda else "cpu") if recipe == "auto" else recipe
    if name not in RECIPES:
        raise InputError(f"recipe: {recipe!r} is not one of auto, cpu, gpu.")
    settings = dict(RECIPES[name])
    if method == "mae":
        settings["architecture"] = "vit_tiny"
    return name, settings
