"""Few-label draws: which cases train and which test, repeated, the same for every feature set.

A draw is a pure function of (labels, sites, shots, repeat, seed), so two runs with other features or
another protocol get the same training cases, and their differences are paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Draw", "few_label_draws", "parse_shots"]


@dataclass(frozen=True)
class Draw:
    """Row positions of one repeat: ``train`` and ``test`` (disjoint, sorted)."""

    repeat: int
    train: np.ndarray
    test: np.ndarray


def parse_shots(shots) -> list:
    """'5', 5, 'all' or '5,10,all' -> a list of ints and 'all'."""
    items = shots.split(",") if isinstance(shots, str) else (list(shots) if isinstance(shots, (list, tuple)) else [shots])
    out = []
    for s in items:
        s = str(s).strip()
        if s == "all":
            out.append("all")
            continue
        try:
            k = int(s)
        except ValueError:
            raise InputError(f"shots: {s!r} is neither a whole number of cases per class nor 'all'.") from None
        if k < 1:
            raise InputError(f"shots: {k} cases per class; give at least 1.")
        out.append(k)
    if not out:
        raise InputError("shots: no value given.")
    return out


def few_label_draws(labels, sites, *, classes, shots, repeats, seed=0, test_site=None) -> list:
    """Training and test cases of each repeat.

    Parameters
    ----------
    labels : (n,) array of str
        The task's label per row; '' rows take no part.
    sites : (n,) array of str
    classes : sequence of str
    shots : int or 'all'
        Labelled training cases per class. An int K draws K cases of each class (stratified); 'all'
        trains on a random stratified half of the cases (or, with ``test_site``, on every case of the
        other sites).
    repeats : int
        Number of draws.
    test_site : None or str
        External validation: training cases come from the other sites and the test set is every
        labelled case of this site.

    Returns
    -------
    list of Draw
    """
    labels, sites = np.asarray(labels, dtype=str), np.asarray(sites, dtype=str)
    rows = np.flatnonzero(labels != "")
    if test_site is not None:
        if test_site not in set(sites[rows]):
            raise InputError(f"test_site: {test_site!r} is not a site of the labelled cases; they come from "
                             f"{sorted(str(s) for s in set(sites[rows]))}.")
        pool, test_pool = rows[sites[rows] != test_site], rows[sites[rows] == test_site]
    else:
        pool, test_pool = rows, None
    for c in classes:
        n = int(np.sum(labels[pool] == c))
        need = 2 if shots == "all" else shots + (0 if test_site is not None else 1)
        if n < need:
            where = f" outside {test_site}" if test_site is not None else ""
            plan = "a half to train and a half to test" if shots == "all" else f"{shots} to train"
            plan += "" if test_site is not None or shots == "all" else " and 1 to test"
            raise InputError(f"class {c!r} has {n} labelled cases{where}; --shots {shots} needs at least {need} ({plan}).")
    draws = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        train = []
        for c in classes:
            members = pool[labels[pool] == c]
            k = len(members) if shots == "all" and test_site is not None else (len(members) // 2 if shots == "all" else shots)
            train.append(rng.choice(members, size=k, replace=False))
        train = np.sort(np.concatenate(train))
        test = np.sort(test_pool if test_pool is not None else np.setdiff1d(pool, train))
        if test_pool is not None:
            test = test[np.isin(labels[test], classes)]
        draws.append(Draw(r, train, test))
    return draws
