"""Synthetic renal cases: label priors, determinism, masks, HU and signal ranges, kinetic truth that
the kinetics CLI recovers, and labels that a first-order radiomics baseline learns but not perfectly."""


import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ssl_rcc.__main__ import main
from ssl_rcc.phantoms import PRIORS, SITES, SUBTYPES, generate_phantoms, make_case, sample_labels
from ssl_rcc.phantoms import appearance as A
from ssl_rcc.phantoms.labels import HIGH_GRADE, INVASION


def within_sampling_error(count, n, p, z=4.0):
    return abs(count / n - p) <= z * np.sqrt(p * (1 - p) / n) + 1e-12


def test_label_priors_for_1000_cases():
    labels = pd.DataFrame(sample_labels(np.random.default_rng(0), 1000))
    for subtype in SUBTYPES:
        assert within_sampling_error((labels["subtype"] == subtype).sum(), 1000, PRIORS[subtype]), subtype
    cc = labels[labels["subtype"] == "ccrcc"]
    assert within_sampling_error((cc["grade"] == "high").sum(), len(cc), HIGH_GRADE["ccrcc"])
    expected_invasion = sum(PRIORS[s] * (sum(INVASION[(s, g)] * pg for g, pg in
                            (("low", 1 - HIGH_GRADE[s]), ("high", HIGH_GRADE[s]))) if s in HIGH_GRADE else INVASION[(s, "")])
                            for s in SUBTYPES)
    assert 0.15 < expected_invasion < 0.25
    assert within_sampling_error((labels["invasion"] == "yes").sum(), 1000, expected_invasion)
    assert (labels.loc[labels["subtype"].isin(["oncocytoma", "fpaml"]), "grade"] == "").all()
    assert set(labels["site"]) == set(SITES)
    balanced = pd.DataFrame(sample_labels(np.random.default_rng(1), 1000, balanced=True))
    for subtype in SUBTYPES:
        assert within_sampling_error((balanced["subtype"] == subtype).sum(), 1000, 0.2), subtype


@pytest.fixture(scope="module")
def cases():
    labels = [dict(subtype=s, grade="high" if s in HIGH_GRADE else "", invasion="yes" if s == "ccrcc" else "no", site=site)
              for s, site in zip(SUBTYPES, SITES + ("site_a",))]
    return [make_case(i, lab, case_id=f"c{i}") for i, lab in enumerate(labels)]


def test_cases_are_deterministic(cases):
    again = make_case(0, cases[0].labels, case_id="c0")
    np.testing.assert_array_equal(again.ct, cases[0].ct)
    np.testing.assert_array_equal(again.dce.signal, cases[0].dce.signal)


def test_masks_are_consistent_with_the_volumes(cases):
    for case in cases:
        a = case.anatomy
        assert a.tumour.shape == a.kidney.shape == case.ct.shape[:3]
        assert a.tumour.any() and np.all(a.kidney[a.tumour])
        tumour_classes = np.isin(a.labels, [A.TUMOUR, A.TUMOUR_B, A.NECROSIS, A.SCAR])
        assert np.all(a.tumour == tumour_classes)
        d = case.dce
        assert d.tumour.any() and d.tumour.shape == d.signal.shape[:3]
        assert np.all(d.kidney[d.tumour])
        for name, values in d.truth.items():
            assert np.all(np.isfinite(values)) and values.shape == d.tumour.shape, name


def test_hounsfield_units_are_plausible_per_tissue(cases):
    for case in cases:
        lab, ct = case.anatomy.labels, case.ct.astype(float)
        fat = np.median(ct[lab == A.FAT, 0])  # medians are robust to partial volume at edges
        assert -125 < fat < -60
        cortex_cm = np.median(ct[lab == A.CORTEX, 1])
        assert cortex_cm > np.median(ct[lab == A.CORTEX, 0]) + 80  # avid corticomedullary enhancement
        urine = ct[lab == A.COLLECTING]  # thin, so partial volume with sinus fat lowers its median
        assert np.percentile(urine[:, 3], 90) > 150 and np.median(urine[:, 3]) > np.median(urine[:, 0]) + 50
        tumour = ct[np.isin(lab, [A.TUMOUR, A.TUMOUR_B])]
        assert -10 < np.median(tumour[:, 0]) < 80  # unenhanced soft tissue
        assert np.median(tumour[:, 1]) > np.median(tumour[:, 0])  # every subtype enhances


def test_subtype_appearance_follows_the_literature():
    """ccRCC enhances more than papillary in the corticomedullary phase; fat-poor AML is the densest
    unenhanced; ccRCC is the most heterogeneous (averaged over cases, as single cases overlap)."""
    stats = {s: [] for s in SUBTYPES}
    for i in range(40):
        s = SUBTYPES[i % 5]
        case = make_case(100 + i, dict(subtype=s, grade="low" if s in HIGH_GRADE else "", invasion="no", site="site_c"),
                         with_dce=False, size=64)
        inner = np.isin(case.anatomy.labels, [A.TUMOUR, A.TUMOUR_B])
        hu = case.ct[inner].astype(float)
        stats[s].append((np.median(hu[:, 0]), np.median(hu[:, 1] - hu[:, 0]), np.std(hu[:, 1])))
    mean = {s: np.mean(v, axis=0) for s, v in stats.items()}
    assert mean["ccrcc"][1] > mean["prcc"][1] + 40
    assert mean["fpaml"][0] == max(m[0] for m in mean.values())
    assert mean["ccrcc"][2] > mean["chrcc"][2]


