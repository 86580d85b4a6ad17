"""Digital reference objects (DROs): DCE-MRI and VFA series made from known parameter maps.

The layout follows the QIBA DCE DRO: blocks of voxels, one (Ktrans, ve) pair each, here repeated over
slices of increasing vp, so that every fitted map can be compared block by block with the truth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .aif import plasma_aif, write_aif_csv
from .io import output_directory, save_image
from .models import extended_tofts
from .signal import signal_from_concentration, spgr_signal

__all__ = ["Dro", "make_dro", "write_dro"]


@dataclass
class Dro:
    """A synthetic DCE-MRI acquisition with its truth.

    ``signal`` (x, y, z, t) and ``vfa`` (x, y, z, n_fa) are noisy SPGR signals; ``conc_mM`` is the
    noiseless tissue concentration; ``truth`` holds ``ktrans`` (/min), ``ve``, ``vp`` and ``t10`` (s).
    """

    signal: np.ndarray
    conc_mM: np.ndarray
    times_s: np.ndarray
    cp_mM: np.ndarray
    truth: dict
    vfa: np.ndarray
    vfa_fa_deg: tuple
    tr_s: float
    fa_deg: float
    r1_per_mM_s: float
    n_baseline: int
    hct: float
    aif_delay_s: float
    affine: np.ndarray = field(default_factory=lambda: np.diag([2.0, 2.0, 5.0, 1.0]))


def make_dro(
    *,
    ktrans_per_min: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.35),
    ve: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
    vp: Sequence[float] = (0.0, 0.02, 0.05),
    block: int = 5,
    n_frames: int = 60,
    frame_s: float = 5.0,
    n_baseline: int = 5,
    aif: str = "parker",
    aif_delay_s: float = 25.0,
    hct: float = 0.42,
    t10_s: float = 1.2,
    tr_s: float = 0.004,
    fa_deg: float = 15.0,
    vfa_fa_deg: Sequence[float] = (2.0, 5.0, 10.0, 15.0),
    r1_per_mM_s: float = 4.5,
    snr: float = 60.0,
    seed: int = 0,
) -> Dro:
    """Make a DRO of ``len(ktrans) * block`` by ``len(ve) * block`` by ``len(vp)`` voxels.

    Parameters
    ----------
    ktrans_per_min, ve, vp : sequences
        Block values along x, y and z (slices).
    block : int
        Voxels along x and y per block.
    n_frames, frame_s : int, float (s)
        Number and spacing of frames; the series starts at 0 s.
    aif : str
        Population AIF name (see :func:`kinetics.aif.plasma_aif`), starting at ``aif_delay_s``.
    t10_s : float, s
        Pre-contrast T1 at the centre; it varies by +-20% across x so that a T10 map matters.
    snr : float
        Baseline signal over the Gaussian noise standard deviation, for DCE and VFA alike.
    seed : int
        Seed of the noise generator.
    """
    rng = np.random.default_rng(seed)
    kt = np.repeat(np.asarray(ktrans_per_min, float), block)
    v_e = np.repeat(np.asarray(ve, float), block)
    v_p = np.asarray(vp, float)
    shape = (kt.size, v_e.size, v_p.size)
    grid = np.meshgrid(kt, v_e, v_p, indexing="ij")
    truth = {"ktrans": grid[0], "ve": grid[1], "vp": grid[2]}
    truth["t10"] = t10_s * np.broadcast_to(np.linspace(0.8, 1.2, shape[0])[:, None, None], shape).copy()
    t = np.arange(n_frames) * float(frame_s)
    cp = plasma_aif(aif, t, hct=hct, delay_s=aif_delay_s)
    conc = extended_tofts(t, cp, truth["ktrans"].ravel(), truth["ve"].ravel(), truth["vp"].ravel())
    conc = conc.reshape(shape + (n_frames,))
    s0 = 1000.0
    clean = signal_from_concentration(conc, t10_s=truth["t10"], tr_s=tr_s, fa_deg=fa_deg, r1_per_mM_s=r1_per_mM_s, s0=s0)
    sd = float(clean[..., :n_baseline].mean() / snr)
    signal = clean + rng.normal(0.0, sd, clean.shape)
    vfa_clean = spgr_signal(1.0 / truth["t10"][..., None], s0=s0, tr_s=tr_s, fa_deg=np.asarray(vfa_fa_deg, float))
    vfa = vfa_clean + rng.normal(0.0, sd, vfa_clean.shape)
    return Dro(
        signal.astype(np.float32), conc.astype(np.float32), t, cp, truth, vfa.astype(np.float32),
        tuple(float(a) for a in vfa_fa_deg), float(tr_s), float(fa_deg), float(r1_per_mM_s),
        int(n_baseline), float(hct), float(aif_delay_s),
    )


def write_dro(dro: Dro, out, *, overwrite=False):
    """Write a DRO as the files ``python -m kinetics fit`` and ``t1map`` read.

    ``dce.nii.gz`` (signal), ``conc.nii.gz`` (noiseless mM), ``times.txt`` (s), ``aif.csv``
    (``time_s,cp_mM``), ``vfa.nii.gz`` with ``vfa_fa.txt`` (degrees), ``<param>_true.nii.gz`` and
    ``dro.json`` (TR, FA, r1, baseline frames, haematocrit).
    """
    with output_directory(out, overwrite=overwrite) as tmp:
        save_image(tmp / "dce.nii.gz", dro.signal, dro.affine)
        save_image(tmp / "conc.nii.gz", dro.conc_mM, dro.affine)
        np.savetxt(tmp / "times.txt", dro.times_s, fmt="%.6g")
        write_aif_csv(tmp / "aif.csv", dro.times_s, dro.cp_mM)
        save_image(tmp / "vfa.nii.gz", dro.vfa, dro.affine)
        np.savetxt(tmp / "vfa_fa.txt", np.asarray(dro.vfa_fa_deg), fmt="%g")
        for name, values in dro.truth.items():
            save_image(tmp / f"{name}_true.nii.gz", values.astype(np.float32), dro.affine)
        meta = dict(
            tr_s=dro.tr_s, fa_deg=dro.fa_deg, r1_per_mM_s=dro.r1_per_mM_s, baseline_frames=dro.n_baseline,
            hct=dro.hct, aif_delay_s=dro.aif_delay_s, vfa_fa_deg=list(dro.vfa_fa_deg),
        )
        (tmp / "dro.json").write_text(json.dumps(meta, indent=2))
    return Path(out)
