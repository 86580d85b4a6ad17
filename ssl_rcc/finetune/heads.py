"""Few-label heads on feature blocks: a regularised logistic-regression probe and a cosine k-NN.

Both take a dict of feature blocks ``{name: (n, d) ndarray}``. Each block is put on one scale with
statistics of the training cases only: missing values replaced by the training median, standardised,
then divided by sqrt(d), so that a 512-dimensional embedding and a 20-feature kinetic block weigh
alike in the fused (concatenated) vector. ``fit`` returns the fitted head, as dipy's models do;
:meth:`state` / :func:`head_from_state` save and restore it as plain arrays (no pickle).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from .endtoend import FinetuneHead

__all__ = ["BlockScaler", "ProbeHead", "KnnHead", "PROTOCOLS", "head_from_state", "youden_threshold"]

C_GRID = (0.01, 0.1, 1.0, 10.0)
K_GRID = (1, 3, 5, 7, 9, 15)


class BlockScaler:
    """Median imputation, standardisation and 1/sqrt(d) weighting of each block (training statistics)."""

    def fit(self, blocks: dict):
        self.names = list(blocks)
        self.stats = {}
        for name, x in blocks.items():
            x = np.asarray(x, float)
            median = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0) if len(x) else np.zeros(x.shape[1])
            median = np.where(np.isfinite(median), median, 0.0)
            filled = np.where(np.isfinite(x), x, median)
            mean, std = filled.mean(axis=0), filled.std(axis=0)
            self.stats[name] = (median, mean, np.where(std > 1e-12, std, 1.0) * np.sqrt(x.shape[1]))
        return self

    def transform(self, blocks: dict, names=None) -> np.ndarray:
        """The fused (n, sum d) matrix of the blocks ``names`` (all by default), in that order."""
        parts = []
        for name in names or self.names:
            median, mean, scale = self.stats[name]
            x = np.asarray(blocks[name], float)
            parts.append((np.where(np.isfinite(x), x, median) - mean) / scale)
        return np.concatenate(parts, axis=1)

    def state(self) -> dict:
        return {f"scaler/{n}/{k}": v for n, s in self.stats.items() for k, v in zip(("median", "mean", "scale"), s)}

    @classmethod
    def from_state(cls, names: Sequence[str], arrays: Mapping[str, np.ndarray]) -> BlockScaler:
        self = cls()
        self.names = list(names)
        self.stats = {n: tuple(arrays[f"scaler/{n}/{k}"] for k in ("median", "mean", "scale")) for n in names}
        return self


def youden_threshold(y_positive, p_positive) -> float:
    """The probability threshold that maximises sensitivity + specificity on (y, p); 0.5 if undefined."""
    y, p = np.asarray(y_positive, bool), np.asarray(p_positive, float)
    if y.all() or not y.any():
        return 0.5
    candidates = np.unique(p)
    sens = (p[y][None, :] >= candidates[:, None]).mean(axis=1)
    spec = (p[~y][None, :] < candidates[:, None]).mean(axis=1)
    return float(candidates[np.argmax(sens + spec)])


def _inner_folds(y, n_folds, seed):
    from sklearn.model_selection import StratifiedKFold

    smallest = np.min(np.unique(y, return_counts=True)[1])
    if smallest < 2:
        return None
    return list(StratifiedKFold(min(n_folds, smallest), shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _log_loss(y_index, proba):
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y_index)), y_index], 1e-12, None))))


def _logistic(c, seed):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=500, random_state=seed)


def _fit_logistic(x, y_index, c, seed, n_classes):
    model = _logistic(c, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may stop at max_iter on separable few-shot data: harmless
        model.fit(x, y_index)
    if len(model.classes_) != n_classes:
        raise InputError("a training draw lacks a class.")
    return model.coef_, model.intercept_


def _logit_proba(x, coef, intercept):
    """predict_proba of scikit-learn's LogisticRegression from its coefficients."""
    z = x @ coef.T + intercept
    if coef.shape[0] == 1:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _block_weight(auc) -> float:
    """A block's weight in the late fusion from its inner cross-validated AUC: (AUC - 0.5)^2, 0 at chance."""
    return max(float(auc) - 0.5, 0.0) ** 2 if np.isfinite(auc) else 0.0


