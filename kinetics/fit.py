"""Fit a kinetic model to every voxel of an (n_voxels, n_times) concentration matrix at once.

One engine, ``fit_curves``, serves every model in :data:`kinetics.registry.MODELS`: a linear fit
(closed form, optionally over a grid of arterial delays) gives each voxel its parameters or the seed of
a bounded Levenberg-Marquardt iteration run on all voxels together. Voxels are processed in chunks so
memory stays bounded. Failures are data: every voxel comes back with a ``fit_status`` code saying why it
has the estimate it has (NaN where it has none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ._block import BlockOptions, fit_block
from .convolution import to_time_major
from .errors import KineticsInputError
from .options import worker_count
from ._pool import choose_engine, for_each_chunk, shared_zeros
from .registry import get_model
from .status import AT_BOUND, IMPLAUSIBLE, OK, OUTSIDE, has_estimate

log = logging.getLogger("kinetics")

__all__ = ["CurveFit", "fit_curves", "fit_image", "METHODS", "CHUNK_SIZE"]

METHODS = ("llsq", "nlls")
# voxels per chunk by method: the linear fit is fastest on blocks that stay in cache; the nonlinear
# one iterates on shrinking subsets, whose fixed cost per iteration larger blocks share out
CHUNK_SIZE = {"llsq": 4096, "nlls": 16384}


@dataclass
class CurveFit:
    """Parameters and quality of a fit, one entry per voxel.

    Attributes
    ----------
    model : str
    params : dict of str to (n_voxels,) ndarray
        Model parameters, then derived ones (``kep``, ...), then ``delay`` (s) when it was fitted.
    units : dict of str to str
    rmse : (n_voxels,) ndarray, mM
        Of the model curve. For a linear fit of the Tofts family it comes from expanded sums, so
        on noise-free data it bottoms out near 1e-8 of the curve's scale instead of at zero.
    r2 : (n_voxels,) ndarray
    fit_ok : (n_voxels,) bool ndarray
        ``fit_status == ok``: False where the input was not finite, flat or not enhancing, or the fit
        did not converge, gave a non-finite value or ended on a bound.
    fit_status : (n_voxels,) uint8 ndarray
        Why each voxel has the estimate it has: a :mod:`kinetics.status` code (ok, at_bound,
        input_not_finite, not_enhancing, not_converged, estimate_not_finite, ...). ``at_bound``: a
        parameter on (within 1e-6 of) an upper bound, or one a linear fit put below a lower bound
        (moved onto it); a nonlinear estimate on a lower bound is a value (Ktrans or vp = 0), ``ok``.
    at_bound : dict of str to int
        Per model parameter, how many ``at_bound`` voxels have it on a bound.
    frames_excluded : (n_voxels,) int ndarray
        Frames left out of each voxel's fit because they were not finite (a saturated signal; nlls
        only, and only where at least half of the frames are left).
    engine : str
        The engine the chunks ran on and why (``"processes (200000 voxels on 2 cores)"``).
    """

    model: str
    params: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    rmse: np.ndarray = None
    r2: np.ndarray = None
    fit_ok: np.ndarray = None
    fit_status: np.ndarray = None
    at_bound: dict = field(default_factory=dict)
    frames_excluded: np.ndarray = None
    engine: str = ""


def check_method(method: str) -> None:
    """Raise unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise KineticsInputError(f"method: unknown method {method!r}; expected one of {list(METHODS)}.")


def _check_times(t_s):
    t = np.asarray(t_s, dtype=float)
    if t.ndim != 1 or t.size < 3:
        raise KineticsInputError(f"times: expected at least 3 frame times in a 1-D array, got shape {t.shape}.")
    if not np.all(np.isfinite(t)):
        raise KineticsInputError(f"times: {np.sum(~np.isfinite(t))} of {t.size} frame times are not finite.")
    if np.any(np.diff(t) <= 0):
        i = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise KineticsInputError(
            f"times: frame times must increase, but frame {i + 1} is at {t[i + 1]:g} s after {t[i]:g} s."
        )
    return t


def _check_aif(cp_mM, n_voxels, n_times):
    cp = np.asarray(cp_mM, dtype=float)
    if cp.shape[-1:] != (n_times,) or cp.ndim > 2:
        raise KineticsInputError(
            f"aif: {cp.shape[-1] if cp.ndim else 0} AIF samples for {n_times} frames; "
            "give the AIF on the frame times, as (n_times,) or (n_voxels, n_times)."
        )
    if cp.ndim == 2 and cp.shape[0] != n_voxels:
        raise KineticsInputError(f"aif: {cp.shape[0]} per-voxel AIFs for {n_voxels} voxels.")
    if not np.all(np.isfinite(cp)):
        raise KineticsInputError("aif: the AIF contains values that are not finite.")
    if not np.all(cp.max(axis=-1) > 0):
        raise KineticsInputError(
            "aif: the AIF is never above zero on the frame times; check its delay and the times' unit (s)."
        )
    return cp


