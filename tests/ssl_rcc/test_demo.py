"""The demo pipeline writes its report, figure and the accuracy it claims."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_rcc.demo import run_demo

pytestmark = pytest.mark.slow  # a whole run: make test-fast leaves it out


def test_demo_report_on_the_dro(tmp_path):
    report = run_demo(tmp_path / "demo")
    text = report.read_text()
    assert "![Ktrans maps](ktrans.png)" in text and (report.parent / "ktrans.png").stat().st_size > 10_000
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["within_osipi"]["ktrans"] >= 0.95
    assert summary["within_osipi"]["vp"] >= 0.95
    assert (report.parent / "maps" / "ktrans.nii.gz").is_file()
    assert "![Synthetic cases](phantoms/preview.png)" in text and (report.parent / "phantoms" / "preview.png").is_file()
    assert summary["phantoms"]["ktrans_within_osipi"] > 0.8
    assert summary["pretraining"]["n_embedded"] == 10 and np.isfinite(summary["pretraining"]["final_loss"])
    assert (report.parent / "pretrain" / "encoder.pt").is_file() and "![Pretraining](pretraining.png)" in text
    assert "![ROC](finetune/roc.png)" in text and (report.parent / "finetune" / "roc.png").is_file()
    assert set(summary["finetune"]["baselines"]) == {"image", "lesion", "kinetic", "radiomic"}
    assert 0 <= summary["finetune"]["auc"]["mean"] <= 1
    assert "![Grad-CAM](gradcam.png)" in text and (report.parent / "gradcam.png").stat().st_size > 10_000
    # what the report states is true of what it shows
    out = report.parent
    assert "ssl-rcc " in text and "commit" in text and " UTC" in text  # version, commit, command, date
    run = json.loads((out / "pretrain" / "run.json").read_text())
    assert Path(run["data"]).is_dir() and Path(run["data"]).parent == out  # not the renamed staging folder
    for path in out.rglob("*.json"):
        assert f"/.{out.name}." not in path.read_text(), path
    link = re.search(r"\[docs/phantoms.md\]\(([^)]+)\)", text)
    assert link and (out / link.group(1)).resolve().is_file()
    table = pd.read_csv(out / "phantoms" / "cases.csv", keep_default_na=False)
    for subtype, count in table["subtype"].value_counts().items():  # the subtype table gives the true counts
        assert re.search(rf"\| {subtype} \| {count} \|", text), subtype
    assert re.search(r"The loss went from \d+\.\d\d to \d+\.\d\d", text)
