"""Fit a kinetic model to every voxel of an (n_voxels, n_times) concentration matrix at once.

One engine, ``fit_curves``, serves every model in :data:`kinetics.registry.MODELS`: a linear fit
(closed form, optionally over a grid of arterial delays) gives each voxel its parameters or the seed of
a bounded Levenberg-Marquardt iteration run on all voxels together. Voxels are processed in chunks so
memory stays bounded. Failures are data: they come back as NaN with ``fit_ok=False``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .convolution import delay_input
from .errors import KineticsInputError
from .options import available_cpus
from .optimize import levenberg_marquardt
from .models import SECONDS_PER_MINUTE
from .registry import ModelSpec, get_model
from .separable import fit_tofts_separable

__all__ = ["CurveFit", "fit_curves", "fit_image", "METHODS"]

METHODS = ("llsq", "nlls")
_SEPARABLE = {"tofts": False, "extended_tofts": True}  # model -> has vp


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
    r2 : (n_voxels,) ndarray
    fit_ok : (n_voxels,) bool ndarray
        False where the input was not finite, flat or not enhancing, or the fit did not converge,
        gave a non-finite value or ended on an upper bound.
    """

    model: str
    params: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    rmse: np.ndarray = None
    r2: np.ndarray = None
    fit_ok: np.ndarray = None


