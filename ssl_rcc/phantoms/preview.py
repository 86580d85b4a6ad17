"""A montage of a few cases per subtype: the four CT phases through the tumour and the true Ktrans."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from .appearance import PHASES
from .labels import SUBTYPES

if TYPE_CHECKING:
    import pandas as pd


def preview_montage(root: Path, table: pd.DataFrame, path: str | os.PathLike, *, per_subtype: int = 2) -> None:
    """Save a PNG: one row per case (up to ``per_subtype`` per subtype), CT window W400/L40."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for s in SUBTYPES for _, r in table[table["subtype"] == s].head(per_subtype).iterrows()]
    fig, axes = plt.subplots(len(rows), 5, figsize=(10, 2.1 * len(rows)), squeeze=False, constrained_layout=True)
    for ax_row, row in zip(axes, rows):
        ct = np.asarray(nib.load(str(root / row["ct"])).dataobj)
        tumour = np.asarray(nib.load(str(root / row["tumor_mask"])).dataobj) > 0
        z = int(np.argmax(tumour.sum(axis=(0, 1))))
        for p, ax in enumerate(ax_row[:4]):
            ax.imshow(ct[:, :, z, p].T, cmap="gray", vmin=-160, vmax=240, origin="lower")
            ax.contour(tumour[:, :, z].T, levels=[0.5], colors="tab:orange", linewidths=0.6)
            ax.set_title(PHASES[p] if row is rows[0] else "", fontsize=8)
        label = f"{row['subtype']} {row['grade'] or '-'} inv:{row['invasion']} {row['site']}"
        ax_row[0].set_ylabel(label, fontsize=7)
        if isinstance(row.get("ktrans_true"), str):
            kt = np.asarray(nib.load(str(root / row["ktrans_true"])).dataobj)
            ax_row[4].imshow(kt[:, :, kt.shape[2] // 2].T, cmap="viridis", vmin=0, vmax=0.8, origin="lower")
            ax_row[4].set_title("true Ktrans (/min)" if row is rows[0] else "", fontsize=8)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=90)
    plt.close(fig)
