"""The GPU checks, as one script for a lent GPU machine (15 minutes, so every part is short).

    python -m benchmarks.gpu_check [--out DIR]      # writes DIR/gpu_check.json (default: $OUT or .)

1. a Lightning pretraining run on the GPU with fp16 mixed precision (GradScaler in the checkpoint),
   killed with SIGKILL after a checkpoint and resumed, compared with an uninterrupted run;
2. per-method training-step volumes/s at batch 8 in fp32 and with bf16 autocast (the ratio is the
   mixed-precision speed-up measured in the same run), and bf16 at batch 32;
3. views made on the GPU (BatchViewTransform) at batch 8 and 32, and input-pipeline volumes/s with
   0, 8 and 15 loader workers (MONAI views, or plain crops left to the GPU), against what it consumes.
   The pretraining run of part 1 uses the default ``--augment auto``: views on the GPU.
4. (``bf16``) SimCLR and MAE pretraining runs with ``--precision bf16-mixed``: finite losses.

Each part is recorded (or its error) in gpu_check.json as soon as it ends, so a part that fails or a
run stopped at its time limit keeps what came before. The figures go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch


def _metrics(run):
    import pandas as pd

    path = run / "metrics.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["step", "train_loss"])


def _pretrain_cli(archive, run, extra=()):
    args = [sys.executable, "-m", "ssl_rcc", "pretrain", "--data", str(archive), "--out", str(run), "--method", "simclr",
            "--max-steps", "60", "--batch-size", "8", "--patch", "64", "--checkpoint-every", "10", "--seed", "1",
            "--workers", "8", "--precision", "16-mixed", "--cache", str(run.parent / "cache"), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def check_resume(archive, tmp):
    """Uninterrupted 60-step fp16-mixed run vs one killed after step >= 25 and resumed."""
    reference, killed = tmp / "reference", tmp / "killed"
    start = time.perf_counter()
    proc = _pretrain_cli(archive, reference)
    output = proc.communicate(timeout=240)[0].decode()
    if proc.returncode != 0:
        raise RuntimeError(output[-3000:])
    reference_s = time.perf_counter() - start
    proc = _pretrain_cli(archive, killed)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "last.ckpt").is_file() and len(_metrics(killed)) >= 25:
            break
        time.sleep(0.1)
    killed_at = len(_metrics(killed))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _pretrain_cli(archive, killed, ["--resume"])
    output = proc.communicate(timeout=240)[0].decode()
    if proc.returncode != 0:
        raise RuntimeError(output[-3000:])
    repeat = tmp / "repeat"  # a second uninterrupted run measures the GPU's own run-to-run spread
    proc = _pretrain_cli(archive, repeat)
    proc.communicate(timeout=240)
    expected, resumed, again = _metrics(reference), _metrics(killed), _metrics(repeat)
    relative = (resumed["train_loss"] - expected["train_loss"]).abs() / expected["train_loss"].abs()
    spread = (again["train_loss"] - expected["train_loss"]).abs() / expected["train_loss"].abs()
    return {"losses": {"reference": expected["train_loss"].tolist(), "resumed": resumed["train_loss"].tolist(),
                       "repeat": again["train_loss"].tolist()},
            "max_relative_difference_repeat": float(spread.max()),
            "max_relative_difference_before_kill": float(relative.iloc[:killed_at].max()),
            "reference_run_s": reference_s, "killed_after_steps": killed_at,
            "resumed_steps": resumed["step"].tolist() == list(range(1, 61)),
            "max_relative_loss_difference": float(relative.max()),
            "first_loss": float(expected["train_loss"].iloc[0]), "last_loss": float(expected["train_loss"].iloc[-1]),
            "encoder_exported": (killed / "encoder.pt").is_file()}


def check_throughput(patch=(64, 64, 64)):
    from benchmarks.pretrain_throughput import device_view_rate, pipeline_rates, step_rate

    rows = []
    for method in ("simclr", "byol", "dino", "mae"):
        fp32, _ = step_rate(method, 8, patch, 5, "cuda", dtype=None)
        bf16, loss = step_rate(method, 8, patch, 5, "cuda", dtype=torch.bfloat16)
        bf16_32, _ = step_rate(method, 32, patch, 3, "cuda", dtype=torch.bfloat16)
        rows.append({"method": method, "fp32_b8": fp32, "bf16_b8": bf16, "bf16_over_fp32": bf16 / fp32,
                     "bf16_b32": bf16_32, "loss": loss})
        print(rows[-1], flush=True)
    device_views = {f"{'geometric' if g else 'light'}_b{b}": device_view_rate(patch, b, "cuda", g)
                    for g in (True, False) for b in (8, 32)}
    print(device_views, flush=True)
    pipeline = pipeline_rates(patch, 128, workers=(0, 8, 15), n_images=24)
    return {"steps": rows, "device_views": device_views,
            "pipeline": {name: {str(w): r for w, r in rates.items()} for name, rates in pipeline.items()}}


def check_views(patch=(64, 64, 64)):
    """Views made on the GPU against the loader's, and the training steps they feed, in one run."""
    from benchmarks.pretrain_throughput import device_view_rate, pipeline_rates, step_rate

    result = {f"device_{'geometric' if g else 'light'}_b{b}": device_view_rate(patch, b, "cuda", g)
              for g in (True, False) for b in (8, 32)}
    for method in ("simclr", "mae"):
        result[f"step_{method}_bf16_b8"] = step_rate(method, 8, patch, 5, "cuda", dtype=torch.bfloat16)[0]
    result["loader_15_workers"] = {name: rates[15] for name, rates in pipeline_rates(patch, 128, workers=(15,), n_images=24).items()}
    return result


