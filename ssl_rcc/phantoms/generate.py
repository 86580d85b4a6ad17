"""Generate synthetic renal cases and write them as a case table (``cases.csv``) with NIfTI volumes.

Each case has its own seed, spawned from the run's seed, so a run is deterministic whatever the number
of worker processes.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from kinetics.aif import write_aif_csv
from kinetics.io import output_directory, save_image

from kinetics.options import available_cpus
from .anatomy import Anatomy, build_anatomy
from .labels import sample_labels
from .render import DceSeries, render_ct, render_dce

__all__ = ["Case", "make_case", "write_case", "kinetics_fit_arguments", "tumour_ktrans_within_tolerance", "generate_phantoms", "CT_SPACING_MM"]

log = logging.getLogger("ssl_rcc")
CT_SPACING_MM = 1.5


@dataclass
class Case:
    """One synthetic case: ``labels`` (subtype, grade, invasion, site), ``anatomy``, ``ct`` (x, y, z, 4)
    int16 HU, ``affine`` of the CT grid, ``dce`` (None for unlabeled archives)."""

    case_id: str
    labels: dict
    anatomy: Anatomy
    ct: np.ndarray
    affine: np.ndarray
    dce: DceSeries | None


def make_case(seed: int | np.random.SeedSequence, labels: dict, *, case_id: str = "case", size: int = 96,
              with_dce: bool = True, motion_scale: float = 1.0) -> Case:
    """Draw and render one case from ``seed`` (int or SeedSequence) for the given labels."""
    rng = np.random.default_rng(seed)
    spacing = CT_SPACING_MM * 96 / size  # the field of view stays 144 mm
    anatomy = build_anatomy(rng, labels, shape=(size,) * 3, spacing_mm=spacing)
    ct = render_ct(rng, anatomy, labels["subtype"], labels["site"])
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(size - 1) / 2 * spacing
    dce = None
    if with_dce:
        dce = render_dce(rng, anatomy, labels["subtype"], labels["site"], ct_spacing_mm=spacing,
                         size=tuple(int(round(s * size / 96)) for s in (40, 40, 32)), motion_scale=motion_scale)
    return Case(case_id, labels, anatomy, ct, affine, dce)


def write_case(case: Case, root: Path, unlabeled: bool = False, masks: bool = True) -> dict:
    """Write one case under ``root/<case_id>/``; returns its row of the case table (relative paths)."""
    folder = root / case.case_id
    folder.mkdir()
    rel = lambda name: f"{case.case_id}/{name}"  # noqa: E731
    save_image(folder / "ct.nii.gz", case.ct, case.affine)
    row = {"case_id": case.case_id, "site": case.labels["site"], "ct": rel("ct.nii.gz")}
    if masks:
        save_image(folder / "kidney_mask.nii.gz", case.anatomy.kidney.astype(np.uint8), case.affine)
        save_image(folder / "tumor_mask.nii.gz", case.anatomy.tumour.astype(np.uint8), case.affine)
        row.update(kidney_mask=rel("kidney_mask.nii.gz"), tumor_mask=rel("tumor_mask.nii.gz"))
    if unlabeled:
        return row
    row.update(subtype=case.labels["subtype"], grade=case.labels["grade"], invasion=case.labels["invasion"],
               diameter_mm=round(case.anatomy.diameter_mm, 1))
    d = case.dce
    if d is not None:
        save_image(folder / "dce.nii.gz", d.signal, d.affine, dtype=np.int16)  # scaled: steps << noise
        np.savetxt(folder / "dce_times.txt", d.times_s, fmt="%.6g")
        write_aif_csv(folder / "aif.csv", d.times_s, d.cp_mM)
        save_image(folder / "t10.nii.gz", d.t10_s.astype(np.float32), d.affine)
        save_image(folder / "dce_tumor_mask.nii.gz", d.tumour.astype(np.uint8), d.affine)
        for name, values in d.truth.items():
            save_image(folder / f"{name}_true.nii.gz", values.astype(np.float32), d.affine)
        row.update(dce=rel("dce.nii.gz"), dce_times=rel("dce_times.txt"), aif=rel("aif.csv"), t10=rel("t10.nii.gz"),
                   tr_s=d.tr_s, fa_deg=d.fa_deg, r1=d.r1_per_mM_s, baseline_frames=d.baseline_frames,
                   ktrans_true=rel("ktrans_true.nii.gz"), ve_true=rel("ve_true.nii.gz"), vp_true=rel("vp_true.nii.gz"),
                   dce_tumor_mask=rel("dce_tumor_mask.nii.gz"))
    return row


def kinetics_fit_arguments(row: dict, root: str | os.PathLike) -> list[str]:
    """``python -m kinetics fit`` arguments for the DCE series of a case written under ``root`` (its
    ``row`` from :func:`write_case`): signal input with the case's T10 map, AIF and acquisition values,
    fitted in the tumour mask. Add ``--out``."""
    root = Path(root)
    return ["fit", "--dce", str(root / row["dce"]), "--times", str(root / row["dce_times"]), "--aif", str(root / row["aif"]),
            "--input", "signal", "--t10", str(root / row["t10"]), "--tr", str(row["tr_s"]), "--fa", str(row["fa_deg"]),
            "--baseline", str(row["baseline_frames"]), "--mask", str(root / row["dce_tumor_mask"])]


def tumour_ktrans_within_tolerance(row: dict, root: str | os.PathLike, maps: str | os.PathLike) -> float:
    """Fraction of a written case's tumour voxels whose Ktrans in ``maps/ktrans.nii.gz`` (a ``kinetics
    fit`` output) is within the OSIPI tolerance of the truth (a voxel without an estimate is a miss)."""
    import nibabel as nib

    from kinetics.tolerance import within_tolerance

    root, maps = Path(root), Path(maps)
    mask = np.asarray(nib.load(str(root / row["dce_tumor_mask"])).dataobj) > 0
    truth = np.asarray(nib.load(str(root / row["ktrans_true"])).dataobj)[mask]
    fitted = np.asarray(nib.load(str(maps / "ktrans.nii.gz")).dataobj)[mask]
    return float(np.mean(within_tolerance("ktrans", fitted, truth)))


def _single_threaded():
    """Worker initialiser: one BLAS thread per process, or the processes oversubscribe the cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _make_and_write(job):
    seed, labels, case_id, root, unlabeled, size, masks = job
    case = make_case(seed, labels, case_id=case_id, size=size, with_dce=not unlabeled)
    return write_case(case, Path(root), unlabeled, masks)