def test_kinetics_fit_recovers_phantom_tumour_ktrans(tmp_path):
    """At the default noise (motion switched off), the kinetics CLI recovers the true tumour Ktrans
    within the OSIPI tolerance in at least 95% of tumour voxels; breathing motion lowers it (measured
    0.87-0.98 on these three cases)."""
    from kinetics.__main__ import main as kinetics_main
    from ssl_rcc.phantoms.generate import kinetics_fit_arguments, tumour_ktrans_within_tolerance, write_case

    fractions = []
    for i, subtype in enumerate(["ccrcc", "prcc", "chrcc"]):
        labels = dict(subtype=subtype, grade="low", invasion="no", site=SITES[i])
        for motion in (0.0, 1.0):
            case = make_case(7 + i, labels, case_id=f"k{i}_{motion}", motion_scale=motion)
            row = write_case(case, tmp_path)
            maps = tmp_path / case.case_id / "maps"
            assert kinetics_main(kinetics_fit_arguments(row, tmp_path) + ["--out", str(maps)]) == 0
            fractions.append((motion, tumour_ktrans_within_tolerance(row, tmp_path, maps)))
    print("fraction of tumour voxels within OSIPI tolerance (motion scale, fraction):", fractions)
    still = [f for m, f in fractions if m == 0.0]
    moving = [f for m, f in fractions if m == 1.0]
    assert min(still) >= 0.95, fractions
    assert np.mean(moving) < np.mean(still) and min(moving) > 0.8, fractions


def first_order_features(case):
    hu = case.ct[case.anatomy.tumour].astype(float)
    q = np.percentile(hu, [10, 50, 90], axis=0)
    return np.concatenate([hu.mean(0), hu.std(0), q.ravel(), [np.log(hu.shape[0])]])


def test_radiomics_baseline_learns_each_label_but_not_perfectly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = sample_labels(np.random.default_rng(5), 240, balanced=True)
    feats = np.array([first_order_features(make_case(1000 + i, lab, with_dce=False, size=48)) for i, lab in enumerate(labels)])
    table = pd.DataFrame(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    subtype_pred = cross_val_predict(model, feats, table["subtype"], cv=5)
    bacc = balanced_accuracy_score(table["subtype"], subtype_pred)
    rcc = table["grade"] != ""
    grade_p = cross_val_predict(model, feats[rcc], table.loc[rcc, "grade"] == "high", cv=5, method="predict_proba")[:, 1]
    grade_auc = roc_auc_score(table.loc[rcc, "grade"] == "high", grade_p)
    inv_y = table["invasion"] == "yes"
    inv_p = cross_val_predict(model, feats, inv_y, cv=5, method="predict_proba")[:, 1]
    inv_auc = roc_auc_score(inv_y, inv_p)
    print(f"radiomics baseline: subtype balanced accuracy {bacc:.2f}, grade AUC {grade_auc:.2f}, invasion AUC {inv_auc:.2f}")
    assert 0.35 < bacc < 0.95
    assert 0.6 < grade_auc < 0.98
    assert 0.6 < inv_auc < 0.98


def test_cli_writes_the_case_table_and_is_deterministic(tmp_path, capsys):
    code = main(["phantoms", "--out", str(tmp_path / "a"), "--n", "4", "--seed", "3", "--size", "48", "--workers", "2", "--preview"])
    assert code == 0
    table = pd.read_csv(tmp_path / "a" / "cases.csv", keep_default_na=False)
    design_columns = ["case_id", "site", "subtype", "grade", "invasion", "ct", "kidney_mask", "tumor_mask", "dce", "dce_times",
                      "aif", "t10", "tr_s", "fa_deg", "r1", "baseline_frames", "ktrans_true", "ve_true", "vp_true"]
    assert set(design_columns) <= set(table.columns)
    for column in ["ct", "kidney_mask", "tumor_mask", "dce", "t10", "ktrans_true", "dce_tumor_mask"]:
        assert all((tmp_path / "a" / p).is_file() for p in table[column])
    assert (tmp_path / "a" / "preview.png").stat().st_size > 10_000
    ct = nib.load(str(tmp_path / "a" / table["ct"][0]))
    assert ct.shape == (48, 48, 48, 4) and np.allclose(ct.header.get_zooms()[:3], 3.0)
    assert main(["phantoms", "--out", str(tmp_path / "b"), "--n", "4", "--seed", "3", "--size", "48", "--workers", "1"]) == 0
    for p in table["ct"]:
        np.testing.assert_array_equal(nib.load(str(tmp_path / "a" / p)).dataobj, nib.load(str(tmp_path / "b" / p)).dataobj)


def test_unlabeled_archive_has_volumes_only(tmp_path):
    path = generate_phantoms(tmp_path / "u", n=3, seed=1, unlabeled=True, size=48, workers=1)
    table = pd.read_csv(path)
    assert list(table.columns) == ["case_id", "site", "ct"]
    assert sorted(p.name for p in (tmp_path / "u" / table["case_id"][0]).iterdir()) == ["ct.nii.gz"]


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "n: 0 cases must be positive"),
    (["--n", "abc"], "n: 'abc' cases is not a number"),
    (["--size", "16"], "size: 16 voxels is below 32"),
    (["--sizee", "16"], "unknown option --sizee"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, args, message):
    code = main(["phantoms", "--out", str(tmp_path / "x")] + args)
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