class ProbeHead:
    """Class-balanced logistic regression on feature blocks, fused late or early.

    - ``fusion="late"`` (default): one logistic regression per block, each with its own C from
      :data:`C_GRID` chosen by stratified inner cross-validation on the training cases (log loss); the
      blocks' log-probabilities are averaged with weights (AUC - 0.5)^2 of their inner out-of-fold
      predictions, so a block at chance gets no weight and cannot drag the fusion down.
    - ``fusion="early"``: one logistic regression on the concatenated blocks, the subset of blocks and C
      chosen together by inner cross-validation.

    On the label-efficiency benchmark's cached features (150 synthetic cases, 10 draws at 5 and 10
    labels per class, subtype / grade / invasion) late fusion had the higher AUC in all 6 settings. For a
    binary task the threshold maximises Youden's J on the inner out-of-fold probabilities.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["a", "b"], 10)
    >>> blocks = {"x": rng.normal(size=(20, 3)) + (y == "b")[:, None] * 3}
    >>> ProbeHead(("a", "b")).fit(blocks, y).predict_proba(blocks).shape
    (20, 2)
    """

    protocol = "probe"

    def __init__(self, classes, *, fusion="late", inner_folds=5, seed=0):
        if fusion not in ("late", "early"):
            raise InputError(f"fusion: {fusion!r} is neither 'late' nor 'early'.")
        self.classes, self.fusion = tuple(classes), fusion
        self.inner_folds, self.seed = int(inner_folds), int(seed)

    def _subsets(self, names):
        if self.fusion == "late" or len(names) == 1:
            return [(n,) for n in names]
        return [s for k in range(len(names), 0, -1) for s in itertools.combinations(names, k)]

    def inner_scores(self, blocks, y) -> dict:
        """{(subset, C): (log loss, out-of-fold probabilities)} of every candidate, by inner CV."""
        y_index = np.array([self.classes.index(v) for v in np.asarray(y, dtype=str)])
        folds = _inner_folds(y_index, self.inner_folds, self.seed)
        if folds is None:
            return {}
        scores = {}
        for subset in self._subsets(list(blocks)):
            for c in C_GRID:
                oof = np.zeros((len(y_index), len(self.classes)))
                for train, test in folds:
                    scaler = BlockScaler().fit({n: blocks[n][train] for n in subset})
                    coef, intercept = _fit_logistic(scaler.transform({n: blocks[n][train] for n in subset}),
                                                    y_index[train], c, self.seed, len(self.classes))
                    oof[test] = _logit_proba(scaler.transform({n: blocks[n][test] for n in subset}), coef, intercept)
                scores[(subset, c)] = (_log_loss(y_index, oof), oof)
        return scores

    def _choose(self, scores, subsets):
        """(subset, C, out-of-fold probabilities) of the best candidate among ``subsets``; ties go to the
        earlier candidate (more blocks, then stronger regularisation)."""
        candidates = {k: v for k, v in scores.items() if k[0] in subsets}
        if not candidates:  # too few cases for an inner split
            return subsets[0], 1.0, None
        (subset, c), (_, oof) = min(candidates.items(), key=lambda kv: kv[1][0])
        return subset, c, oof

    def fit(self, blocks: dict, y, *, scores=None):
        """Fit on training blocks and labels ``y`` (n,); ``scores`` reuses :meth:`inner_scores` computed
        on a superset of these blocks (the baselines of single blocks share the fusion's inner CV)."""
        from .metrics import auc_rows

        y = np.asarray(y, dtype=str)
        names = list(blocks)
        y_index = np.array([self.classes.index(v) for v in y])
        scores = self.inner_scores(blocks, y) if scores is None else scores
        self.scaler = BlockScaler().fit(blocks)
        if self.fusion == "early":
            subset, c, oof = self._choose(scores, self._subsets(names))
            self.members = [(tuple(subset), float(c), 1.0)]
        else:
            self.members, oofs = [], []
            for b in names:
                subset, c, oof = self._choose(scores, [(b,)])
                auc = auc_rows(y_index, oof, len(self.classes))[0] if oof is not None else np.nan
                self.members.append((subset, float(c), _block_weight(auc)))
                oofs.append(oof)
            total = sum(w for _, _, w in self.members)
            self.members = [(s, c, w / total if total > 0 else 1.0 / len(names)) for s, c, w in self.members]
            oof = None if any(o is None for o in oofs) else _combine([m[2] for m in self.members], oofs)
        self.blocks_used = tuple(dict.fromkeys(b for s, _, w in self.members if w > 0 for b in s))
        self.coefs = [_fit_logistic(self.scaler.transform(blocks, s), y_index, c, self.seed, len(self.classes))
                      for s, c, _ in self.members]
        self.threshold = youden_threshold(y_index == 1, oof[:, 1]) if len(self.classes) == 2 and oof is not None else 0.5
        return self

    def predict_proba(self, blocks: dict) -> np.ndarray:
        """(n, n_classes) probabilities, classes in :attr:`classes` order."""
        weights, probas = [], []
        for (subset, _, w), (coef, intercept) in zip(self.members, self.coefs):
            if w > 0:
                weights.append(w)
                probas.append(_logit_proba(self.scaler.transform(blocks, subset), coef, intercept))
        return _combine(weights, probas)

    def state(self) -> tuple:
        meta = {"protocol": self.protocol, "classes": list(self.classes), "fusion": self.fusion,
                "blocks": list(self.scaler.names), "blocks_used": list(self.blocks_used),
                "members": [[list(s), c, w] for s, c, w in self.members], "threshold": self.threshold, "seed": self.seed}
        arrays = dict(self.scaler.state())
        for i, (coef, intercept) in enumerate(self.coefs):
            arrays[f"coef/{i}"], arrays[f"intercept/{i}"] = coef, intercept
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> ProbeHead:
        self = cls(meta["classes"], fusion=meta["fusion"], seed=meta["seed"])
        self.blocks_used, self.threshold = tuple(meta["blocks_used"]), meta["threshold"]
        self.members = [(tuple(s), c, w) for s, c, w in meta["members"]]
        self.scaler = BlockScaler.from_state(meta["blocks"], arrays)
        self.coefs = [(arrays[f"coef/{i}"], arrays[f"intercept/{i}"]) for i in range(len(self.members))]
        return self


