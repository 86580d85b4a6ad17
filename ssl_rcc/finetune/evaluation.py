"""Few-label evaluation: the same draws for the requested feature set and for each block alone.

For each draw the head is fitted on the training cases and scored on the test cases; every metric
gets a bootstrap of the test cases (the same resamples for every feature set of a draw, so that the
fusion-minus-block AUC differences are paired), then :func:`~ssl_rcc.finetune.metrics.summarise`
pools repeats and resamples into a mean and a 95% interval.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .draws import few_label_draws
from .heads import PROTOCOLS, ProbeHead
from .metrics import bootstrap_metrics, point_metrics, summarise

if TYPE_CHECKING:
    from .endtoend import FinetuneHead
    from .heads import KnnHead

__all__ = ["evaluate_draws", "set_name", "head_factory"]

log = logging.getLogger("ssl_rcc")


def set_name(blocks) -> str:
    """'image+kinetic' for a fused set, the block's name alone otherwise."""
    return "+".join(blocks)


def head_factory(protocol: str, options: dict | None = None) -> Callable[..., ProbeHead | KnnHead | FinetuneHead]:
    """A function (classes, seed) -> unfitted head of ``protocol``; ``options`` go to the end-to-end head."""
    if protocol == "finetune":
        from .endtoend import FinetuneHead

        return partial(FinetuneHead, **(options or {}))
    return PROTOCOLS[protocol]


def _fit_sets(protocol, classes, train, y_train, seed, options=None):
    """{feature-set name: fitted head}: the requested blocks fused, and each block alone if several
    (with ``finetune``, a tabular block alone has no encoder to train: the probe fits it)."""
    names = list(train)
    heads = {}
    if protocol == "probe":
        head = ProbeHead(classes, seed=seed)
        scores = head.inner_scores(train, y_train)  # one inner CV serves the fusion and every baseline
        heads[set_name(names)] = head.fit(train, y_train, scores=scores)
        if len(names) > 1:
            for b in names:
                heads[b] = ProbeHead(classes, seed=seed).fit({b: train[b]}, y_train, scores=scores)
        return heads
    make = head_factory(protocol, options)
    heads[set_name(names)] = make(classes, seed=seed).fit(train, y_train)
    if len(names) > 1:
        for b in names:
            alone = ProbeHead if protocol == "finetune" and b != "image" else make
            heads[b] = alone(classes, seed=seed).fit({b: train[b]}, y_train)
    return heads


def _per_site(records, n_classes):
    """Metrics per site of the test cases: each repeat's predictions on that site, then pooled."""
    by_site = {}
    for repeat, (y, p, t, sites, resamples) in enumerate(records):
        for site in np.unique(sites):
            sel = np.flatnonzero(sites == site)
            local = np.random.default_rng([repeat, len(sel)]).integers(0, len(sel), size=(resamples.shape[0], len(sel)))
            by_site.setdefault(site, ([], [], 0))
            points, boots, n = by_site[site]
            points.append(point_metrics(y[sel], p[sel], t, n_classes))
            boots.append(bootstrap_metrics(y[sel], p[sel], t, n_classes, local))
            by_site[site] = (points, boots, n + len(sel))
    return {site: dict(summarise(points, boots), n_test_predictions=n) for site, (points, boots, n) in by_site.items()}


def evaluate_draws(blocks: dict, labels, sites, *, classes, protocol, shots, repeats, seed=0, test_site=None,
                   n_boot=200, case_ids=None, head_options=None) -> dict:
    """Fit and score ``protocol`` on few-label draws of the labelled cases.

    Parameters
    ----------
    blocks : dict of str to (n, d) ndarray
        Feature blocks of all cases (rows as ``labels``).
    labels, sites : (n,) arrays of str
        Task labels ('' = not in the task) and sites.
    classes : tuple of str
    protocol : {"probe", "knn", "finetune"}
        With ``finetune``, ``blocks["image"]`` holds tumour crops (n, C, X, Y, Z) and ``head_options``
        the encoder (see :class:`~ssl_rcc.finetune.endtoend.FinetuneHead`).
    shots, repeats, seed, test_site
        See :func:`~ssl_rcc.finetune.draws.few_label_draws`.
    n_boot : int
        Bootstrap resamples of each draw's test cases.

    Returns
    -------
    dict
        ``sets`` {feature set: summarised metrics}, ``differences`` {block: paired AUC difference of the
        fused set minus that block}, ``per_site``, ``n_train``, ``n_test``, ``chosen`` (blocks the probe
        kept, counted over draws), ``predictions`` (DataFrame), ``records`` (per set: list of (y, proba)).
    """
    labels, sites = np.asarray(labels, dtype=str), np.asarray(sites, dtype=str)
    case_ids = np.asarray(case_ids if case_ids is not None else np.arange(len(labels)).astype(str))
    draws = few_label_draws(labels, sites, classes=classes, shots=shots, repeats=repeats, seed=seed, test_site=test_site)
    main = set_name(list(blocks))
    points, boots, records, site_records = {}, {}, {}, []
    chosen, frames = Counter(), []
    for draw in draws:
        # end-to-end training takes minutes a draw: say where it is (the probe takes a second)
        log.log(logging.INFO if protocol == "finetune" else logging.DEBUG, "draw %d of %d: %d training, %d test cases", draw.repeat + 1, len(draws), len(draw.train), len(draw.test))
        train = {b: x[draw.train] for b, x in blocks.items()}
        test = {b: x[draw.test] for b, x in blocks.items()}
        y_test = np.array([classes.index(v) for v in labels[draw.test]])
        heads = _fit_sets(protocol, classes, train, labels[draw.train], seed + draw.repeat, head_options)
        resamples = np.random.default_rng([seed, draw.repeat, 1]).integers(0, len(draw.test), size=(n_boot, len(draw.test)))
        for name, head in heads.items():
            proba = head.predict_proba({b: test[b] for b in head.blocks_used})
            points.setdefault(name, []).append(point_metrics(y_test, proba, head.threshold, len(classes)))
            boots.setdefault(name, []).append(bootstrap_metrics(y_test, proba, head.threshold, len(classes), resamples))
            records.setdefault(name, []).append((y_test, proba, head.threshold))
            frame = pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])
            frame.insert(0, "features", name)
            frame.insert(0, "true", labels[draw.test])
            frame.insert(0, "repeat", draw.repeat)
            frame.insert(0, "site", sites[draw.test])
            frame.insert(0, "case_id", case_ids[draw.test])
            frame["threshold"] = head.threshold
            frame["role"] = "test"
            frames.append(frame)
        chosen[set_name(heads[main].blocks_used)] += 1
        site_records.append((y_test, records[main][-1][1], heads[main].threshold, sites[draw.test], resamples))
    sets = {name: summarise(points[name], boots[name]) for name in points}
    differences = {}
    for name in points:
        if name == main:
            continue
        diff_points = [{"auc": a["auc"] - b["auc"]} for a, b in zip(points[main], points[name])]
        diff_boots = [{"auc": a["auc"] - b["auc"]} for a, b in zip(boots[main], boots[name])]
        differences[name] = summarise(diff_points, diff_boots)["auc"]
    return {
        "sets": sets, "main": main, "differences": differences,
        "per_site": _per_site(site_records, len(classes)),
        "n_train": int(np.mean([len(d.train) for d in draws])), "n_test": int(np.mean([len(d.test) for d in draws])),
        "chosen": dict(chosen), "predictions": pd.concat(frames, ignore_index=True), "records": records,
    }