def generate_phantoms(out: str | os.PathLike, *, n: int, seed: int = 0, unlabeled: bool = False,
                      balanced: bool = False, preview: bool = False, workers: int | None = None, size: int = 96,
                      overwrite: bool = False, masks: bool | None = None, progress: bool = False) -> Path:
    """Write ``n`` synthetic cases and ``cases.csv`` to ``out``; returns the path of the table.

    Parameters
    ----------
    unlabeled : bool
        Volumes only (CT, no labels or DCE): the archive for self-supervised pretraining.
    masks : bool or None
        Write kidney and tumour masks (as a segmentation model would give them); None: for labelled
        cases only. An unlabeled archive with masks lets pretraining crop the lesions.
    balanced : bool
        Equal subtype frequencies instead of the surgical-series priors.
    preview : bool
        Also write ``preview.png``, a montage of a few cases per subtype.
    workers : int or None
        Processes; None uses every core available.
    size : int
        CT grid edge in voxels (96 at 1.5 mm by default; the field of view is kept at 144 mm).
    progress : bool
        A progress bar with the time left. Disk: about 8 MB a labelled case (CT, DCE series, maps),
        3.6 MB an unlabeled one (96^3 voxels, 4 phases).
    """
    from kinetics.options import number

    n = number(n, "n", "cases", integer=True, positive=True)
    seed = number(seed, "seed", integer=True, low=0)
    size = number(size, "size", "voxels", integer=True, low=32)
    master = np.random.SeedSequence(seed)
    label_seed, *case_seeds = master.spawn(n + 1)
    labels = sample_labels(np.random.default_rng(label_seed), n, balanced=balanced)
    width = max(4, len(str(n - 1)))
    n_workers = min(n, workers or available_cpus())
    with output_directory(out, overwrite=overwrite) as tmp:
        masks = (not unlabeled) if masks is None else bool(masks)
        jobs = [(s, lab, f"case_{i:0{width}d}", str(tmp), unlabeled, size, masks)
                for i, (s, lab) in enumerate(zip(case_seeds, labels))]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="phantoms", unit="case", leave=False)
        rows = []
        if n_workers > 1:
            with ProcessPoolExecutor(n_workers, mp_context=get_context("fork"), initializer=_single_threaded) as pool:
                for row in pool.map(_make_and_write, jobs, chunksize=1):
                    rows.append(row)
                    bar is not None and bar.update()
        else:
            for job in jobs:
                rows.append(_make_and_write(job))
                bar is not None and bar.update()
        if bar is not None:
            bar.close()
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "cases.csv", index=False)
        (tmp / "phantoms.json").write_text(json.dumps(
            {"n": n, "seed": seed, "unlabeled": bool(unlabeled), "masks": masks, "balanced": bool(balanced),
             "size": size}, indent=2))
        if preview and not unlabeled:
            from .preview import preview_montage

            preview_montage(tmp, table, tmp / "preview.png")
    log.info("wrote %d cases to %s", n, out)
    return Path(out) / "cases.csv"
