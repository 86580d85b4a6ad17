"""Health of a representation while it trains: effective rank, dead dimensions, spread.

A self-supervised encoder can collapse (every input mapped to nearly the same vector, or to a few
directions) while its loss still looks reasonable. RankMe (Garrido et al., "RankMe: Assessing the
Downstream Performance of Pretrained Self-Supervised Representations by Their Rank", ICML 2023,
https://arxiv.org/abs/2210.02885) measures how many directions the embeddings of a set of inputs
really use, without labels:

    >>> z = np.random.default_rng(0).normal(size=(64, 128))
    >>> effective_rank(z) > 40
    True
    >>> effective_rank(np.outer(np.arange(64.0), np.ones(128))) < 1.01
    True

:class:`ssl_rcc.training.RepresentationHealth` embeds a fixed set of training crops every few steps
and logs these figures beside the loss (``metrics.csv``), with a warning when it collapses.
"""

from __future__ import annotations

import numpy as np

__all__ = ["effective_rank", "representation_health", "COLLAPSE_RANK", "COLLAPSE_DEAD"]
COLLAPSE_RANK = 4.0  # untrained encoders give 10-28 on phantom crops; collapsed ones gave 1.2-1.7 (issue 11)
COLLAPSE_DEAD = 0.25  # fraction of dimensions that no longer vary


def effective_rank(z) -> float:
    """RankMe of embeddings ``z`` (n, d): exp of the entropy of the normalised singular values of the
    centred matrix (centred so that a shared offset does not count as a direction); 1 to min(n, d)."""
    z = np.asarray(z, np.float64)
    z = z - z.mean(axis=0)
    s = np.linalg.svd(z, compute_uv=False)
    if not s.sum() > 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def representation_health(z) -> dict:
    """``rankme`` (:func:`effective_rank`), ``dead_fraction`` (dimensions whose spread over the inputs is
    under 1e-3 of the median dimension's), ``dim_std`` (median spread of a dimension) and
    ``collapsed`` (1 when rankme < :data:`COLLAPSE_RANK` or dead_fraction > :data:`COLLAPSE_DEAD`)."""
    z = np.asarray(z, np.float64)
    std = z.std(axis=0)
    median = float(np.median(std))
    dead = float(np.mean(std <= 1e-3 * median)) if median > 0 else 1.0
    rank = effective_rank(z)
    return {"rankme": rank, "dead_fraction": dead, "dim_std": median,
            "collapsed": int(rank < COLLAPSE_RANK or dead > COLLAPSE_DEAD)}
