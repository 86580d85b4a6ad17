"""The fitting engine: planted truth, failure handling, chunking and argument errors."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kinetics import KineticsInputError
from kinetics.aif import plasma_aif
from kinetics.fit import fit_curves, fit_image
from kinetics.models import extended_tofts, patlak as patlak_model, two_compartment_exchange, two_compartment_filtration
from kinetics.status import FIT_STATUS
from kinetics.tolerance import within_tolerance

from forking import in_a_process_that_can_fork

ROOT = Path(__file__).resolve().parents[2]

T = np.arange(60) * 5.0
CP = plasma_aif("parker", T, delay_s=25.0)


def planted(rng, n=400, noise_mM=0.01):
    truth = {"ktrans": rng.uniform(0.02, 0.4, n), "ve": rng.uniform(0.1, 0.5, n), "vp": rng.uniform(0.0, 0.08, n)}
    conc = extended_tofts(T, CP, truth["ktrans"], truth["ve"], truth["vp"])
    return truth, conc + rng.normal(0.0, noise_mM, conc.shape)


@pytest.mark.parametrize("method", ["llsq", "nlls"])
def test_recovers_planted_extended_tofts(rng, method):
    truth, conc = planted(rng)
    res = fit_curves(conc, T, CP, model="extended_tofts", method=method)
    ok = within_tolerance("ktrans", res.params["ktrans"], truth["ktrans"])
    assert ok.mean() >= 0.95
    assert res.fit_ok.mean() >= 0.95
    np.testing.assert_allclose(res.params["kep"], res.params["ktrans"] / res.params["ve"])
    assert res.units["ktrans"] == "/min" and res.units["kep"] == "/min"
    assert np.nanmedian(res.rmse) == pytest.approx(0.01, rel=0.2)


def test_noiseless_fit_is_exact():
    truth = {"ktrans": np.array([0.05, 0.3]), "ve": np.array([0.2, 0.4]), "vp": np.array([0.0, 0.05])}
    conc = extended_tofts(T, CP, truth["ktrans"], truth["ve"], truth["vp"])
    res = fit_curves(conc, T, CP, model="extended_tofts")
    for name in truth:
        np.testing.assert_allclose(res.params[name], truth[name], atol=1e-5)
    assert np.all(res.r2 > 0.999999)


def test_nonlinear_is_no_worse_than_linear_on_noisy_data(rng):
    truth, conc = planted(rng, noise_mM=0.03)
    err = {m: np.nanmedian(np.abs(fit_curves(conc, T, CP, method=m).params["ktrans"] - truth["ktrans"])) for m in ("llsq", "nlls")}
    assert err["nlls"] <= err["llsq"] * 1.05


def test_bad_voxels_give_nan_not_ok_and_their_reason(rng):
    truth, conc = planted(rng, n=7)
    conc[0, 5:] = np.nan  # most samples missing
    conc[1] = 0.0  # flat
    conc[2] = rng.normal(0.0, 0.01, T.size)  # noise only: not enhancing
    conc[3] = 0.2  # flat and non-zero
    conc[6, 10] = np.nan  # one sample missing: fitted without it
    res = fit_curves(conc, T, CP)
    assert res.fit_ok.tolist() == [False, False, False, False, True, True, True]
    assert [FIT_STATUS[c] for c in res.fit_status] == ["input_not_finite"] + ["not_enhancing"] * 3 + ["ok"] * 3
    assert res.frames_excluded.tolist() == [0] * 6 + [1]
    for values in res.params.values():
        assert np.all(np.isnan(values[:4])) and np.all(np.isfinite(values[4:]))


@pytest.mark.parametrize("method", ["llsq", "nlls"])
def test_a_voxel_on_a_bound_keeps_its_estimates_with_the_flag(method):
    """A curve whose best fit needs ve > 1 ends on the bound: its parameters stay numbers, ve at 1, and its
    status says at_bound (it used to lose every parameter)."""
    conc = extended_tofts(T, CP, np.array([0.05, 0.2]), np.array([2.5, 0.3]), np.array([0.02, 0.02]))
    res = fit_curves(conc, T, CP, method=method)
    assert res.fit_ok.tolist() == [False, True]
    assert [FIT_STATUS[c] for c in res.fit_status] == ["at_bound", "ok"]
    assert res.params["ve"][0] == pytest.approx(1.0) and np.isfinite(res.params["ktrans"][0])
    assert np.isfinite(res.rmse[0]) and res.at_bound == {"ktrans": 0, "ve": 1, "vp": 0}
    keep = fit_curves(conc, T, CP, method=method, failed="keep")
    np.testing.assert_allclose(keep.params["ve"], res.params["ve"])


def test_linear_extended_tofts_puts_a_negative_vp_on_zero(rng):
    """Tissue with no plasma volume: the free linear solve gives vp below 0 for some voxels, where the
    constrained optimum is the Tofts fit with vp = 0 (they used to come back NaN)."""
    n = 400
    kt, ve = rng.uniform(0.02, 0.4, n), rng.uniform(0.1, 0.5, n)
    conc = extended_tofts(T, CP, kt, ve, np.zeros(n)) + rng.normal(0.0, 1e-4, (n, T.size))
    res = fit_curves(conc, T, CP, model="extended_tofts", method="llsq")
    assert np.all(res.fit_status == 1)
    assert np.sum(res.params["vp"] == 0.0) >= 10 and np.all(res.params["vp"] >= 0)
    assert np.all(within_tolerance("ktrans", res.params["ktrans"], kt))
    assert np.all(np.abs(res.params["ve"] - ve) <= 0.05)
    tofts = fit_curves(conc, T, CP, model="tofts", method="llsq")  # the same numbers as the reduced model
    zero = res.params["vp"] == 0.0
    np.testing.assert_allclose(res.params["ktrans"][zero], tofts.params["ktrans"][zero], rtol=1e-9)


def test_linear_fit_below_a_lower_bound_is_not_ok(rng):
    conc = -patlak_model(T, CP, np.array([0.05]), np.array([0.05])) + rng.normal(0, 1e-4, (1, T.size))
    conc = np.vstack([conc, patlak_model(T, CP, np.array([0.05]), np.array([0.05]))])
    res = fit_curves(conc, T, CP, model="patlak", method="llsq", min_enhancement_z=-np.inf, failed="keep")
    # the unbounded linear solve gives Ktrans < 0: the voxel is kept on the bound, and says so
    assert res.params["ktrans"][0] == 0.0 and res.fit_ok.tolist() == [False, True]
    assert [FIT_STATUS[c] for c in res.fit_status] == ["at_bound", "ok"] and res.at_bound["ktrans"] == 1


def test_two_compartment_exchange_derived_values_have_the_right_units():
    fp, ps, ve, vp = np.array([20.0, 60.0]), np.array([0.6, 0.1]), np.array([0.2, 0.3]), np.array([0.05, 0.1])
    conc = two_compartment_exchange(T, CP, fp, ps, ve, vp)
    res = fit_curves(conc, T, CP, model="2cxm")
    e = ps / (fp / 100 + ps)  # Fp in mL/100mL/min is fp/100 per minute
    np.testing.assert_allclose(res.params["e"], e, rtol=1e-3)
    np.testing.assert_allclose(res.params["ktrans"], e * fp / 100, rtol=1e-3)
    assert res.params["ktrans"][0] == pytest.approx(0.15, rel=1e-3)


def test_fit_image_with_a_per_voxel_aif_and_a_mask(rng):
    truth, conc = planted(rng, n=6)
    aifs = np.stack([CP * s for s in rng.uniform(0.8, 1.2, 6)]).reshape(2, 3, T.size)
    mask = np.array([[True, False, True], [False, True, True]])
    res = fit_image(conc.reshape(2, 3, T.size), T, aifs, mask=mask)
    expected = fit_curves(conc[mask.ravel()], T, aifs.reshape(6, -1)[mask.ravel()])
    np.testing.assert_allclose(res.params["ktrans"][mask], expected.params["ktrans"])


def test_chunks_do_not_change_the_result(rng):
    truth, conc = planted(rng, n=300)
    whole = fit_curves(conc, T, CP, chunk_size=10_000)
    chunked = fit_curves(conc.astype(np.float32), T, CP, chunk_size=7)
    np.testing.assert_allclose(chunked.params["ktrans"], whole.params["ktrans"], rtol=1e-4)


def test_fit_image_keeps_the_shape_and_masks(rng):
    truth, conc = planted(rng, n=24)
    image = conc.reshape(2, 3, 4, T.size)
    mask = np.zeros((2, 3, 4), bool)
    mask[0] = True
    res = fit_image(image, T, CP, mask=mask)
    assert res.params["ktrans"].shape == (2, 3, 4)
    assert np.all(np.isnan(res.params["ktrans"][1])) and not res.fit_ok[1].any()
    np.testing.assert_allclose(res.params["ktrans"][0].ravel(), fit_curves(conc[:12], T, CP).params["ktrans"])


def test_renal_filtration_model_recovers_flows(rng):
    truth = dict(fp=np.array([220.0, 150.0]), vp=np.array([0.25, 0.2]), ft=np.array([30.0, 15.0]), tt=np.array([120.0, 90.0]))
    t = np.arange(0, 300, 2.0)
    cp = plasma_aif("parker", t, delay_s=10.0)
    conc = two_compartment_filtration(t, cp, *truth.values()) + rng.normal(0, 0.005, (2, t.size))
    res = fit_curves(conc, t, cp, model="2cfm")
    np.testing.assert_allclose(res.params["ft"], truth["ft"], rtol=0.1)
    np.testing.assert_allclose(res.params["fp"], truth["fp"], rtol=0.15)
    np.testing.assert_allclose(res.params["ff"], truth["ft"] / truth["fp"], rtol=0.2)


def test_bad_arguments_raise_one_clear_error(rng):
    truth, conc = planted(rng, n=3)
    with pytest.raises(KineticsInputError, match="unknown model 'toft'.*extended_tofts"):
        fit_curves(conc, T, CP, model="toft")
    with pytest.raises(KineticsInputError, match="unknown method"):
        fit_curves(conc, T, CP, method="bayes")
    with pytest.raises(KineticsInputError, match="must increase"):
        fit_curves(conc, T[::-1], CP)
    with pytest.raises(KineticsInputError, match="not finite"):
        fit_curves(conc, np.where(T == 10, np.nan, T), CP)
    with pytest.raises(KineticsInputError, match="59 AIF samples for 60 frames"):
        fit_curves(conc, T, CP[:-1])
    with pytest.raises(KineticsInputError, match=r"expected \(n_voxels, 60\)"):
        fit_curves(conc[:, :-1], T, CP)
    with pytest.raises(KineticsInputError, match="policy"):
        fit_curves(conc, T, CP, failed="zero")


@in_a_process_that_can_fork
def test_forked_workers_give_the_serial_result(rng, monkeypatch):
    """Worker processes (forked, writing into a shared mapping) return exactly the serial maps."""
    from kinetics import _pool as pool

    truth, conc = planted(rng, n=500)
    conc[3, 5:] = np.nan  # no estimate
    conc[4, 5] = np.nan  # fitted without one frame
    serial = fit_curves(conc, T, CP, chunk_size=64, workers=1)
    monkeypatch.setattr(pool, "MIN_VOXELS_FOR_PROCESSES", 0)
    assert pool.use_processes(2, conc.shape[0])
    forked = fit_curves(conc, T, CP, chunk_size=64, workers=2)
    for name in serial.params:
        np.testing.assert_array_equal(forked.params[name], serial.params[name])
    np.testing.assert_array_equal(forked.rmse, serial.rmse)
    np.testing.assert_array_equal(forked.fit_ok, serial.fit_ok)
    np.testing.assert_array_equal(forked.fit_status, serial.fit_status)
    np.testing.assert_array_equal(forked.frames_excluded, serial.frames_excluded)
    assert not forked.fit_ok[3] and forked.frames_excluded[4] == 1


@in_a_process_that_can_fork
def test_worker_errors_reach_the_caller_and_stop_the_others(tmp_path):
    """An error in a forked child stops every worker after its current chunk, and reaches the caller
    even when its message is far larger than a pipe's buffer."""
    from kinetics import _pool as pool

    done = pool.shared_zeros((200,), np.int64)
    parent = os.getpid()

    def job(chunk):
        done[chunk] = 1
        if os.getpid() != parent:
            raise ValueError("chunk %d is bad " % chunk + "x" * 200_000)
        time.sleep(0.01)

    with pytest.raises(ValueError, match="is bad"):
        pool.for_each_chunk(job, list(range(200)), 2, processes=True)
    assert done.sum() < 50  # the other worker stopped soon after the first error


