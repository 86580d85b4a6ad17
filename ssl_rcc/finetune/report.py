"""The figures and markdown report of a few-label evaluation (``finetune``'s and ``evaluate``'s outputs)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from .evaluation import set_name

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["write_figures", "label_curve", "markdown_report", "METRIC_NAMES", "fmt"]

METRIC_NAMES = ("auc", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "ece")


def _pooled(records):
    y = np.concatenate([r[0] for r in records])
    p = np.concatenate([r[1] for r in records])
    return y, p


def write_figures(tmp: Path, result: Mapping[str, Any], task: Task, suffix: str = "") -> None:
    from .plots import confusion_figure, reliability_figure, roc_figure

    records = result["records"][result["main"]]
    y, p = _pooled(records)
    if task.binary:
        predicted = np.concatenate([(r[1][:, 1] >= r[2]).astype(int) for r in records])
    else:
        predicted = p.argmax(1)
    roc_figure(tmp / f"roc{suffix}.png", [(r[0], r[1]) for r in records], task.classes, title=f"{task.name}: ROC ({result['main']})")
    reliability_figure(tmp / f"reliability{suffix}.png", y, p, task.classes, title=f"{task.name}: calibration")
    confusion_figure(tmp / f"confusion{suffix}.png", y, predicted, task.classes, title=f"{task.name}: confusion")


def fmt(m: Mapping[str, Any] | None) -> str:
    if m is None or m.get("mean") is None:
        return "-"
    lo, hi = m["ci95"]
    return f"{m['mean']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['mean']:.3f}"


def markdown_report(metrics_by_shots: Mapping[str, Mapping[str, Any]], task: Task, blocks: Sequence[str],
                    protocol: str, command: str, curve: bool) -> str:
    lines = ["# Few-label evaluation", "",
             f"Task **{task.name}** ({', '.join(task.classes)}), features **{'+'.join(blocks)}**, protocol **{protocol}**.",
             "", f"Command: `{command}`  ", f"ssl-rcc {__version__}.", "",
             "Each value is the mean over repeated draws of the training cases, with a 95% interval from the "
             "repeats and a bootstrap of each draw's test cases pooled. Nothing fitted (scaling, block choice, C, "
             "k, threshold) saw a test case. Binary metrics use the threshold chosen on the training cases.", ""]
    for shots, m in metrics_by_shots.items():
        suffix = "" if len(metrics_by_shots) == 1 else f"_{shots}"
        lines += [f"## {shots} labelled cases per class" if shots != "all" else "## All labelled cases", "",
                  f"{m['n_train']} training and {m['n_test']} test cases per draw, {m['repeats']} draws"
                  + (f", test site {m['test_site']}" if m["test_site"] else "") + ".", "",
                  "| features | " + " | ".join(n for n in METRIC_NAMES if n in m) + " | AUC fusion minus block |",
                  "|---" * (2 + sum(n in m for n in METRIC_NAMES)) + "|",
                  f"| {set_name(blocks)} | " + " | ".join(fmt(m[n]) for n in METRIC_NAMES if n in m) + " | |"]
        for b, base in m["baselines"].items():
            lines.append(f"| {b} | " + " | ".join(fmt(base.get(n)) for n in METRIC_NAMES if n in m)
                         + f" | {fmt(base['auc_difference_fusion_minus_block'])} |")
        if m["blocks_chosen"] and len(blocks) > 1:
            lines += ["", "Blocks the probe kept (inner cross-validation), over draws: "
                      + ", ".join(f"{k} {v}" for k, v in m["blocks_chosen"].items()) + "."]
        lines += ["", "Per site (test cases of the fused set):", "", "| site | test predictions | AUC | balanced accuracy |",
                  "|---|---|---|---|"]
        lines += [f"| {s} | {v['n_test_predictions']} | {fmt(v['auc'])} | {fmt(v['balanced_accuracy'])} |"
                  for s, v in sorted(m["per_site"].items())]
        lines += ["", f"![ROC](roc{suffix}.png) ![Calibration](reliability{suffix}.png) ![Confusion](confusion{suffix}.png)", ""]
    if curve:
        lines += ["## AUC against labelled cases", "", "![AUC against labels](label_curve.png)", ""]
    return "\n".join(lines) + "\n"


def label_curve(path: str | os.PathLike, results: Mapping[str, Mapping[str, Any]], task: Task) -> None:
    from .plots import label_curve_figure

    curves = {}
    for s, r in results.items():
        per_class = r["n_train"] / len(task.classes)
        for name, m in r["sets"].items():
            curves.setdefault(name, []).append((s, per_class, m["auc"]["mean"], *m["auc"]["ci95"]))
    label_curve_figure(path, curves, title=f"{task.name}: AUC against labels")
