"""Train a malignant-vs-benign head, predict new cases from another draw, and score the predictions.

The shell equivalent:
    python -m ssl_rcc finetune --cases train.csv --task malignant --features radiomic --out head/
    python -m ssl_rcc predict --model head/model --cases new.csv --out preds.csv --explain
    python -m ssl_rcc evaluate --predictions preds.csv --cases new_labelled.csv --out evaluation/
Usage: python examples/predict_new_case.py [OUTDIR]
"""

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from ssl_rcc.finetune import evaluate_predictions, predict_cases, run_finetune
from ssl_rcc.phantoms import generate_phantoms

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
train = generate_phantoms(out / "train", n=24, seed=3, balanced=True, size=48, overwrite=True)
new = generate_phantoms(out / "new", n=8, seed=4, balanced=True, size=48, overwrite=True)
head = run_finetune(train, task="malignant", features="radiomic", shots="all", repeats=3, out=out / "head",
                    cache=out / "feature-cache", n_boot=50, overwrite=True)
predictions = predict_cases(head / "model", new, out=out / "preds.csv", explain=True, cache=out / "feature-cache",
                            overwrite=True)
print(pd.read_csv(predictions)[["case_id", "p_benign", "p_malignant", "predicted"]].to_string(index=False))
top = pd.read_csv(out / "preds_explain" / "top_features.csv")  # why: each feature's term in the logit
print(top[top["rank"] <= 2][["case_id", "feature", "value", "contribution"]].to_string(index=False))
evaluation = evaluate_predictions(predictions, new, out=out / "evaluation", n_boot=200, overwrite=True)
auc = json.loads((evaluation / "metrics.json").read_text())["auc"]
print(f"AUC on the new cases: {auc['mean']:.2f} (95% interval {auc['ci95']}); report: {evaluation / 'report.md'}")
