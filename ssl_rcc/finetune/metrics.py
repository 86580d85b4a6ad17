"""Metrics of predicted probabilities, with 95% intervals over repeats and bootstrap resamples.

Point values use scikit-learn's definitions (``roc_auc_score``, macro one-vs-rest for more than two
classes; ``balanced_accuracy_score``). The bootstrap needs thousands of AUCs, so they come from one
vectorised rank (Mann-Whitney) computation over all resamples at once, which equals
``roc_auc_score`` (tested). For binary tasks sensitivity, specificity, PPV and NPV are taken at the
threshold chosen on the training cases. ECE (expected calibration error, 10 equal-width bins) is
about the positive class's probability for binary tasks and about the predicted class's
probability (confidence) otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata

__all__ = ["point_metrics", "bootstrap_metrics", "summarise", "auc_rows", "expected_calibration_error", "N_BINS"]

N_BINS = 10


def auc_rows(y_index, proba, n_classes) -> np.ndarray:
    """AUC of each row of (B, m) label indices and (B, m, k) probabilities (binary: class 1's; else the
    macro mean of one-vs-rest AUCs over classes present with both signs in the row); NaN if undefined."""
    y_index, proba = np.atleast_2d(y_index), np.asarray(proba, float)
    proba = proba[None] if proba.ndim == 2 else proba
    classes = [1] if n_classes == 2 else range(n_classes)
    per_class = []
    for c in classes:
        positive = y_index == c
        n_pos = positive.sum(axis=1)
        n_neg = positive.shape[1] - n_pos
        ranks = rankdata(proba[:, :, c], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class.append(((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    per_class = np.array(per_class)
    per_class[~np.isfinite(per_class)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row where no class is defined gives NaN
        return np.nanmean(per_class, axis=0)


def expected_calibration_error(y_index, proba, n_classes) -> np.ndarray:
    """ECE of each row of (B, m) labels and (B, m, k) probabilities (see the module docstring)."""
    y_index, proba = np.atleast_2d(y_index), np.asarray(proba, float)
    proba = proba[None] if proba.ndim == 2 else proba
    if n_classes == 2:
        confidence, hit = proba[:, :, 1], (y_index == 1).astype(float)
    else:
        confidence = proba.max(axis=2)
        hit = (proba.argmax(axis=2) == y_index).astype(float)
    bins = np.minimum((confidence * N_BINS).astype(int), N_BINS - 1) + N_BINS * np.arange(len(confidence))[:, None]
    size = N_BINS * len(confidence)
    # sum over bins of |sum of (confidence - outcome)| / n = sum of (n_bin / n) |confidence - frequency|
    gap = np.abs(np.bincount(bins.ravel(), (confidence - hit).ravel(), minlength=size)).reshape(-1, N_BINS)
    return gap.sum(axis=1) / confidence.shape[1]


def _rows(y_index, proba, threshold, n_classes) -> dict:
    """Every metric of each row of (B, m) labels and (B, m, k) probabilities."""
    out = {"auc": auc_rows(y_index, proba, n_classes)}
    if n_classes == 2:
        predicted = proba[:, :, 1] >= threshold
        positive = y_index == 1
        tp, tn = (predicted & positive).sum(1), (~predicted & ~positive).sum(1)
        fp, fn = (predicted & ~positive).sum(1), (~predicted & positive).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.update(sensitivity=tp / (tp + fn), specificity=tn / (tn + fp), ppv=tp / (tp + fp), npv=tn / (tn + fn))
            out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
    else:
        predicted = proba.argmax(axis=2)
        recalls = []
        for c in range(n_classes):
            member = y_index == c
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(((predicted == c) & member).sum(1) / member.sum(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["balanced_accuracy"] = np.nanmean(np.array(recalls, float), axis=0)
    out["ece"] = expected_calibration_error(y_index, proba, n_classes)
    return {k: np.where(np.isfinite(v), v, np.nan) for k, v in out.items()}


def point_metrics(y_index, proba, threshold, n_classes) -> dict:
    """Metrics of one set of predictions: ``y_index`` (m,), ``proba`` (m, k)."""
    y_index = np.asarray(y_index)
    return {k: float(v[0]) for k, v in _rows(y_index[None], np.asarray(proba)[None], threshold, n_classes).items()}


def bootstrap_metrics(y_index, proba, threshold, n_classes, resamples) -> dict:
    """Metrics of each bootstrap resample: ``resamples`` (B, m) row positions into the predictions."""
    return _rows(np.asarray(y_index)[resamples], np.asarray(proba)[resamples], threshold, n_classes)


def _interval(values):
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values.size else [None, None]


def summarise(points, boots) -> dict:
    """``{metric: {"mean": x, "ci95": [lo, hi]}}``: the mean of the repeats' point values and the 2.5th
    and 97.5th percentiles of all their bootstrap values pooled (repeat and resampling variation)."""
    out = {}
    for name in points[0]:
        values = np.array([p[name] for p in points], float)
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else None
        out[name] = {"mean": mean, "ci95": _interval(np.concatenate([b[name] for b in boots]))}
    return out