def check_runs(archive, tmp):
    """Wall time of the same 60-step SimCLR run with views from the loader and from the GPU."""
    from ssl_rcc.data import PreprocessConfig, build_cache

    build_cache(archive, tmp / "cache", config=PreprocessConfig(spacing_mm=(1.5,) * 3), progress=False)  # timed runs read it
    result = {}
    for augment in ("loader", "device"):
        start = time.perf_counter()
        proc = _pretrain_cli(archive, tmp / f"run_{augment}", ["--augment", augment])
        output = proc.communicate(timeout=240)[0].decode()
        if proc.returncode != 0:
            raise RuntimeError(output[-3000:])
        result[f"{augment}_s"] = time.perf_counter() - start
        result[f"{augment}_last_loss"] = float(_metrics(tmp / f"run_{augment}")["train_loss"].iloc[-1])
    result["loader_over_device"] = result["loader_s"] / result["device_s"]
    return result


def check_bf16(archive, tmp):
    """SimCLR and MAE runs of 30 steps with bf16 mixed precision and views on the GPU: finite losses."""
    result = {}
    for method, extra in (("simclr", []), ("mae", ["--architecture", "vit_tiny"])):
        run = tmp / f"bf16_{method}"
        args = [sys.executable, "-m", "ssl_rcc", "pretrain", "--data", str(archive), "--out", str(run), "--method", method,
                "--max-steps", "30", "--batch-size", "8", "--patch", "64", "--precision", "bf16-mixed", "--augment", "device",
                "--workers", "8", "--cache", str(tmp / "cache"), *extra]
        start = time.perf_counter()
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=150)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout.decode()[-3000:])
        losses = _metrics(run)["train_loss"]
        result[method] = {"s": time.perf_counter() - start, "steps": len(losses), "all_finite": bool(losses.notna().all()),
                          "first_loss": float(losses.iloc[0]), "last_loss": float(losses.iloc[-1])}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--parts", default="throughput,views,runs,bf16,resume", help="comma-separated parts to run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible; run it on a GPU machine.")
    torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "bf16": torch.cuda.is_bf16_supported(), "cpus": os.cpu_count()}

    def record(name, function, *a):
        start = time.perf_counter()
        try:
            result[name] = function(*a)
        except Exception:  # noqa: BLE001 - one failing part must not lose the others
            result[name] = {"error": traceback.format_exc()[-3000:]}
        result[name + "_s"] = time.perf_counter() - start
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        print(name, json.dumps(result[name], indent=1)[:3000], flush=True)

    if "throughput" in args.parts:
        record("throughput", check_throughput)
    if "views" in args.parts:
        record("views", check_views)
    if not {"resume", "runs", "bf16"} & set(args.parts.split(",")):
        return
    from ssl_rcc.phantoms import generate_phantoms

    with tempfile.TemporaryDirectory() as tmp:
        archive = generate_phantoms(Path(tmp) / "archive", n=24, seed=0, unlabeled=True).parent
        if "runs" in args.parts:
            record("runs", check_runs, archive, Path(tmp))
        if "bf16" in args.parts:
            record("bf16", check_bf16, archive, Path(tmp))
        if "resume" in args.parts:
            record("resume_fp16_mixed", check_resume, archive, Path(tmp))


if __name__ == "__main__":
    main()
