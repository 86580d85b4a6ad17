"""Volumes per second of the pretraining input pipeline (from the cache) and of the training step.

    python -m benchmarks.pretrain_throughput [--patch 64] [--batch 8] [--steps 3] [--methods simclr,byol,dino,mae]
    python -m benchmarks.pretrain_throughput --recipe cpu     # the CPU recipe against ResNet-18 at 64^3, same run

The input pipeline (crop + two augmented views per volume, MONAI transforms) is timed alone, then each
method's training step (forward, backward, optimiser) on batches of the same shape, in one run. On a GPU
(``--device cuda``) the step runs with bf16/fp16 autocast. The pipeline should deliver at least 3x what
the model consumes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ssl_rcc.data import PreprocessConfig, build_cache
from ssl_rcc.data.batch_views import BatchViewTransform
from ssl_rcc.data.views import IntensityViewTransform, PretrainDataset, ViewTransform
from ssl_rcc.methods import METHODS
from ssl_rcc.phantoms import generate_phantoms


def pipeline_rate(dataset, n, workers):
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=range(n), num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return n / (time.perf_counter() - start)


def step_rate(method, batch, patch, steps, device, dtype="auto", architecture=None):
    """Training volumes/s of ``method`` and its last loss; ``dtype`` is the autocast type on a GPU
    ("auto": bf16 where supported, else fp16; None: full fp32)."""
    architecture = architecture or ("vit_tiny" if method == "mae" else "resnet18")
    module = METHODS[method]({"architecture": architecture, "in_channels": 4, "patch": list(patch),
                              "vit_patch": 8 if patch[0] <= 32 else 16},
                             max_steps=100).to(device)
    optimiser = torch.optim.AdamW(module.parameters(), lr=1e-4)
    views = [torch.rand(batch, 4, *patch, device=device) for _ in range(METHODS[method].n_views)]
    if dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, cuDNN autotune)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=device == "cuda" and dtype is not None):
            loss = module.compute_loss(views)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return batch / (sum(times) / len(times)), float(loss.detach())


def device_view_rate(patch, batch, device, geometric, repeats=5):
    """Volumes/s of :class:`BatchViewTransform` making views of a batch on ``device``."""
    transform = BatchViewTransform(geometric=geometric)
    x = torch.rand(batch, 4, *patch, device=device).half()
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        transform(x, range(i * batch, (i + 1) * batch))
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return batch / (sum(times) / len(times))


def pipeline_rates(patch, samples, workers=(0, 2), n_images=12):
    """Input-pipeline volumes/s from a cache of unlabeled phantoms: {kind: {loader workers: rate}} for
    the contrastive views ("2 views", geometric), MAE's single light view ("1 view") and plain crop
    pairs left to the device ("2 crops", ``device_views``)."""
    with tempfile.TemporaryDirectory() as tmp:
        table = generate_phantoms(Path(tmp) / "archive", n=n_images, seed=0, unlabeled=True, workers=None)
        archive = build_cache(table.parent, Path(tmp) / "cache", config=PreprocessConfig(spacing_mm=(1.5,) * 3), progress=False)
        rates = {}
        for name, views, geometric, raw in (("2 views", 2, True, False), ("1 view", 1, False, False), ("2 crops", 2, True, True)):
            transform = ViewTransform() if geometric else IntensityViewTransform()
            dataset = PretrainDataset(archive, patch, n_views=views, seed=0, transform=transform, device_views=raw)
            rates[name] = {w: pipeline_rate(dataset, samples, w) for w in workers}
    return rates


def recipe_rates(name, device, steps, samples, workers=2):
    """Samples/s (each sample two views) of the ``name`` recipe's input pipeline and SimCLR step, and of
    the settings it replaced on CPU (ResNet-18, 64^3 crops, MONAI geometric views, batch 8), in one run."""
    from ssl_rcc.recipes import RECIPES

    recipe = RECIPES[name]
    patch = tuple(recipe["patch"])
    with tempfile.TemporaryDirectory() as tmp:
        table = generate_phantoms(Path(tmp) / "archive", n=12, seed=0, unlabeled=True, workers=None)
        archive = build_cache(table.parent, Path(tmp) / "cache", config=PreprocessConfig(spacing_mm=(1.5,) * 3), progress=False)
        light = IntensityViewTransform(intensity=recipe["intensity"], gamma=recipe["gamma"], noise_std=0.02)
        new = PretrainDataset(archive, patch, n_views=2, seed=0, transform=light, scale=recipe["crop_scale"])
        old = PretrainDataset(archive, (64,) * 3, n_views=2, seed=0, transform=ViewTransform())
        supply_new, supply_old = pipeline_rate(new, samples, workers), pipeline_rate(old, samples // 4, workers)
    step_new = step_rate("simclr", recipe["batch_size"], patch, steps, device, architecture=recipe["architecture"])[0]
    step_old = step_rate("simclr", 8, (64,) * 3, steps, device)[0]
    return {"recipe": {"pipeline": supply_new, "step": step_new, "end_to_end": 1 / (1 / supply_new + 1 / step_new)},
            "resnet18_64": {"pipeline": supply_old, "step": step_old, "end_to_end": 1 / (1 / supply_old + 1 / step_old)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None, help="cpu or gpu: that recipe against the settings it replaced")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--methods", default="simclr,byol,dino,mae")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    if args.recipe:
        rates = recipe_rates(args.recipe, args.device, max(args.steps, 2), args.samples)
        print(f"device {args.device}; samples/s (each sample two views); end to end = pipeline and step in series")
        print("| settings | input pipeline | training step | end to end |")
        print("|---|---|---|---|")
        for name, r in rates.items():
            print(f"| {name} | {r['pipeline']:.1f} | {r['step']:.1f} | {r['end_to_end']:.1f} |")
        print(f"recipe / ResNet-18 at 64^3, end to end: {rates['recipe']['end_to_end'] / rates['resnet18_64']['end_to_end']:.0f}x")
        return
    patch = (args.patch,) * 3
    pipeline = pipeline_rates(patch, args.samples, workers=(0, 2))
    print(f"device {args.device}; patch {args.patch}^3, 4 channels, batch {args.batch}")
    for name, rates in pipeline.items():
        for w, rate in rates.items():
            print(f"input pipeline, {name}, {w} loader workers: {rate:.1f} volumes/s")
    for geometric in (True, False):
        rate = device_view_rate(patch, args.batch, args.device, geometric)
        print(f"views made on {args.device} ({'geometric' if geometric else 'light'}), batch {args.batch}: {rate:.1f} volumes/s")
    print("| method | encoder | training step volumes/s | input pipeline volumes/s | pipeline / step | loss |")
    print("|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        rate, loss = step_rate(method, args.batch, patch, args.steps, args.device)
        arch = "vit_tiny" if method == "mae" else "resnet18"
        supply = max(pipeline["2 views" if METHODS[method].n_views == 2 else "1 view"].values())
        print(f"| {method} | {arch} | {rate:.2f} | {supply:.1f} | {supply / rate:.1f}x | {loss:.3f} |")


if __name__ == "__main__":
    main()
