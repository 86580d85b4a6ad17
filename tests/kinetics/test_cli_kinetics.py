"""The kinetics CLI end to end on a written DRO, and every bad input: one sentence, exit 2, nothing left."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kinetics.tolerance import within_tolerance
from kinetics.__main__ import main
from kinetics.aif import plasma_aif, write_aif_csv
from kinetics.dro import make_dro, write_dro
from kinetics.io import save_image
from kinetics.models import two_compartment_filtration
from kinetics.status import STATUS_CODE


@pytest.fixture(scope="module")
def dro_dir(tmp_path_factory):
    return write_dro(make_dro(snr=80.0, seed=3), tmp_path_factory.mktemp("cli") / "dro")


def run(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def load(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_fit_signal_series_recovers_truth(dro_dir, tmp_path, capsys):
    out = tmp_path / "maps"
    meta = json.loads((dro_dir / "dro.json").read_text())
    code, _ = run(["fit", "--dce", dro_dir / "dce.nii.gz", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv",
                   "--input", "signal", "--t10", dro_dir / "t10_true.nii.gz", "--tr", meta["tr_s"], "--fa", meta["fa_deg"],
                   "--baseline", meta["baseline_frames"], "--out", out], capsys)
    assert code == 0
    for name in ["ktrans", "ve", "vp", "kep", "rmse", "r2", "fit_ok"]:
        assert (out / f"{name}.nii.gz").is_file()
    ktrans, truth = load(out / "ktrans.nii.gz"), load(dro_dir / "ktrans_true.nii.gz")
    assert np.mean(within_tolerance("ktrans", ktrans, truth)) >= 0.95
    np.testing.assert_allclose(nib.load(str(out / "ktrans.nii.gz")).affine, nib.load(str(dro_dir / "dce.nii.gz")).affine)
    origin = json.loads((out / "fit.json").read_text())["provenance"]
    from kinetics.provenance import file_digest

    assert origin["package"] == "kinetics" and origin["version"] and origin["command"].startswith("python -m kinetics fit --dce ")
    assert origin["inputs_sha1"] == {k: file_digest(dro_dir / f) for k, f in
                                     (("dce", "dce.nii.gz"), ("times", "times.txt"), ("aif", "aif.csv"), ("t10", "t10_true.nii.gz"))}
    ds = xr.open_dataset(out / "maps.nc", engine="h5netcdf")
    assert ds["ktrans"].attrs["units"] == "/min" and ds["ktrans"].dims == ("x", "y", "z")
    np.testing.assert_allclose(ds["ktrans"].values, ktrans, equal_nan=True)
    ds.close()


def test_every_voxel_has_a_status_with_its_reason(dro_dir, tmp_path, capsys):
    """A voxel without T10 and one whose signal is above the SPGR maximum in most frames are counted
    under their own reason in fit_status.nii.gz, maps.nc and fit.json, not lumped in with the rest; a
    voxel with one such frame is fitted without it."""
    meta = json.loads((dro_dir / "dro.json").read_text())
    dce, affine = load(dro_dir / "dce.nii.gz").astype(np.float32), nib.load(str(dro_dir / "dce.nii.gz")).affine
    t10 = load(dro_dir / "t10_true.nii.gz").astype(np.float32)
    t10[0, 0, 0] = np.nan
    dce[1, 0, 0, 5:] = 50 * dce[1, 0, 0, 0]  # above the SPGR maximum for its T10, from frame 6 on
    dce[2, 0, 0, 20] = 50 * dce[2, 0, 0, 0]  # in one frame
    save_image(tmp_path / "dce.nii.gz", dce, affine)
    save_image(tmp_path / "t10.nii.gz", t10, affine)
    out = tmp_path / "maps"
    code, _ = run(["fit", "--dce", tmp_path / "dce.nii.gz", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv",
                   "--input", "signal", "--t10", tmp_path / "t10.nii.gz", "--tr", meta["tr_s"], "--fa", meta["fa_deg"],
                   "--baseline", meta["baseline_frames"], "--quality", "--out", out], capsys)
    assert code == 0
    assert (out / "quality.png").stat().st_size > 10_000
    status = load(out / "fit_status.nii.gz")
    assert status[0, 0, 0] == STATUS_CODE["t10_missing"] and status[1, 0, 0] == STATUS_CODE["above_signal_maximum"]
    truth = load(dro_dir / "ktrans_true.nii.gz")[2, 0, 0]
    assert status[2, 0, 0] == STATUS_CODE["ok"] and within_tolerance("ktrans", load(out / "ktrans.nii.gz")[2, 0, 0], truth)
    assert json.loads((out / "fit.json").read_text())["frames_excluded"] == {"voxels": 1, "frames": 1}
    mask = np.zeros(status.shape, np.uint8)
    mask[:3, :2] = 1  # the same reasons when a mask restricts the fit
    save_image(tmp_path / "mask.nii.gz", mask, affine)
    code, _ = run(["fit", "--dce", tmp_path / "dce.nii.gz", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv",
                   "--input", "signal", "--t10", tmp_path / "t10.nii.gz", "--tr", meta["tr_s"], "--fa", meta["fa_deg"],
                   "--baseline", meta["baseline_frames"], "--mask", tmp_path / "mask.nii.gz", "--out", tmp_path / "masked"], capsys)
    masked = load(tmp_path / "masked" / "fit_status.nii.gz")
    assert code == 0 and np.array_equal(masked[mask > 0], status[mask > 0]) and not masked[mask == 0].any()
    np.testing.assert_array_equal(status == STATUS_CODE["ok"], load(out / "fit_ok.nii.gz") == 1)
    counts = json.loads((out / "fit.json").read_text())["fit_status"]
    assert counts["t10_missing"] == 1 and counts["above_signal_maximum"] == 1
    assert sum(counts.values()) == status.size and counts["ok"] >= 0.9 * status.size
    ds = xr.open_dataset(out / "maps.nc", engine="h5netcdf")
    assert "above_signal_maximum" in ds["fit_status"].attrs["flag_meanings"]
    np.testing.assert_array_equal(ds["fit_status"].values, status)
    ds.close()


def test_fit_concentration_with_mask_population_aif_and_llsq(dro_dir, tmp_path, capsys):
    mask = np.zeros(load(dro_dir / "ktrans_true.nii.gz").shape, np.uint8)
    mask[:10] = 1
    save_image(tmp_path / "mask.nii.gz", mask, np.diag([2.0, 2, 5, 1]))
    out = tmp_path / "maps"
    code, _ = run(["fit", "--dce", dro_dir / "conc.nii.gz", "--times", dro_dir / "times.txt", "--aif", "parker",
                   "--aif-delay", 25.0, "--mask", tmp_path / "mask.nii.gz", "--method", "llsq", "--out", out], capsys)
    assert code == 0
    ok = load(out / "fit_ok.nii.gz")
    assert ok[:10].all() and not ok[10:].any()
    truth = load(dro_dir / "ktrans_true.nii.gz")
    np.testing.assert_allclose(load(out / "ktrans.nii.gz")[:10], truth[:10], atol=2e-3)


def test_failure_while_writing_leaves_nothing(dro_dir, tmp_path, capsys, monkeypatch):
    import kinetics.workflow

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(kinetics.workflow, "maps_dataset", broken)
    with pytest.raises(OSError):
        main(["fit", "--dce", str(dro_dir / "conc.nii.gz"), "--times", str(dro_dir / "times.txt"), "--aif",
              str(dro_dir / "aif.csv"), "--method", "llsq", "--out", str(tmp_path / "maps")])
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_previous_run(dro_dir, tmp_path, capsys):
    args = ["fit", "--dce", dro_dir / "conc.nii.gz", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv",
            "--method", "llsq", "--model", "patlak", "--out", tmp_path / "maps"]
    assert run(args, capsys)[0] == 0
    (tmp_path / "maps" / "stale.txt").write_text("from before")
    assert run(args + ["--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]
    assert not (tmp_path / "maps" / "stale.txt").exists()


def test_denoise_is_refused_for_concentration_and_small_series(dro_dir, tmp_path, capsys):
    base = ["fit", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv", "--denoise"]
    code, captured = run(base + ["--dce", dro_dir / "conc.nii.gz", "--out", tmp_path / "a"], capsys)
    assert code == 2 and "MP-PCA needs a signal series" in captured.err
    code, captured = run(base + ["--dce", dro_dir / "dce.nii.gz", "--input", "signal", "--t10", 1.2, "--tr", 0.004,
                                 "--fa", 15, "--baseline", 5, "--out", tmp_path / "b"], capsys)
    assert code == 2 and "smaller than a 5-voxel patch" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_t1map_and_aif_and_dro_commands(dro_dir, tmp_path, capsys):
    code, _ = run(["dro", "--out", tmp_path / "dro2", "--snr", 40, "--seed", 1], capsys)
    assert code == 0 and (tmp_path / "dro2" / "dce.nii.gz").is_file() and (tmp_path / "dro2" / "ktrans_true.nii.gz").is_file()
    code, captured = run(["dro", "--out", tmp_path / "dro3", "--snr", -5], capsys)
    assert code == 2 and "snr: -5 must be positive" in captured.err
    mask = np.zeros((25, 20, 3), np.uint8)
    mask[:5] = 1
    save_image(tmp_path / "m.nii.gz", mask, nib.load(str(dro_dir / "vfa.nii.gz")).affine)
    code, _ = run(["t1map", "--vfa", dro_dir / "vfa.nii.gz", "--fa", "2,5,10,15", "--tr", 0.004, "--mask", tmp_path / "m.nii.gz",
                   "--out", tmp_path / "masked_t10.nii.gz"], capsys)
    masked = load(tmp_path / "masked_t10.nii.gz")
    assert code == 0 and np.isfinite(masked[:5]).all() and np.isnan(masked[5:]).all()
    code, captured = run(["t1map", "--vfa", dro_dir / "vfa.nii.gz", "--fa", "2,5,x", "--tr", 0.004, "--out", tmp_path / "x.nii.gz"], capsys)
    assert code == 2 and "fa: 'x' degrees is not a number" in captured.err
    fa = ",".join(str(a) for a in json.loads((dro_dir / "dro.json").read_text())["vfa_fa_deg"])
    code, _ = run(["t1map", "--vfa", dro_dir / "vfa.nii.gz", "--fa", fa, "--tr", 0.004, "--out", tmp_path / "t10.nii.gz"], capsys)
    assert code == 0
    t10, truth = load(tmp_path / "t10.nii.gz"), load(dro_dir / "t10_true.nii.gz")
    assert np.all(np.abs(1 / t10 - 1 / truth) <= 0.05 + 0.05 / truth)
    code, _ = run(["aif", "parker", "--times", dro_dir / "times.txt", "--out", tmp_path / "aif.csv", "--delay", 25], capsys)
    table = pd.read_csv(tmp_path / "aif.csv")
    assert code == 0 and list(table.columns) == ["time_s", "cp_mM"]
    t = table["time_s"].to_numpy()
    np.testing.assert_allclose(table["cp_mM"], plasma_aif("parker", t, delay_s=25), rtol=1e-6)


def test_fit_roi_gives_single_kidney_gfr(tmp_path, capsys):
    t = np.arange(0, 300, 2.0)
    cp = plasma_aif("parker", t, delay_s=10.0)
    left = two_compartment_filtration(t, cp, 220.0, 0.25, 30.0, 120.0)
    right = two_compartment_filtration(t, cp, 150.0, 0.2, 15.0, 120.0)
    pd.DataFrame({"time_s": t, "aorta": cp, "left": left, "right": right}).to_csv(tmp_path / "curves.csv", index=False)
    code, _ = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "2cfm",
                   "--volume-ml", "{left: 150, right: 120}", "--out", tmp_path / "params.csv"], capsys)
    assert code == 0
    rows = pd.read_csv(tmp_path / "params.csv").set_index("roi")
    np.testing.assert_allclose(rows.loc["left", "gfr_ml_min"], 0.30 * 150, rtol=0.02)
    np.testing.assert_allclose(rows.loc["right", "gfr_ml_min"], 0.15 * 120, rtol=0.02)
    np.testing.assert_allclose(rows.loc["left", "rpf_ml_min"], 2.2 * 150, rtol=0.05)
    code, _ = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "patlak_rutland",
                   "--volume-ml", 150, "--out", tmp_path / "pr.csv"], capsys)
    pr = pd.read_csv(tmp_path / "pr.csv").set_index("roi")
    # Patlak-Rutland underestimates FT once tubular outflow starts; the order of the kidneys is kept
    assert code == 0 and pr.loc["left", "gfr_ml_min"] > pr.loc["right", "gfr_ml_min"] > 0
    assert pr.loc["left", "window_start_s"] == t[np.argmax(cp)]  # the plot, from the aortic peak
    assert (rows["fit_status"] == "ok").all()
    code, _ = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "patlak_rutland",
                   "--pr-form", "time", "--window-s", "20,80", "--out", tmp_path / "prt.csv"], capsys)
    prt = pd.read_csv(tmp_path / "prt.csv").set_index("roi")
    assert code == 0 and prt.loc["left", "window_start_s"] == 20 and prt.loc["left", "window_end_s"] == 80
    code, captured = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "2cfm",
                          "--window-s", "20,80", "--out", tmp_path / "bad.csv"], capsys)
    assert code == 2 and "options of --model patlak_rutland only" in captured.err
    code, _ = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "2cfm",
                   "--max-iter", 1, "--out", tmp_path / "capped.csv"], capsys)
    assert code == 0 and (pd.read_csv(tmp_path / "capped.csv")["fit_status"] == "not_converged").all()
    code, captured = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "2cfm",
                          "--max-iter", 0, "--out", tmp_path / "zero.csv"], capsys)
    assert code == 2 and "max_iter" in captured.err
    (tmp_path / "left.csv.json").write_text("{}")  # a sidecar left behind: refused before any fit, not after
    code, captured = run(["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "2cfm",
                          "--out", tmp_path / "left.csv"], capsys)
    assert code == 2 and "left.csv.json: output file exists" in captured.err and not (tmp_path / "left.csv").exists()


def test_fit_roi_takes_a_t10_per_kidney(tmp_path, capsys):
    """Two kidneys with their own measured T1 in one call (signal input), as two calls would fit them."""
    from kinetics.signal import signal_from_concentration

    t = np.arange(0, 300, 2.0)
    cp = plasma_aif("parker", t, delay_s=10.0)
    kidneys = {"LK": (two_compartment_filtration(t, cp, 220.0, 0.25, 30.0, 120.0), 1.3),
               "RK": (two_compartment_filtration(t, cp, 150.0, 0.2, 15.0, 120.0), 1.5)}
    acquisition = dict(tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, s0=1000.0)
    columns = {"time_s": t, "aorta": signal_from_concentration(cp * (1 - 0.42), t10_s=1.6, **acquisition)}
    columns.update({k: signal_from_concentration(c, t10_s=t10, **acquisition) for k, (c, t10) in kidneys.items()})
    pd.DataFrame(columns).to_csv(tmp_path / "curves.csv", index=False)
    base = ["fit-roi", "--curves", tmp_path / "curves.csv", "--aif-column", "aorta", "--model", "2cfm", "--input", "signal",
            "--tr", 0.004, "--fa", 15, "--baseline", 5, "--volume-ml", 150]
    assert run(base + ["--t10", "{LK: 1.3, RK: 1.5}", "--out", tmp_path / "both.csv"], capsys)[0] == 0
    both = pd.read_csv(tmp_path / "both.csv").set_index("roi")
    np.testing.assert_allclose(both.loc["LK", "gfr_ml_min"], 0.30 * 150, rtol=0.03)
    np.testing.assert_allclose(both.loc["RK", "gfr_ml_min"], 0.15 * 150, rtol=0.03)
    assert run(base + ["--t10", 1.5, "--out", tmp_path / "one.csv"], capsys)[0] == 0  # right only is right
    np.testing.assert_allclose(pd.read_csv(tmp_path / "one.csv").set_index("roi").loc["RK", "gfr_ml_min"],
                               both.loc["RK", "gfr_ml_min"], rtol=1e-6)
    code, captured = run(base + ["--t10", "{LK: 1.3}", "--out", tmp_path / "x.csv"], capsys)
    assert code == 2 and "t10: no value for ROI(s) ['RK']" in captured.err
    # an aorta saturated at the bolus peak: one sentence naming the frames, not a message about a window
    peak = np.argmax(cp)
    columns["aorta"][peak - 1:peak + 2] *= 3.0
    pd.DataFrame(columns).to_csv(tmp_path / "saturated.csv", index=False)
    code, captured = run(["fit-roi", "--curves", tmp_path / "saturated.csv"] + base[3:] + ["--t10", 1.4, "--out", tmp_path / "s.csv"],
                         capsys)
    assert code == 2 and f"has 3 frame(s) with no real concentration (frames {peak}-{peak + 2}" in captured.err
    assert "exceeds the SPGR maximum for T10 1.6 s" in captured.err and not (tmp_path / "s.csv").exists()


def _shifted(affine, mm):
    moved = np.array(affine, float)
    moved[0, 3] += mm
    return moved


@pytest.fixture
def bad_inputs(dro_dir, tmp_path):
    three_d = tmp_path / "three_d.nii.gz"
    save_image(three_d, np.zeros((4, 4, 4), np.float32), np.eye(4))
    (tmp_path / "short.txt").write_text("\n".join(str(i) for i in range(10)))
    (tmp_path / "nan.txt").write_text("\n".join(["0", "nan"] + [str(i) for i in range(2, 60)]))
    (tmp_path / "backwards.txt").write_text("\n".join(str(60 - i) for i in range(60)))
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a nifti file at all")
    write_aif_csv(tmp_path / "short_aif.csv", np.arange(0, 100, 5.0), np.ones(20))
    (tmp_path / "exists").mkdir()
    (tmp_path / "ms.txt").write_text("\n".join(str(5000 * i) for i in range(60)))
    t10 = nib.load(str(dro_dir / "t10_true.nii.gz"))
    save_image(tmp_path / "empty_mask.nii.gz", np.zeros((25, 20, 3), np.uint8), t10.affine)
    save_image(tmp_path / "t10_ms.nii.gz", np.asarray(t10.dataobj) * 1000.0, t10.affine)  # a map in milliseconds
    dce = nib.load(str(dro_dir / "dce.nii.gz"))
    series = np.asarray(dce.dataobj).astype(np.float32)
    series[..., 20:] = np.nan  # most frames lost in every voxel (one lost frame is left out of the fit)
    save_image(tmp_path / "nan_frame.nii.gz", series, dce.affine)
    shape = series.shape[:3]
    save_image(tmp_path / "shifted_mask.nii.gz", np.ones(shape, np.uint8), _shifted(dce.affine, 50.0))  # 50 mm off
    base = ["fit", "--dce", dro_dir / "dce.nii.gz", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv",
            "--input", "signal", "--t10", 1.2, "--tr", 0.004, "--fa", 15, "--baseline", 5]
    return tmp_path, base


@pytest.mark.parametrize("change, message", [
    ({"--dce": "three_d.nii.gz"}, "is 3D with shape (4, 4, 4); expected 4D"),
    ({"--times": "short.txt"}, "10 times for 60 frames"),
    ({"--times": "nan.txt"}, "are not finite"),
    ({"--times": "backwards.txt"}, "times must increase"),
    ({"--aif": "short_aif.csv"}, "the AIF covers 0-95 s but the series runs 0-295 s"),
    ({"--t10": 0}, "t10: 0.0 s must be positive"),
    ({"--tr": "abc"}, "tr: 'abc' s is not a number"),
    ({"--baseline": 4.5}, "baseline: 4.5 frames is not a whole number"),
    ({"--hct": 1.5}, "haematocrit 1.5 is outside [0, 1)"),
    ({"--aif": "parkr"}, "parkr: no such AIF file, and not one of ['georgiou', 'mcgrath', 'parker', 'weinmann', 'auto']"),
    ({"--times": "ms.txt"}, "frames are 5000 s apart; give the times in seconds"),
    ({"--mask": "empty_mask.nii.gz"}, "the mask selects no voxel"),
    ({"--maks": "empty_mask.nii.gz"}, "unknown option --maks"),
    ({"--fa": 120}, "flip angle 120 degrees is outside (0, 90]"),
    ({"--dce": "garbage.nii.gz"}, "cannot read the DCE series as NIfTI"),
    ({"--dce": "missing.nii.gz"}, "DCE series file not found"),
    ({"--out": "exists"}, "output directory exists"),
    ({"--model": "tofts2"}, "unknown model 'tofts2'"),
    # unit slips that used to fit nothing, or fit wrongly, with exit 0
    ({"--tr": 4}, "tr: 4 s is not a plausible value for an SPGR repetition time (0.0001-0.1 s); milliseconds?"),
    ({"--t10": 1400}, "t10: 1400 s is not a plausible value for a pre-contrast T1 (0.05-10 s); milliseconds?"),
    ({"--t10": "t10_ms.nii.gz"}, "the T10 map's median is"),
    ({"--fa": 0.26}, "radians? give degrees (0.26 rad is 14.9 degrees)"),
    ({"--r1": 4500}, "r1: 4500 /s/mM is not a plausible value for a contrast agent's relaxivity"),
    ({"--mask": "shifted_mask.nii.gz"}, "the mask's affine differs from its image's by up to 50 mm"),
    ({"--dce": "nan_frame.nii.gz"}, "no voxel could be fitted (0 of 1500): every curve misses frames (not finite), and none kept enough"),
])
def test_bad_input_one_sentence_exit_2_no_output(bad_inputs, capsys, change, message):
    tmp_path, base = bad_inputs
    args = list(base) + ["--out", tmp_path / "maps"]
    for flag, value in change.items():
        value = tmp_path / value if isinstance(value, str) and (".nii" in value or ".txt" in value or ".csv" in value or value == "exists") else value
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, captured = run(args, capsys)
    assert code == 2
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "maps").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".maps")]


@pytest.mark.parametrize("args, message", [
    (["aif", "parker", "--times", "ms.txt"], "frames are 5000 s apart; give the times in seconds"),
    (["aif", "parker", "--times", "times.txt", "--delay", 10000], "a bolus starting at 10000 s is outside the series"),
    (["aif", "parker", "--times", "empty.txt"], "the times file holds no time"),
    (["t1map", "--vfa", "vfa.nii.gz", "--fa", "2,5,10,15", "--tr", 5], "tr: 5 s is not a plausible value"),
    (["t1map", "--vfa", "vfa.nii.gz", "--fa", "0.035,0.087,0.17,0.26", "--tr", 0.005], "radians?"),
])
def test_aif_and_t1map_refuse_unit_slips(dro_dir, tmp_path, capsys, args, message):
    (tmp_path / "ms.txt").write_text("\n".join(str(5000 * i) for i in range(60)))
    (tmp_path / "empty.txt").write_text("")
    named = {"ms.txt": tmp_path / "ms.txt", "empty.txt": tmp_path / "empty.txt", "times.txt": dro_dir / "times.txt",
             "vfa.nii.gz": dro_dir / "vfa.nii.gz"}
    code, captured = run([named.get(a, a) for a in args] + ["--out", tmp_path / "out"], capsys)
    assert code == 2 and message in captured.err and captured.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_module_entry_point_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kinetics", "fit", "--dce", tmp_path / "none.nii.gz", "--times",
                           tmp_path / "t.txt", "--aif", "parker", "--out", tmp_path / "o"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("DCE series file not found.")


def test_t1map_sets_implausible_background_t1_to_nan_with_a_warning_and_a_status(dro_dir, tmp_path, caplog, capsys):
    from kinetics.status import STATUS_CODE
    from kinetics.t1map import t1_map

    vfa = nib.load(str(dro_dir / "vfa.nii.gz"))
    data = np.asarray(vfa.dataobj).astype(np.float32)
    data[:3] = np.random.default_rng(0).normal(5.0, 3.0, size=data[:3].shape)  # unmasked background: noise
    data[10, 10, 1, 2] = np.nan  # one flip angle's signal lost in one voxel
    save_image(tmp_path / "vfa.nii.gz", data, vfa.affine)
    fa = ",".join(str(a) for a in json.loads((dro_dir / "dro.json").read_text())["vfa_fa_deg"])
    with caplog.at_level("WARNING", logger="kinetics"):
        t1_map(tmp_path / "vfa.nii.gz", fa, tr=0.004, out=tmp_path / "t1.nii.gz", status=tmp_path / "status.nii.gz")
    t1, status = load(tmp_path / "t1.nii.gz"), load(tmp_path / "status.nii.gz")
    assert np.nanmax(t1) <= 10.0 and np.isnan(t1[:3]).any()
    implausible = status == STATUS_CODE["implausible"]
    assert f"{implausible.sum()} of {t1.size} voxels have a T1 outside 0.05-10 s (background or noise) and are set to NaN; " \
           "--mask fits tissue only" in caplog.text
    assert implausible.any() and not implausible[3:].any() and np.isnan(t1[implausible]).all()
    assert status[10, 10, 1] == STATUS_CODE["input_not_finite"] and np.isnan(t1[10, 10, 1])
    tissue = np.ones(t1.shape, bool)
    tissue[:3] = tissue[10, 10, 1] = False
    assert (status[tissue] == STATUS_CODE["ok"]).all() and np.isfinite(t1[tissue]).all()
    assert (status[:3] != STATUS_CODE["ok"]).sum() == np.isnan(t1[:3]).sum()  # every NaN says why
    from kinetics.provenance import file_digest

    origin = json.loads((tmp_path / "t1.nii.gz.json").read_text())  # what made the map
    assert origin["t1_status"]["implausible"] == implausible.sum() and origin["options"]["tr_s"] == 0.004
    assert origin["provenance"]["inputs_sha1"] == {"vfa": file_digest(tmp_path / "vfa.nii.gz")}
    # the status map is checked before the work: a name it shares with the T1 map, or a file already there
    code, captured = run(["t1map", "--vfa", tmp_path / "vfa.nii.gz", "--fa", fa, "--tr", 0.004, "--out", tmp_path / "a.nii.gz",
                          "--status", tmp_path / "a.nii.gz"], capsys)
    assert code == 2 and "the status map needs a file of its own" in captured.err and not (tmp_path / "a.nii.gz").exists()
    code, captured = run(["t1map", "--vfa", tmp_path / "vfa.nii.gz", "--fa", fa, "--tr", 0.004, "--out", tmp_path / "b.nii.gz",
                          "--status", tmp_path / "status.nii.gz"], capsys)
    assert code == 2 and "output file exists" in captured.err and not (tmp_path / "b.nii.gz").exists()
    code, captured = run(["t1map", "--vfa", tmp_path / "vfa.nii.gz", "--fa", fa, "--tr", 0.004, "--out", tmp_path / "c.nii.gz",
                          "--status", tmp_path / "st"], capsys)
    assert code == 2 and "status needs a NIfTI file name" in captured.err and not (tmp_path / "c.nii.gz").exists()
    (tmp_path / "a_file").write_text("")  # a status map that cannot be written: neither is the T1 map
    code, captured = run(["t1map", "--vfa", tmp_path / "vfa.nii.gz", "--fa", fa, "--tr", 0.004, "--out", tmp_path / "d.nii.gz",
                          "--status", tmp_path / "a_file" / "st.nii.gz"], capsys)
    assert code == 2 and captured.err.count("\n") == 1 and not (tmp_path / "d.nii.gz").exists()


def test_two_runs_to_one_output_never_replace_each_other(tmp_path):
    """The second of two runs writing the same output is refused; the first one's output stays whole."""
    from kinetics.errors import KineticsInputError
    from kinetics.io import output_directory, output_file

    maps = tmp_path / "maps"
    with output_directory(maps) as first:
        (first / "ktrans.nii.gz").write_text("first run")
        with pytest.raises(KineticsInputError, match="output directory exists"):
            with output_directory(maps) as second:
                (second / "ktrans.nii.gz").write_text("second run")
    assert (maps / "ktrans.nii.gz").read_text() == "first run"
    curve = tmp_path / "aif.csv"
    with pytest.raises(KineticsInputError, match="written by another run meanwhile; it is left as it was"):
        with output_file(curve) as tmp:
            tmp.write_text("this run")
            curve.write_text("another run, finished first")
    assert curve.read_text() == "another run, finished first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aif.csv", "maps"]  # no temporary left
    with output_file(curve, overwrite=True) as tmp:
        tmp.write_text("replaced on purpose")
    assert curve.read_text() == "replaced on purpose"