def fit_curves(
    conc_mM,
    t_s,
    cp_mM,
    *,
    model: str = "extended_tofts",
    method: str = "nlls",
    fit_delay: bool = False,
    delay_bounds_s: tuple[float, float] = (-10.0, 10.0),
    delay_step_s: float = 0.5,
    max_iter: int = 100,
    chunk_size: int | None = None,
    min_enhancement_z: float = 3.0,
    failed: str = "nan",
    workers: int | None = None,
    engine: str = "auto",
    progress: bool = False,
) -> CurveFit:
    """Fit ``model`` to every tissue concentration curve.

    Parameters
    ----------
    conc_mM : (n_voxels, n_times) ndarray, mM
        Tissue concentration; any float dtype (chunks are converted to float64 one at a time).
    t_s : (n_times,) ndarray, s
        Frame times, increasing.
    cp_mM : (n_times,) or (n_voxels, n_times) ndarray, mM
        Plasma concentration (arterial input) on the frame times.
    model : str
        One of ``tofts``, ``extended_tofts``, ``patlak``, ``2cxm``, ``2cum``, ``2cfm``.
    method : {"nlls", "llsq"}
        - ``"llsq"``: the closed-form linear fit only (Murase; Flouri for the two-compartment models).
        - ``"nlls"``: bounded Levenberg-Marquardt on the model curve, seeded by the linear fit.
    fit_delay : bool
        Also estimate the arterial delay (s, positive when the tissue lags the AIF): the linear fit is
        run on a grid of delays ``delay_step_s`` apart within ``delay_bounds_s`` and the delay with the
        least squared error kept per voxel; ``nlls`` then fits the model at that delay. The delay's
        resolution is therefore ``delay_step_s``: a joint fit of a continuous delay lands on minima of
        the interpolated input that are no closer to the truth (seen on the OSIPI 2CXM data).
    max_iter : int
        Levenberg-Marquardt iterations.
    chunk_size : int or None
        Voxels per chunk; working memory grows as ``workers * chunk_size * n_times``. None takes
        :data:`CHUNK_SIZE` of the method (4096 for llsq, 16384 for nlls: the fastest on a 2-core
        machine with 60 frames).
    min_enhancement_z : float
        A voxel counts as enhancing when its mean concentration after the AIF peak exceeds this
        many standard errors (noise estimated from second differences over time). Others get NaN.
    failed : {"nan", "keep"}
        - ``"nan"``: parameters of voxels without an estimate (status other than ``ok`` and
          ``at_bound``) are set to NaN; an ``at_bound`` voxel keeps its parameters, the one on the
          bound at the bound.
        - ``"keep"``: every voxel's last estimates are kept (an ``at_bound`` one's on its bound), for
          inspection; ``fit_status`` says why each is not ``ok``.
    workers : int or None
        Cores fitting chunks at once; None uses every core available to the process. They are
        forked processes (see :mod:`kinetics._pool`) on Linux, from 50,000 voxels of a numpy array,
        when no other Python thread is running (not in Jupyter, for one); threads otherwise.
        Results do not depend on it.
    engine : {"auto", "processes", "threads", "serial"}
        How the chunks run (:func:`kinetics._pool.choose_engine`): ``auto`` forks processes where that
        is safe and worth it and uses threads otherwise; ``serial`` runs in this process alone (for
        debugging, or inside another parallel engine such as dask's). ``CurveFit.engine`` says which
        ran and why. Results do not depend on it.
    progress : bool
        Show a progress bar (voxels) with the time left.

    Returns
    -------
    CurveFit
        Its fitted parameters, ``rmse`` and ``r2`` are rows of one (k + 3, n_voxels) array, so
        keeping one of them keeps that array's memory.
    """
    spec = get_model(model)
    check_method(method)
    if failed not in ("nan", "keep"):
        raise KineticsInputError(f"failed: unknown policy {failed!r}; expected 'nan' or 'keep'.")
    t = _check_times(t_s)
    if np.ndim(conc_mM) != 2 or np.shape(conc_mM)[1] != t.size:
        raise KineticsInputError(
            f"concentration: expected (n_voxels, {t.size}) for {t.size} frame times, got {np.shape(conc_mM)}."
        )
    n = np.shape(conc_mM)[0]
    cp = _check_aif(cp_mM, n, t.size)
    names = spec.params + (("delay",) if fit_delay else ())
    size = max(int(CHUNK_SIZE[method] if chunk_size is None else chunk_size), 1)
    chunks = [slice(start, min(start + size, n)) for start in range(0, n, size)]
    options = BlockOptions(method, fit_delay, tuple(delay_bounds_s), float(delay_step_s), int(max_iter), float(min_enhancement_z))
    n_workers = worker_count(workers)
    engine_used, why = choose_engine(engine, n_workers, n, conc_mM)
    if engine_used != "serial" and len(chunks) < 2:
        engine_used, why = "serial", "one chunk"
    processes = engine_used == "processes"
    n_workers = 1 if engine_used == "serial" else n_workers
    log.debug("fitting %d voxels on %s (%s)", n, engine_used, why)
    # one row per output: parameters, rmse, r2, fit_status, frames excluded; filled chunk by chunk, by
    # whichever worker.
    # The maps returned are its rows: no copy, as fresh memory is slow to touch on virtual machines
    table = (shared_zeros if processes else np.empty)((len(names) + 4, n))

    def run(rows):  # each chunk as a time-major float64 block: one copy, transposed on the way
        ct = to_time_major(conc_mM[rows])
        cpt = cp if cp.ndim == 1 else to_time_major(cp[rows])
        p, quality = fit_block(spec, t, ct, cpt, options)
        table[: len(names), rows] = p.T
        table[len(names):, rows] = quality

    bar = None
    if progress:
        from tqdm.auto import tqdm

        # no monitor thread: a running thread makes later fits in this process refuse to fork
        tqdm.monitor_interval = 0
        bar = tqdm(total=n, desc=f"fitting {spec.name}", unit="voxel", unit_scale=True, leave=False)

    def advance(done_chunks):
        bar.n = min(done_chunks * size, n)
        bar.refresh()

    try:
        for_each_chunk(run, chunks, n_workers, processes, advance if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    out = dict(zip(names, table))
    rmse, r2 = table[-4], table[-3]
    status = table[-2].astype(np.uint8)
    excluded = np.where(has_estimate(status), table[-1], 0).astype(np.int32)  # of the voxels fitted
    if spec.implausible is not None:  # a physical constraint the box bounds cannot express
        status[has_estimate(status) & spec.implausible(out)] = IMPLAUSIBLE
    bounded = status == AT_BOUND
    bounds = zip(names, spec.lower + ((delay_bounds_s[0],) if fit_delay else ()),
                 spec.upper + ((delay_bounds_s[1],) if fit_delay else ()))
    at_bound = {name: int(np.sum(bounded & ((out[name] <= lo) | (out[name] >= hi)))) for name, lo, hi in bounds}
    if failed == "nan":
        without = ~has_estimate(status)
        for name in names:
            np.copyto(out[name], np.nan, where=without)
    params = {name: out[name] for name in spec.params}
    params.update(spec.derived(params))
    units = dict(zip(spec.params, spec.units)) | spec.derived_units
    if fit_delay:
        params["delay"] = out["delay"]
        units["delay"] = "s"
    return CurveFit(spec.name, params, units, rmse, r2, status == OK, status, at_bound, excluded,
                    f"{engine_used} ({why})")


def fit_image(conc_mM, t_s, cp_mM, *, mask=None, **options) -> CurveFit:
    """Fit every voxel of a (x, y, z, t) concentration image; maps come back with the image's shape.

    Parameters
    ----------
    conc_mM : (..., n_times) ndarray, mM
    mask : None or (...) bool ndarray
        Voxels to fit; None fits every voxel. Voxels outside get NaN, ``fit_ok=False`` and the
        status ``outside_mask``.
    **options
        Passed to :func:`fit_curves`.

    Returns
    -------
    CurveFit
        With ``params``, ``rmse``, ``r2``, ``fit_ok`` and ``fit_status`` of shape ``conc_mM.shape[:-1]``.
    """
    conc = np.asarray(conc_mM)
    spatial = conc.shape[:-1]
    if mask is None:
        mask = np.ones(spatial, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise KineticsInputError(f"mask: shape {mask.shape} does not match the image's {spatial}.")
    matrix = conc.reshape(-1, conc.shape[-1])  # a view for a contiguous image: no copy
    index = np.flatnonzero(mask.reshape(-1))
    everything = index.size == matrix.shape[0]
    cp = np.asarray(cp_mM, dtype=float)
    if cp.ndim > 1:  # one AIF per voxel, given on the image grid
        cp = cp.reshape(-1, cp.shape[-1])
        cp = cp if everything or cp.shape[0] != matrix.shape[0] else cp[index]
    result = fit_curves(matrix if everything else matrix[index], t_s, cp, **options)

    def scatter(values, fill):
        if everything:  # every voxel fitted: the result's rows, reshaped (fresh memory is slow to touch)
            return np.asarray(values).reshape(spatial)
        full = np.full(matrix.shape[0], fill, dtype=np.asarray(values).dtype)
        full[index] = values
        return full.reshape(spatial)

    result.params = {name: scatter(v, np.nan) for name, v in result.params.items()}
    result.rmse, result.r2 = scatter(result.rmse, np.nan), scatter(result.r2, np.nan)
    result.fit_ok = scatter(result.fit_ok, False)
    result.fit_status = scatter(result.fit_status, OUTSIDE)
    result.frames_excluded = scatter(result.frames_excluded, 0)
    return result
