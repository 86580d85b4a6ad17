"""The GPU checks, as one script for a lent GPU machine: a Lightning pretraining run with mixed
precision, and the per-method training throughput at batch 8.

    python -m benchmarks.gpu_check [--out DIR]      # writes DIR/gpu_check.json (default: $OUT or .)

Run it on the device machine; the figures go into benchmarks/RESULTS.md with the card that gave them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible; run it on a GPU machine.")
    from benchmarks import pretrain_throughput
    from ssl_rcc.phantoms import generate_phantoms
    from ssl_rcc.pretrain import pretrain

    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        archive = generate_phantoms(Path(tmp) / "archive", n=16, seed=0, unlabeled=True).parent
        start = time.perf_counter()
        run = pretrain(archive, method="simclr", out=Path(tmp) / "run", max_steps=20, batch_size=8, patch=64,
                       precision="16-mixed", workers=4, progress=False)
        result["lightning_simclr_20_steps_s"] = time.perf_counter() - start
        result["lightning_final_loss"] = float(open(run / "metrics.csv").read().strip().splitlines()[-1].split(",")[2])
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        pretrain_throughput.main(["--device", "cuda", "--batch", "8", "--steps", "5", "--samples", "64"])
    result["throughput_table"] = buffer.getvalue()
    print(buffer.getvalue())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "throughput_table"}, indent=2))


if __name__ == "__main__":
    main()
