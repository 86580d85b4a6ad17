"""A one-page picture of a fit's quality (``python -m kinetics fit --quality``): where each status is,
and how the fitted values are distributed."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from .status import FIT_STATUS, OK, has_estimate, status_counts

__all__ = ["quality_figure"]

# one colour per status code, in code order (0: outside the mask, 1: ok, ...)
_COLOURS = ["white", "#2ca02c", "#bcbd22", "#7f7f7f", "#9467bd", "#d62728", "#c7c7c7", "#ff7f0e", "#8c564b", "#e377c2"]


def quality_figure(
    path: str | os.PathLike,
    status: ArrayLike,
    maps: Mapping[str, ArrayLike],
    units: Mapping[str, str],
    *,
    slice_index: int | None = None,
) -> str | os.PathLike:
    """Save a PNG with the ``fit_status`` map at one z slice (the slice with most fitted voxels unless
    ``slice_index``) and histograms of each map in ``maps`` (name -> (x, y, z) array) over the voxels
    with an estimate, ``ok`` and ``at_bound`` stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    status = np.asarray(status)
    if slice_index is None:
        slice_index = int(np.argmax(has_estimate(status).sum(axis=(0, 1))))  # (status > 0 is every voxel without a mask)
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(4.2 + 3.2 * len(maps), 3.6), constrained_layout=True)
    axes = np.atleast_1d(axes)
    codes = sorted(FIT_STATUS)
    colours = ListedColormap(_COLOURS[: len(codes)])
    axes[0].imshow(status[:, :, slice_index].T, origin="lower", cmap=colours,
                   norm=BoundaryNorm(np.arange(len(codes) + 1) - 0.5, len(codes)), interpolation="nearest")
    axes[0].set(title=f"fit_status, slice z={slice_index}", xticks=[], yticks=[])
    counts = status_counts(status)
    axes[0].legend(handles=[Patch(color=_COLOURS[c], label=f"{FIT_STATUS[c]} ({counts[FIT_STATUS[c]]})")
                            for c in codes if FIT_STATUS[c] in counts],
                   fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    estimate = has_estimate(status)
    for ax, (name, values) in zip(axes[1:], maps.items()):
        values = np.asarray(values)
        shown = [values[estimate & (status == OK)], values[estimate & (status != OK)]]
        shown = [v[np.isfinite(v)] for v in shown]
        if sum(v.size for v in shown):
            ax.hist(shown, bins=50, stacked=True, color=[_COLOURS[1], _COLOURS[2]], label=["ok", "at bound"])
            ax.legend(fontsize=7)
        ax.set(title=name, xlabel=f"{name} ({units.get(name, '1')})", ylabel="voxels")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