def test_outputs_follow_the_umask(dro_dir, tmp_path, capsys):
    import os

    previous = os.umask(0o022)
    try:
        code, _ = run(["fit", "--dce", dro_dir / "conc.nii.gz", "--times", dro_dir / "times.txt", "--aif", dro_dir / "aif.csv",
                       "--method", "llsq", "--model", "patlak", "--out", tmp_path / "maps"], capsys)
        assert code == 0 and run(["aif", "parker", "--times", dro_dir / "times.txt", "--out", tmp_path / "aif.csv"], capsys)[0] == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "maps").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "maps").iterdir()} == {0o644}
    assert (tmp_path / "aif.csv").stat().st_mode & 0o777 == 0o644


def test_an_unwritable_output_is_one_sentence(tmp_path, capsys, monkeypatch):
    """A read-only or full disk, or a folder without write permission (simulated: tests may run as root)."""
    import errno
    import tempfile

    from ssl_rcc.__main__ import main as ssl_main

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for main_of, args in ((main, ["dro", "--out", tmp_path / "dro"]),
                          (ssl_main, ["phantoms", "--out", tmp_path / "phantoms", "--n", "1", "--size", "32"])):
        code = main_of([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 2 and err == f"error: {tmp_path}: cannot write or read there (Permission denied).\n"
    assert list(tmp_path.iterdir()) == []


def _renography_study(folder, n_scans, rng):
    """``n_scans`` signal-input scans of two kidneys with their own T1s and volumes; the truth per scan."""
    from kinetics.signal import signal_from_concentration

    t = np.arange(0, 300, 2.0)
    cp = plasma_aif("parker", t, delay_s=10.0)
    acquisition = dict(tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, s0=1000.0)
    rows, truth = [], {}
    for i in range(n_scans):
        ft = rng.uniform(10, 40, 2)
        t10 = rng.uniform(1.1, 1.6, 2)
        columns = {"time_s": t, "aorta": signal_from_concentration(cp * (1 - 0.42), t10_s=1.6, **acquisition)}
        for roi, f, t1 in zip(("LK", "RK"), ft, t10):
            columns[roi] = signal_from_concentration(two_compartment_filtration(t, cp, 200.0, 0.25, f, 120.0), t10_s=t1,
                                                     **acquisition)
        pd.DataFrame(columns).to_csv(folder / f"scan{i}.csv", index=False)
        rows.append({"scan_id": f"S{i:03d}", "curves": f"scan{i}.csv", "t10_LK": t10[0], "t10_RK": t10[1],
                     "volume_ml_LK": 150, "volume_ml_RK": 120, "tr": 0.004, "fa": 15, "baseline": 5})
        truth[f"S{i:03d}"] = {"LK": ft[0] / 100 * 150, "RK": ft[1] / 100 * 120}
    pd.DataFrame(rows).to_csv(folder / "study.csv", index=False)
    return folder / "study.csv", truth


def test_fit_roi_study_fits_every_scan_in_one_call(tmp_path, capsys, rng):
    """A study table of scans, each with its own T1 per kidney and volumes, gives one table whose rows
    are what one fit-roi call per scan gives."""
    study, truth = _renography_study(tmp_path, 6, rng)
    out = tmp_path / "all.csv"
    code, _ = run(["fit-roi", "--study", study, "--aif-column", "aorta", "--model", "2cfm", "--input", "signal",
                   "--out", out], capsys)
    assert code == 0
    rows = pd.read_csv(out)
    assert list(rows.columns[:2]) == ["scan_id", "roi"] and len(rows) == 12 and (rows["fit_status"] == "ok").all()
    from kinetics.provenance import file_digest

    digests = json.loads((tmp_path / "all.csv.json").read_text())["provenance"]["inputs_sha1"]  # every input, by content
    assert digests == {"study": file_digest(study)} | {f"curves of S{i:03d}": file_digest(tmp_path / f"scan{i}.csv")
                                                         for i in range(6)}
    for _, r in rows.iterrows():
        assert r["gfr_ml_min"] == pytest.approx(truth[r["scan_id"]][r["roi"]], rel=0.03)
    one = tmp_path / "one.csv"
    code, _ = run(["fit-roi", "--curves", tmp_path / "scan2.csv", "--aif-column", "aorta", "--model", "2cfm", "--input",
                   "signal", "--tr", 0.004, "--fa", 15, "--baseline", 5, "--t10", "{LK: %r, RK: %r}" % tuple(
                       pd.read_csv(study).loc[2, ["t10_LK", "t10_RK"]]), "--volume-ml", "{LK: 150, RK: 120}", "--out", one],
                  capsys)
    assert code == 0
    np.testing.assert_allclose(pd.read_csv(one)["gfr_ml_min"], rows[rows["scan_id"] == "S002"]["gfr_ml_min"], rtol=1e-5)
    # a bad row: one sentence naming it, nothing written
    table = pd.read_csv(study)
    table.loc[3, "t10_RK"] = 1400  # ms
    table.to_csv(tmp_path / "bad.csv", index=False)
    code, captured = run(["fit-roi", "--study", tmp_path / "bad.csv", "--aif-column", "aorta", "--input", "signal",
                          "--out", tmp_path / "bad_out.csv"], capsys)
    assert code == 2 and "row 5 (scan S003)" in captured.err and "t10" in captured.err
    assert not (tmp_path / "bad_out.csv").exists()
    code, captured = run(["fit-roi", "--study", study, "--curves", tmp_path / "scan0.csv", "--aif-column", "aorta",
                          "--out", tmp_path / "x.csv"], capsys)
    assert code == 2 and "not both" in captured.err
    # t10_aif is the blood T10 of its row (the default 1.6 s elsewhere), not a ROI's; a baseline of 2.5
    # frames is refused, not truncated
    table = pd.read_csv(study)
    table["t10_aif"] = 1.6
    table.loc[1, "t10_aif"] = 1.4
    table.to_csv(tmp_path / "with_blood.csv", index=False)
    code, _ = run(["fit-roi", "--study", tmp_path / "with_blood.csv", "--aif-column", "aorta", "--model", "2cfm",
                   "--input", "signal", "--out", tmp_path / "blood.csv"], capsys)
    assert code == 0
    blood = pd.read_csv(tmp_path / "blood.csv")
    changed = (blood["scan_id"] == "S001").to_numpy()
    np.testing.assert_allclose(blood["gfr_ml_min"][~changed], rows["gfr_ml_min"][~changed], rtol=1e-6)
    assert np.all(np.abs(blood["gfr_ml_min"][changed].to_numpy() / rows["gfr_ml_min"][changed].to_numpy() - 1) > 0.01)
    table["baseline"] = table["baseline"].astype(float)
    table.loc[0, "baseline"] = 2.5
    table.to_csv(tmp_path / "half_frame.csv", index=False)
    code, captured = run(["fit-roi", "--study", tmp_path / "half_frame.csv", "--aif-column", "aorta", "--input", "signal",
                          "--out", tmp_path / "half.csv"], capsys)
    assert code == 2 and "row 2 (scan S000)" in captured.err and "baseline" in captured.err
