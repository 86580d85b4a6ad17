"""The demo pipeline writes its report, figure and the accuracy it claims."""

import json

import numpy as np

from ssl_rcc.demo import run_demo


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
    assert set(summary["finetune"]["baselines"]) == {"image", "kinetic", "radiomic"}
    assert 0 <= summary["finetune"]["auc"]["mean"] <= 1
    assert "![Grad-CAM](gradcam.png)" in text and (report.parent / "gradcam.png").stat().st_size > 10_000
