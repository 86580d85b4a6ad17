"""Few-label RCC subtype classification: kinetic and radiomic features fused, against each alone.

Synthetic cases stand in for your case table (cases.csv: one row a lesion, see DESIGN's case-table
columns). The same from the shell:
    python -m ssl_rcc finetune --cases cases.csv --task subtype --features kinetic,radiomic \
        --shots 2,all --repeats 5 --out subtype/
Add image features with --features image,lesion,kinetic,radiomic --encoder RUN/encoder.pt (or none).
Usage: python examples/few_label_subtype.py [OUTDIR]
"""

import json
import sys
import tempfile
from pathlib import Path

from ssl_rcc.finetune import run_finetune
from ssl_rcc.phantoms import generate_phantoms

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
cases = generate_phantoms(out / "cases", n=30, seed=7, balanced=True, size=48, overwrite=True)
result = run_finetune(cases, task="subtype", features="kinetic,radiomic", shots="2,all", repeats=5, out=out / "subtype",
                      cache=out / "feature-cache", n_boot=100, overwrite=True)
metrics = json.loads((result / "metrics.json").read_text())
for shots, m in metrics["by_shots"].items():
    blocks = ", ".join(f"{b} {v['auc']['mean']:.2f}" for b, v in m["baselines"].items())
    print(f"{shots} labels per class: fused AUC {m['auc']['mean']:.2f} {m['auc']['ci95']}; alone: {blocks}")
print(f"report: {result / 'report.md'}")