def check_method(method):
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
    chunk_size: int = 4096,
    min_enhancement_z: float = 3.0,
    failed: str = "nan",
    workers: int | None = None,
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
    chunk_size : int
        Voxels per chunk; working memory grows as ``workers * chunk_size * n_times``.
    min_enhancement_z : float
        A voxel counts as enhancing when its mean concentration after the AIF peak exceeds this
        many standard errors (noise estimated from frame-to-frame differences). Others get NaN.
    failed : {"nan", "keep"}
        - ``"nan"``: parameters of voxels with ``fit_ok=False`` are set to NaN.
        - ``"keep"``: their last estimates are kept, for inspection; ``fit_ok`` still says False.
    workers : int or None
        Threads fitting chunks at once; None uses every core available to the process. Results do
        not depend on it.

    Returns
    -------
    CurveFit
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
    out = {name: np.full(n, np.nan) for name in names}
    rmse, r2, ok = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    size = max(int(chunk_size), 1)
    chunks = [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def run(rows):
        c = np.asarray(conc_mM[rows], dtype=float)
        cp_rows = cp if cp.ndim == 1 else cp[rows]
        return _fit_chunk(spec, t, c, cp_rows, method, fit_delay, delay_bounds_s, delay_step_s, max_iter, min_enhancement_z)

    n_workers = min(len(chunks), available_cpus() if workers is None else max(int(workers), 1))
    if n_workers > 1:  # numpy releases the GIL inside its loops, so chunks run in parallel threads
        with ThreadPoolExecutor(n_workers) as pool:
            results = list(pool.map(run, chunks))
    else:
        results = [run(rows) for rows in chunks]
    for rows, (p, q) in zip(chunks, results):
        for j, name in enumerate(names):
            out[name][rows] = p[:, j]
        rmse[rows], r2[rows], ok[rows] = q
    if failed == "nan":
        for name in names:
            out[name][~ok] = np.nan
    params = {name: out[name] for name in spec.params}
    params.update(spec.derived(params))
    units = dict(zip(spec.params, spec.units)) | spec.derived_units
    if fit_delay:
        params["delay"] = out["delay"]
        units["delay"] = "s"
    return CurveFit(spec.name, params, units, rmse, r2, ok)


def _enhancing(t, c, cp, z):
    """True where the mean concentration after the AIF peak is significantly above zero.

    The noise standard deviation comes from the mean absolute second difference over time
    (``E|d2| = sqrt(6) sigma sqrt(2/pi)`` for white noise), which a smooth curve barely raises.
    """
    peak = np.argmax(np.atleast_2d(cp), axis=-1)[..., None]
    post = np.arange(t.size) >= peak
    n_post = np.maximum(post.sum(-1), 1)
    if post.shape[0] == 1:  # one input for all voxels: a matrix-vector product
        mean_post = c @ post[0].astype(float) / n_post
    else:
        mean_post = np.einsum("ij,ij->i", c, post) / n_post
    d2 = c[:, 2:] - c[:, 1:-1]  # second difference, in place on one temporary
    d2 -= c[:, 1:-1]
    d2 += c[:, :-2]
    np.abs(d2, out=d2)
    sd = d2.mean(-1) / (np.sqrt(6.0) * np.sqrt(2.0 / np.pi))
    return mean_post > z * sd / np.sqrt(n_post)


def _linear_with_delay(spec, t, c, cp, delays):
    """Linear fit at each trial delay; per voxel, the parameters and delay that fit best.

    "Best" is the least squared error of the model curve where the linear parameters are physical,
    and of the linear regression for voxels where they are not at any delay.
    """
    n, k = c.shape[0], len(spec.params)
    best = np.full((n, k + 1), np.nan)
    best_sse = np.full(n, np.inf)
    fallback_delay = np.zeros(n)
    fallback_sse = np.full(n, np.inf)
    for d in delays:  # a few dozen trial delays, each fitted for all voxels at once
        cpd = delay_input(t, cp, d)
        fit = spec.linear(t, c, cpd)
        lower = fit.sse < fallback_sse
        fallback_delay[lower], fallback_sse[lower] = d, fit.sse[lower]
        good = np.flatnonzero(np.all(np.isfinite(fit.params), axis=-1))
        if good.size == 0:
            continue
        model = spec.forward(t, cpd if cpd.ndim == 1 else cpd[good], *fit.params[good].T)
        sse = np.sum((c[good] - model) ** 2, axis=-1)
        better = good[sse < best_sse[good]]
        best[better, :k] = fit.params[better]
        best[better, k] = d
        best_sse[better] = sse[sse < best_sse[good]]
    never = ~np.isfinite(best_sse)
    best[never, k] = fallback_delay[never]
    return best


def _take(a, rows, n):
    """Rows of a per-voxel array (a shared (n_times,) input passes through); no copy when all are taken."""
    if a.ndim == 1 or rows.size == n:
        return a
    return a[rows]


def _fit_chunk(spec: ModelSpec, t, c, cp, method, fit_delay, delay_bounds, delay_step, max_iter, z):
    n, k = c.shape[0], len(spec.params)
    mean = c.mean(axis=-1, keepdims=True)
    deviation = c - mean
    sst = np.einsum("ij,ij->i", deviation, deviation)
    del deviation
    # NaN or inf anywhere makes sst non-finite; a flat curve makes it zero up to rounding
    valid = np.isfinite(sst) & (sst > t.size * (1e-12 * mean[:, 0]) ** 2)
    valid[valid] &= _enhancing(t, _take(c, np.flatnonzero(valid), n), _take(cp, np.flatnonzero(valid), n), z)
    lower = np.array(spec.lower + ((delay_bounds[0],) if fit_delay else ()))
    upper = np.array(spec.upper + ((delay_bounds[1],) if fit_delay else ()))
    p = np.full((n, len(lower)), np.nan)
    rows = np.flatnonzero(valid)
    cv = _take(c, rows, n)
    cpv = _take(cp, rows, n)
    if fit_delay:
        delays = np.arange(delay_bounds[0], delay_bounds[1] + delay_step / 2, delay_step)
        p[rows] = _linear_with_delay(spec, t, cv, cpv, delays)
    else:
        p[rows] = spec.linear(t, cv, cpv).params
    converged = np.zeros(n, dtype=bool)
    if method == "llsq":
        converged[rows] = np.all(np.isfinite(p[rows]), axis=-1)
    elif rows.size:
        seed = p[rows, :k]
        seed = np.where(np.isfinite(seed), seed, np.array(spec.initial))
        if fit_delay:  # the delay stays at its grid value; the input is shifted once per voxel
            delay = np.where(np.isfinite(p[rows, -1]), p[rows, -1], 0.0)
            cpv = delay_input(t, cpv, delay)

        p[rows, :k], converged[rows] = _nonlinear(spec, t, cv, cpv, seed, lower[:k], upper[:k], max_iter)
    # quality of the final parameters
    rmse, r2 = np.full(n, np.nan), np.full(n, np.nan)
    finite = converged & np.all(np.isfinite(p), axis=-1)
    fr = np.flatnonzero(finite)
    if fr.size:
        cpf = _take(cp, fr, n)
        q = p[fr]
        if fit_delay:
            cpf, q = delay_input(t, cpf, q[:, -1]), q[:, :-1]
        resid = _take(c, fr, n) - spec.forward(t, cpf, *q.T)
        sse = np.einsum("ij,ij->i", resid, resid)
        rmse[fr] = np.sqrt(sse / t.size)
        r2[fr] = 1.0 - sse / sst[fr]
    at_upper = np.any(p >= upper - 1e-6 * (np.abs(upper) + 1.0), axis=-1)
    below = np.any(p < lower - 1e-9 * (np.abs(lower) + 1.0), axis=-1)  # linear fits are unbounded
    ok = finite & ~at_upper & ~below & np.isfinite(rmse)
    return p, (rmse, r2, ok)


def _nonlinear(spec, t, c, cp, seed, lower, upper, max_iter):
    """Bounded nonlinear least squares from ``seed``: (params (n, k), converged (n,)).

    The Tofts family goes through variable projection first (fast, exact for interior optima);
    voxels it leaves outside the bounds or unconverged, and all other models, go through the
    bounded Levenberg-Marquardt iteration.
    """
    n = c.shape[0]
    params = np.array(seed, dtype=float)
    converged = np.zeros(n, dtype=bool)
    todo = np.arange(n)
    if spec.name in _SEPARABLE:
        kep0 = seed[:, 0] / seed[:, 1] / SECONDS_PER_MINUTE
        with_vp = _SEPARABLE[spec.name]
        sep = fit_tofts_separable(t, c, cp, kep0, with_vp=with_vp, max_iter=max_iter)
        estimate = np.stack([sep.ktrans, sep.ve, sep.vp][: len(spec.params)], axis=-1)
        if with_vp:  # a negative vp puts the bounded optimum on vp = 0: the Tofts model there
            on_zero = np.flatnonzero(sep.converged & (sep.vp < 0))
            if on_zero.size:
                kep_z = sep.ktrans[on_zero] / sep.ve[on_zero] / SECONDS_PER_MINUTE
                kep_z = np.where(np.isfinite(kep_z) & (kep_z > 0), kep_z, kep0[on_zero])
                z = fit_tofts_separable(t, c[on_zero], _take(cp, on_zero, n), kep_z, with_vp=False, max_iter=max_iter)
                estimate[on_zero] = np.stack([z.ktrans, z.ve, np.zeros(on_zero.size)], axis=-1)
                sep.converged[on_zero] = z.converged
        inside = sep.converged & np.all((estimate >= lower) & (estimate <= upper), axis=-1)
        # beyond an upper bound the bounded optimum lies on it, which flags the voxel (fit_ok = False)
        # whatever the other parameters: no need to iterate further
        beyond = sep.converged & ~inside & np.all(estimate >= lower, axis=-1)
        done = inside | beyond
        params[done] = np.clip(estimate[done], lower, upper)
        converged[done] = True
        todo = np.flatnonzero(~done)
    if todo.size:
        evaluate = spec.jacobian or spec.forward
        cp_todo = cp if cp.ndim == 1 else cp[todo]

        def curve(q, r):
            return evaluate(t, cp_todo if cp_todo.ndim == 1 else cp_todo[r], *q.T)

        res = levenberg_marquardt(curve, params[todo], c[todo], lower=lower, upper=upper, max_iter=max_iter)
        params[todo], converged[todo] = res.params, res.converged
    return params, converged


def fit_image(conc_mM, t_s, cp_mM, *, mask=None, **options) -> CurveFit:
    """Fit every voxel of a (x, y, z, t) concentration image; maps come back with the image's shape.

    Parameters
    ----------
    conc_mM : (..., n_times) ndarray, mM
    mask : None or (...) bool ndarray
        Voxels to fit; None fits every voxel. Voxels outside get NaN and ``fit_ok=False``.
    **options
        Passed to :func:`fit_curves`.

    Returns
    -------
    CurveFit
        With ``params``, ``rmse``, ``r2`` and ``fit_ok`` of shape ``conc_mM.shape[:-1]``.
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
        full = np.full(matrix.shape[0], fill, dtype=np.asarray(values).dtype)
        full[index] = values
        return full.reshape(spatial)

    result.params = {name: scatter(v, np.nan) for name, v in result.params.items()}
    result.rmse, result.r2 = scatter(result.rmse, np.nan), scatter(result.r2, np.nan)
    result.fit_ok = scatter(result.fit_ok, False)
    return result