def _combine(weights, probas) -> np.ndarray:
    """Weighted geometric mean of class probabilities, renormalised (a weighted mean of log-probabilities)."""
    z = sum(w * np.log(np.clip(p, 1e-12, None)) for w, p in zip(weights, probas))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class KnnHead:
    """Cosine k-nearest neighbours on the fused blocks, votes weighted by inverse class frequency.

    k (from :data:`K_GRID`, below the smallest class) is chosen by leave-one-out log loss on the
    training cases; probabilities are the weighted vote shares, lightly smoothed (one pseudo-vote
    spread over the classes) so that log loss and calibration stay finite.
    """

    protocol = "knn"

    def __init__(self, classes, *, seed=0):
        self.classes, self.seed = tuple(classes), int(seed)

    def _proba(self, sim, k, exclude_self=False):
        order = np.argsort(-sim, axis=1)[:, int(exclude_self):int(exclude_self) + k]
        votes = np.zeros((len(sim), len(self.classes)))
        for j in range(len(self.classes)):
            votes[:, j] = (self.train_index[order] == j).sum(axis=1) * self.class_weight[j]
        votes += self.class_weight.sum() / len(self.classes) / max(k, 1)  # smoothing
        return votes / votes.sum(axis=1, keepdims=True)

    def _unit(self, blocks):
        x = self.scaler.transform(blocks)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit(self, blocks: dict, y, **_):
        y = np.asarray(y, dtype=str)
        self.train_index = np.array([self.classes.index(v) for v in y])
        counts = np.bincount(self.train_index, minlength=len(self.classes))
        self.class_weight = np.where(counts > 0, len(y) / (len(self.classes) * np.maximum(counts, 1)), 0.0)
        self.scaler = BlockScaler().fit(blocks)
        self.blocks_used = tuple(blocks)
        self.train_unit = self._unit(blocks)
        sim = self.train_unit @ self.train_unit.T
        ks = [k for k in K_GRID if k < len(y)] or [1]
        losses = {k: _log_loss(self.train_index, self._proba(sim, k, exclude_self=True)) for k in ks}
        self.k = min(losses, key=losses.get)
        loo = self._proba(sim, self.k, exclude_self=True)
        self.threshold = youden_threshold(self.train_index == 1, loo[:, 1]) if len(self.classes) == 2 else 0.5
        return self

    def predict_proba(self, blocks: dict) -> np.ndarray:
        return self._proba(self._unit(blocks) @ self.train_unit.T, self.k)

    def state(self) -> tuple:
        meta = {"protocol": self.protocol, "classes": list(self.classes), "blocks_used": list(self.blocks_used),
                "k": self.k, "threshold": self.threshold, "seed": self.seed}
        return meta, dict(self.scaler.state(), train_unit=self.train_unit, train_index=self.train_index,
                          class_weight=self.class_weight)

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> KnnHead:
        self = cls(meta["classes"], seed=meta["seed"])
        self.blocks_used, self.k, self.threshold = tuple(meta["blocks_used"]), meta["k"], meta["threshold"]
        self.scaler = BlockScaler.from_state(self.blocks_used, arrays)
        self.train_unit, self.train_index = arrays["train_unit"], arrays["train_index"]
        self.class_weight = arrays["class_weight"]
        return self


PROTOCOLS = {"probe": ProbeHead, "knn": KnnHead}


def head_from_state(meta: dict, arrays: Mapping[str, np.ndarray]) -> ProbeHead | KnnHead | FinetuneHead:
    """A fitted head from :meth:`state`'s (meta, arrays)."""
    if meta["protocol"] == "finetune":
        from .endtoend import FinetuneHead

        return FinetuneHead.from_state(meta, arrays)
    return PROTOCOLS[meta["protocol"]].from_state(meta, arrays)