@in_a_process_that_can_fork
def test_a_workers_error_carries_its_traceback_and_a_dead_worker_is_named():
    from concurrent.futures.process import BrokenProcessPool

    from kinetics import _pool as pool

    parent = os.getpid()

    def failing_fit(chunk):
        if os.getpid() != parent and chunk == 7:
            raise ZeroDivisionError("chunk 7")

    with pytest.raises(ZeroDivisionError, match="chunk 7") as caught:
        pool.for_each_chunk(failing_fit, list(range(40)), 2, processes=True)
    assert "in failing_fit" in str(caught.value.__cause__)  # the worker's own traceback

    def dying_fit(chunk):
        if os.getpid() != parent and chunk == 3:
            os._exit(9)  # as a worker killed for memory would end

    with pytest.raises(RuntimeError, match="a worker process ended abruptly") as caught:
        pool.for_each_chunk(dying_fit, list(range(40)), 2, processes=True)
    assert isinstance(caught.value.__cause__, BrokenProcessPool)


def test_many_workers_with_large_errors_do_not_block_on_the_error_pipe():
    """Each failing child writes its error (up to 16 KiB) into one pipe of 64 KiB; the parent reads
    while it waits, so eight of them at once still end with the error raised, not a hang (in a fresh
    process, which may fork)."""
    script = (
        "import time\n"
        "from kinetics import _pool as pool\n"
        "def job(chunk):\n"
        "    time.sleep(0.05)\n"
        "    raise ValueError('is bad ' + 'x' * 15000)\n"
        "try:\n"
        "    pool.for_each_chunk(job, list(range(100)), 8, processes=True)\n"
        "except ValueError as err:\n"
        "    print('raised', str(err)[:6])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "raised is bad" in done.stdout, done.stderr


@in_a_process_that_can_fork
def test_forked_workers_do_all_the_chunks_and_leave_this_process_as_it_was():
    """With processes, every chunk runs in a child (whose allocator settings die with it), and this
    process's BLAS thread count is back to what it was afterwards."""
    from threadpoolctl import threadpool_info

    from kinetics import _pool as pool

    where = pool.shared_zeros((40,), np.int64)
    before = [lib["num_threads"] for lib in threadpool_info()]

    def job(chunk):
        where[chunk] = os.getpid()

    pool.for_each_chunk(job, list(range(40)), 2, processes=True)
    assert np.all(where > 0) and not np.any(where == os.getpid())
    assert [lib["num_threads"] for lib in threadpool_info()] == before


def test_enhancement_shortcut_gives_the_full_answer(rng):
    """Given the sums of squares, the second differences are skipped where a bound already decides;
    on strong, weak, spiked, drifting and pure-noise curves the answer is the full test's."""
    from kinetics._block import _enhancing

    n = 3000
    ktrans = np.concatenate([rng.uniform(0.05, 0.5, n), rng.uniform(0.0, 0.01, n), np.zeros(n)])
    curves = np.ascontiguousarray(extended_tofts(T, CP, ktrans, np.full(3 * n, 0.3), np.zeros(3 * n)).T)
    curves += rng.normal(0.0, 0.02, curves.shape)
    curves[45, ::7] += 0.6  # spikes
    curves[:, ::11] += np.linspace(-0.1, 0.1, T.size)[:, None]  # drifts
    sst = np.sum((curves - curves.mean(0)) ** 2, axis=0)
    full = _enhancing(curves, CP, 3.0)
    assert 0.2 < full.mean() < 0.9  # both answers occur
    np.testing.assert_array_equal(_enhancing(curves, CP, 3.0, sst), full)
    m = 3 * n // 2  # mostly strong curves: the shortcut decides most, the rest is gathered
    np.testing.assert_array_equal(_enhancing(curves[:, :m].copy(), CP, 3.0, sst[:m]), full[:m])
    # a negative z (accept below zero) turns the bound around: the full test runs
    np.testing.assert_array_equal(_enhancing(curves, CP, -1.0, sst), _enhancing(curves, CP, -1.0))


def test_enhancement_test_survives_an_outlying_frame(rng):
    """Noise comes from the mean absolute second difference: a single spike (a motion artefact)
    barely raises it, so a weakly enhancing curve with one spike still counts as enhancing, and
    noise alone does not."""
    from kinetics._block import _enhancing

    n = 2000
    weak = np.ascontiguousarray(extended_tofts(T, CP, np.full(n, 0.01), np.full(n, 0.3), np.zeros(n)).T)
    weak += rng.normal(0.0, 0.02, weak.shape)
    spiked = weak.copy()
    spiked[45] += 0.6  # 30 sigma, after the AIF peak
    noise = rng.normal(0.0, 0.02, weak.shape)
    rate = {name: _enhancing(x, CP, 3.0).mean() for name, x in [("weak", weak), ("spiked", spiked), ("noise", noise)]}
    assert rate["weak"] > 0.9 and rate["spiked"] > 0.9 and rate["noise"] < 0.01


def test_a_voxel_without_washout_stops_at_the_kep_floor():
    """Data with no washout (Patlak, kep = 0) drive kep down; the separable fit stops at its floor
    within a few iterations, marked no_washout, and the voxel is flagged with ve on its upper bound,
    whether Ktrans is large or tiny (where ve computed at the floor would look physical)."""
    from kinetics._separable import fit_tofts_separable

    conc = patlak_model(T, CP, np.array([0.1, 1e-4]), np.array([0.03, 0.03]))
    fit = fit_tofts_separable(T, conc, CP, np.array([0.01, 0.01]), with_vp=True, max_iter=12)
    kep = fit.ktrans / fit.ve / 60.0
    np.testing.assert_allclose(kep, 1e-3 / (T[-1] - T[0]))
    assert fit.no_washout.all() and fit.ve[1] < 1.0
    res = fit_curves(conc, T, CP, model="extended_tofts", failed="keep")
    assert not res.fit_ok.any()
    np.testing.assert_allclose(res.params["ve"], 1.0)


def test_no_washout_with_a_negative_vp_takes_the_tofts_refit_not_the_bounded_fit(monkeypatch):
    from kinetics import _block as block

    def no_detour(*args, **kwargs):
        raise AssertionError("Levenberg-Marquardt was called")

    monkeypatch.setattr(block, "levenberg_marquardt", no_detour)
    conc = patlak_model(T, CP, np.array([0.1]), np.array([0.0])) - 0.01 * CP
    res = fit_curves(conc, T, CP, model="extended_tofts", failed="keep")
    assert not res.fit_ok[0] and res.params["vp"][0] == 0.0


def test_noiseless_extended_tofts_is_recovered_to_high_precision():
    """A digital reference object is exact: the fit must not stop early on it."""
    rng = np.random.default_rng(3)
    truth = {"ktrans": rng.uniform(0.02, 0.5, 500), "ve": rng.uniform(0.1, 0.6, 500), "vp": rng.uniform(0.0, 0.1, 500)}
    conc = extended_tofts(T, CP, truth["ktrans"], truth["ve"], truth["vp"])
    res = fit_curves(conc, T, CP, model="extended_tofts")
    assert res.fit_ok.all()
    np.testing.assert_allclose(res.params["ktrans"], truth["ktrans"], rtol=1e-7)
    np.testing.assert_allclose(res.params["ve"], truth["ve"], rtol=1e-7)
    np.testing.assert_allclose(res.params["vp"], truth["vp"], atol=1e-8)
    assert np.all(res.rmse <= 1e-8 * np.abs(conc).max())


def test_a_filtration_above_the_plasma_flow_is_implausible_not_ok():
    """2CFM: a curve best fitted with FT above Fp (a filtration fraction above 1) is flagged, not passed
    as ok (it used to be fit_ok = 1, GFR 233 mL/min against an isotope 3)."""
    conc = two_compartment_filtration(T, CP, np.array([50.0, 200.0]), np.array([0.2, 0.25]), np.array([80.0, 30.0]),
                                      np.array([100.0, 120.0]))
    res = fit_curves(conc, T, CP, model="2cfm")
    assert [FIT_STATUS[c] for c in res.fit_status] == ["implausible", "ok"]
    assert np.isnan(res.params["ft"][0]) and res.params["ft"][1] == pytest.approx(30.0, rel=1e-3)
    kept = fit_curves(conc, T, CP, model="2cfm", failed="keep")
    assert kept.params["ft"][0] > kept.params["fp"][0]


def test_frames_that_are_not_finite_are_left_out_not_the_voxel(rng):
    """A saturated bolus peak converts to NaN frames: the voxel is fitted on the frames left (nlls), as
    long as half of them are; it used to be lost whole. Fewer frames left: input_not_finite."""
    truth, conc = planted(rng)
    peak = int(np.argmax(CP))
    gapped = conc.copy()
    gapped[:, peak:peak + 6] = np.nan
    gapped[:10, :40] = np.nan  # two thirds of the series missing
    res, full = fit_curves(gapped, T, CP), fit_curves(conc, T, CP)
    assert [FIT_STATUS[c] for c in res.fit_status[:10]] == ["input_not_finite"] * 10
    assert np.all(res.frames_excluded[10:] == 6) and np.all(res.frames_excluded[:10] == 0)
    ok = res.fit_status == 1
    assert ok[10:].mean() >= 0.95
    # of the 390 gapped curves with enough frames left; a curve without an estimate counts as a miss
    assert within_tolerance("ktrans", res.params["ktrans"][10:], truth["ktrans"][10:]).mean() >= 0.95
    assert np.nanmedian(res.rmse[ok]) == pytest.approx(np.nanmedian(full.rmse), rel=0.1)  # over the frames kept
    # a model without an exact Jacobian, noise-free: exact without the frames
    flows = two_compartment_filtration(T, CP, np.full(3, 200.0), np.full(3, 0.25), np.full(3, 30.0), np.full(3, 120.0))
    flows[:, peak:peak + 3] = np.nan
    np.testing.assert_allclose(fit_curves(flows, T, CP, model="2cfm").params["ft"], 30.0, rtol=1e-3)
    assert np.all(fit_curves(gapped, T, CP, method="llsq").fit_status == 3)  # the linear fit needs every frame


def test_a_curve_gets_the_same_2cfm_fit_alone_or_with_others(rng):
    """Each curve's fit is its own: the same answer whether it is fitted alone or in a batch."""
    n = 60
    flows = (rng.uniform(100, 300, n), rng.uniform(0.15, 0.35, n), rng.uniform(5, 40, n), rng.uniform(60, 240, n))
    conc = two_compartment_filtration(T, CP, *flows) + rng.normal(0, 0.02, (n, T.size))
    together = fit_curves(conc, T, CP, model="2cfm")
    for i in range(0, n, 6):
        alone = fit_curves(conc[i:i + 1], T, CP, model="2cfm")
        for name in ("fp", "vp", "ft", "tt"):
            np.testing.assert_allclose(alone.params[name][0], together.params[name][i], rtol=1e-6, equal_nan=True)
        assert alone.fit_status[0] == together.fit_status[i]


def test_progress_is_reported_and_changes_nothing(rng, capsys):
    from kinetics._pool import for_each_chunk

    seen = []
    for_each_chunk(lambda chunk: None, list(range(5)), 1, False, seen.append)
    assert seen == [1, 2, 3, 4, 5]
    seen.clear()
    for_each_chunk(lambda chunk: None, list(range(5)), 2, False, seen.append)  # threads
    assert sorted(seen) == [1, 2, 3, 4, 5]
    truth, conc = planted(rng, n=300)
    quiet, shown = fit_curves(conc, T, CP, chunk_size=64), fit_curves(conc, T, CP, chunk_size=64, progress=True)
    np.testing.assert_array_equal(quiet.params["ktrans"], shown.params["ktrans"])
    assert "fitting extended_tofts" in capsys.readouterr().err


def test_engines_give_the_same_fit_and_say_which_ran(rng):
    """Serial and threads give the same maps (processes: the next test); CurveFit.engine says which
    ran and why; an unknown engine is refused."""
    truth, conc = planted(rng, n=300)
    serial = fit_curves(conc, T, CP, chunk_size=64, engine="serial")
    threads = fit_curves(conc, T, CP, chunk_size=64, workers=2, engine="threads")
    assert serial.engine.startswith("serial") and threads.engine.startswith("threads")
    np.testing.assert_array_equal(serial.params["ktrans"], threads.params["ktrans"])
    auto = fit_curves(conc, T, CP, chunk_size=64, workers=2)
    assert auto.engine == "threads (300 voxels: starting processes would cost more than it saves)"
    with pytest.raises(KineticsInputError, match="engine: unknown engine"):
        fit_curves(conc, T, CP, engine="gpu")


@in_a_process_that_can_fork
def test_forked_processes_give_the_serial_fit(rng):
    truth, conc = planted(rng, n=300)
    serial = fit_curves(conc, T, CP, chunk_size=64, engine="serial")
    forked = fit_curves(conc, T, CP, chunk_size=64, workers=2, engine="processes")
    assert forked.engine.startswith("processes")
    np.testing.assert_array_equal(serial.params["ktrans"], forked.params["ktrans"])


def test_fork_is_refused_while_openmp_blas_threads_run(monkeypatch):
    """With a BLAS on OpenMP (MKL), threads besides this one are counted from the OS, not only
    Python's: a forked worker calling that BLAS could hang on their locks."""
    from kinetics import _pool as pool

    monkeypatch.setattr(pool, "_blas_on_openmp", lambda: "gnu")
    monkeypatch.setattr(pool, "_foreign_threads", lambda: 2)
    monkeypatch.setattr(pool.threading, "active_count", lambda: 1)  # whatever threads earlier tests left
    monkeypatch.setattr(pool.multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(pool.sys, "platform", "linux")
    assert "BLAS runs on OpenMP (gnu) and 2 other thread(s)" in pool.fork_blocker()
    assert pool.choose_engine("auto", 2, 10**6)[0] == "threads"
    with pytest.raises(KineticsInputError, match="processes cannot be used here"):
        pool.choose_engine("processes", 2, 10**6)



def test_a_delay_never_leaves_its_bounds_and_counts_at_its_bound():
    """The grid of trial delays is clipped to the bounds; a delay on the upper bound is counted there."""
    late = plasma_aif("parker", T, delay_s=37.0)  # the tissue's input 12 s after the AIF given
    conc = extended_tofts(T, late, np.array([0.2]), np.array([0.3]), np.array([0.02]))
    res = fit_curves(conc, T, CP, fit_delay=True, delay_step_s=3.0)
    assert FIT_STATUS[res.fit_status[0]] == "at_bound"
    assert res.at_bound["delay"] == 1 and res.params["delay"][0] == 10.0
