"""Self-supervised pretraining on a folder of NIfTI files (DICOM series work the same), then embeddings.

A CPU-sized run: 48^3 synthetic CTs, 32^3 crops at 3 mm, 4 steps of 4 volumes. The shell equivalent:
    python -m ssl_rcc pretrain --data archive/ --method simclr --out run/ --max-steps 4 --batch-size 4 --patch 32 --spacing 3
    python -m ssl_rcc embed --encoder run/encoder.pt --data archive/ --out embeddings.parquet
Usage: python examples/pretrain_folder.py [OUTDIR]
"""

import sys
import tempfile
from pathlib import Path

import pandas as pd

from ssl_rcc.embed import embed_archive
from ssl_rcc.phantoms import generate_phantoms
from ssl_rcc.pretrain import pretrain

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
archive = generate_phantoms(out / "archive", n=6, seed=1, unlabeled=True, size=48, overwrite=True).parent
run = pretrain(archive, method="simclr", out=out / "run", max_steps=4, batch_size=4, patch=32, spacing=3.0, workers=0,
               checkpoint_every=4, overwrite=True, progress=False)
embeddings = pd.read_parquet(embed_archive(run / "encoder.pt", archive, out=out / "embeddings.parquet", overwrite=True))
print(f"{len(embeddings)} embeddings of {embeddings.shape[1] - 1} features; encoder {run / 'encoder.pt'}")
