"""Figures and tables of the demo report (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["map_figure", "markdown_table"]


def map_figure(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray, float | None, float | None, str]], *,
               title: str, slice_index: int | None = None) -> None:
    """Save a row of image panels (each ``(label, 3D array, vmin, vmax, cmap)``) at one z slice as PNG,
    each with its colour bar; voxels without a value (NaN) are grey and the panel's title says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), constrained_layout=True)
    for ax, (label, volume, vmin, vmax, cmap) in zip(np.atleast_1d(axes), panels):
        z = volume.shape[2] // 2 if slice_index is None else slice_index
        shown = volume[:, :, z].T
        colours = plt.get_cmap(cmap).with_extremes(bad="0.6")
        im = ax.imshow(shown, origin="lower", vmin=vmin, vmax=vmax, cmap=colours, interpolation="nearest")
        missing = int(np.isnan(shown).sum())
        ax.set_title(label + (f"\ngrey: {missing} voxels not fitted" if missing else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Iterable[Iterable[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats printed with 3 significant digits."""

    def cell(v):
        return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
