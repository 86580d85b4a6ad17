"""Figures of a few-label evaluation: ROC with its band, reliability diagram, confusion matrix, and
AUC against the number of labels (matplotlib, headless; each function writes one PNG)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .metrics import N_BINS

__all__ = ["roc_figure", "reliability_figure", "confusion_figure", "label_curve_figure"]

GRID = np.linspace(0, 1, 101)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _roc(y_positive, score):
    from sklearn.metrics import roc_curve

    if y_positive.all() or not y_positive.any():
        return None
    fpr, tpr, _ = roc_curve(y_positive, score)
    return np.interp(GRID, fpr, tpr)


def roc_figure(path: str | os.PathLike, repeats: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[str], *,
               title: str) -> None:
    """ROC curves: the mean over repeats and the 2.5-97.5 percentile band (binary: the positive class;
    otherwise one curve per class, one-vs-rest). ``repeats``: list of (y_index (m,), proba (m, k))."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0), constrained_layout=True)
    targets = [1] if len(classes) == 2 else range(len(classes))
    for c in targets:
        curves = [r for r in (_roc(y == c, p[:, c]) for y, p in repeats) if r is not None]
        if not curves:
            continue
        curves = np.array(curves)
        label = classes[c] if len(classes) > 2 else f"{classes[1]} vs {classes[0]}"
        line, = ax.plot(GRID, curves.mean(0), label=label)
        ax.fill_between(GRID, *np.percentile(curves, [2.5, 97.5], axis=0), color=line.get_color(), alpha=0.2)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_figure(path: str | os.PathLike, y_index: np.ndarray, proba: np.ndarray, classes: Sequence[str], *,
                       title: str) -> None:
    """Observed frequency against predicted probability in 10 bins (all repeats' test predictions)."""
    plt = _plt()
    if len(classes) == 2:
        confidence, hit, xlabel = proba[:, 1], (y_index == 1).astype(float), f"predicted P({classes[1]})"
    else:
        confidence, hit, xlabel = proba.max(1), (proba.argmax(1) == y_index).astype(float), "confidence (top class)"
    bins = np.minimum((confidence * N_BINS).astype(int), N_BINS - 1)
    count = np.bincount(bins, minlength=N_BINS)
    observed = np.bincount(bins, hit, minlength=N_BINS) / np.maximum(count, 1)
    centres = (np.arange(N_BINS) + 0.5) / N_BINS
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.2, 4.6), height_ratios=(3, 1), sharex=True, constrained_layout=True)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.bar(centres[count > 0], observed[count > 0], width=1 / N_BINS, edgecolor="k", alpha=0.7)
    ax.set(ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax2.bar(centres, count, width=1 / N_BINS, color="grey")
    ax2.set(xlabel=xlabel, ylabel="cases")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(path: str | os.PathLike, y_index: ArrayLike, predicted: ArrayLike, classes: Sequence[str], *,
                     title: str) -> None:
    """Confusion matrix, rows the true class, as row fractions with counts (all repeats pooled)."""
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    counts = confusion_matrix(y_index, predicted, labels=range(len(classes)))
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(classes), 1.0 + 0.7 * len(classes)), constrained_layout=True)
    im = ax.imshow(fractions, vmin=0, vmax=1, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{fractions[i, j]:.2f}\n({n})", ha="center", va="center", fontsize=7,
                color="white" if fractions[i, j] > 0.6 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label_curve_figure(path: str | os.PathLike, curves: Mapping[str, Iterable[tuple]], *, title: str) -> None:
    """AUC (mean and 95% interval) against labelled cases per class, one line per feature set.

    ``curves``: {name: [(shots label, n per class, mean, lo, hi), ...]}; 'all' is drawn at its size."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), constrained_layout=True)
    for name, points in curves.items():
        points = sorted(points, key=lambda p: p[1])
        x = [p[1] for p in points]
        mean = np.array([np.nan if p[2] is None else p[2] for p in points], float)
        lo = np.array([np.nan if p[3] is None else p[3] for p in points], float)
        hi = np.array([np.nan if p[4] is None else p[4] for p in points], float)
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=name)
    ax.axhline(0.5, ls=":", c="grey")
    ax.set(xlabel="labelled training cases per class", ylabel="AUC", title=title, xscale="log")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
