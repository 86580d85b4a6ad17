"""finetune, predict and evaluate on synthetic renal cases: the outputs, their contents, the cache, a
learning check, and one sentence with exit 2 (and nothing in --out) for each bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from ssl_rcc.__main__ import main
from ssl_rcc.data.cases import read_case_table
from ssl_rcc.features import compute_features
from ssl_rcc.phantoms import generate_phantoms


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return generate_phantoms(root / "cases", n=40, seed=21, balanced=True, size=48, workers=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.mark.slow
def test_finetune_fusion_writes_everything_and_learns_subtype(cases, cache, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--cases", str(cases), "--task", "subtype", "--features", "kinetic,radiomic", "--shots", "2,all",
                 "--repeats", "3", "--out", str(out), "--cache", str(cache), "--n-boot", "50"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_shots"]) == {"2", "all"}
    two, full = metrics["by_shots"]["2"], metrics["by_shots"]["all"]
    assert two["n_train"] == 10 and two["n_test"] == 30 and full["n_train"] + full["n_test"] == 40
    for m in (two, full):
        assert set(m["baselines"]) == {"kinetic", "radiomic"}
        lo, hi = m["auc"]["ci95"]
        assert lo <= m["auc"]["mean"] <= hi and 0 <= m["ece"]["mean"] <= 1
        assert "auc_difference_fusion_minus_block" in m["baselines"]["radiomic"]
        assert set(m["per_site"]) <= {"site_a", "site_b", "site_c", "site_d"}
    print("subtype AUC, all labels:", full["auc"], {b: v["auc"]["mean"] for b, v in full["baselines"].items()})
    assert full["baselines"]["radiomic"]["auc"]["mean"] > 0.65  # the radiomic block learns subtype
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    p = predictions[[c for c in predictions.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert set(predictions["features"]) == {"kinetic+radiomic", "kinetic", "radiomic"}
    for png in ("roc_2.png", "reliability_all.png", "confusion_all.png", "label_curve.png"):
        assert (out / png).stat().st_size > 5_000, png
    report = (out / "report.md").read_text()
    assert "![AUC against labels](label_curve.png)" in report and "| radiomic |" in report
    assert json.loads((out / "model" / "head.json").read_text())["feature_names"]["kinetic"][0] == "ktrans_mean"

    preds = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(out / "model"), "--cases", str(cases), "--out", str(preds), "--cache", str(cache)]) == 0
    table = pd.read_csv(preds, keep_default_na=False)
    assert len(table) == 40 and set(table["predicted"]) <= {"ccrcc", "prcc", "chrcc", "oncocytoma", "fpaml"}
    assert main(["evaluate", "--predictions", str(preds), "--cases", str(cases), "--out", str(tmp_path / "ev"),
                 "--n-boot", "50"]) == 0
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["n_test"] == 40 and evaluated["auc"]["mean"] > 0.8  # the model's own training cases


def test_untrained_encoder_image_block_and_external_site(cases, cache, tmp_path):
    out = tmp_path / "img"
    args = ["finetune", "--cases", str(cases), "--task", "malignant", "--features", "image,kinetic", "--encoder", "none",
            "--patch", "16", "--spacing", "6", "--shots", "all", "--repeats", "2", "--test-site", "site_a",
            "--protocol", "knn", "--out", str(out), "--cache", str(cache), "--n-boot", "30"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_site"] == "site_a" and set(metrics["per_site"]) == {"site_a"}
    assert metrics["provenance"]["encoder"] == "none (untrained)"
    assert (out / "model" / "encoder.pt").is_file() and (out / "model" / "encoder.json").is_file()
    assert main(["predict", "--model", str(out / "model"), "--cases", str(cases), "--out", str(tmp_path / "p.csv"),
                 "--cache", str(cache)]) == 0


def test_end_to_end_protocol_trains_saves_and_predicts(cases, cache, tmp_path):
    out = tmp_path / "e2e"
    assert main(["finetune", "--cases", str(cases), "--task", "malignant", "--features", "image,kinetic", "--encoder", "none",
                 "--patch", "16", "--spacing", "6", "--protocol", "finetune", "--epochs", "3", "--shots", "all",
                 "--repeats", "1", "--out", str(out), "--cache", str(cache), "--n-boot", "30"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "finetune" and set(metrics["baselines"]) == {"image", "kinetic"}
    head = json.loads((out / "model" / "head.json").read_text())
    assert head["head"]["protocol"] == "finetune" and head["feature_names"]["image"] == ["tumour crop 4x16x16x16"]
    assert main(["predict", "--model", str(out / "model"), "--cases", str(cases), "--out", str(tmp_path / "p.csv"),
                 "--cache", str(cache)]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 40


def test_predict_explains_with_gradcam_on_the_case_grid_and_attributions(cases, cache, tmp_path):
    import nibabel as nib

    out = tmp_path / "img"
    assert main(["finetune", "--cases", str(cases), "--task", "malignant", "--features", "image", "--encoder", "none",
                 "--patch", "32", "--spacing", "3", "--shots", "all", "--repeats", "1", "--out", str(out), "--cache",
                 str(cache), "--n-boot", "30"]) == 0
    table = pd.read_csv(cases, keep_default_na=False).iloc[:2]
    new = cases.parent / "two.csv"
    table.to_csv(new, index=False)
    description = json.loads((out / "model" / "head.json").read_text())
    assert main(["predict", "--model", str(out / "model"), "--cases", str(new), "--out", str(tmp_path / "p.csv"),
                 "--explain", "--cache", str(cache)]) == 0
    explain = tmp_path / "p_explain"
    importance = pd.read_csv(explain / "block_importance.csv")
    assert set(importance["block"]) == set(description["head"]["blocks_used"]) and importance["importance"].between(0, 1).all()
    top = pd.read_csv(explain / "top_features.csv")
    assert set(top["case_id"]) == set(table["case_id"]) and top.groupby("case_id").size().max() == 5
    assert description["head"]["blocks_used"] == ["image"]
    ct = nib.load(str(cases.parent / table["ct"][0]))
    cam = nib.load(str(explain / f"{table['case_id'][0]}_gradcam.nii.gz"))
    assert cam.shape == ct.shape[:3] and np.allclose(cam.affine, ct.affine)
    values = np.asarray(cam.dataobj)
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert (explain / f"{table['case_id'][0]}_gradcam.png").stat().st_size > 10_000
    # Grad-CAM keeps positive evidence only: for a binary head, one class or the other has some
    from ssl_rcc.embed import load_encoder
    from ssl_rcc.explain import gradcam_case, image_branch
    from ssl_rcc.finetune import load_model

    _, head = load_model(out / "model")
    encoder, meta = load_encoder(out / "model" / "encoder.pt")
    row = read_case_table(new).iloc[0].to_dict()
    maps = [gradcam_case(image_branch(head, encoder), row, meta, k, tuple(meta["patch"]))[0] for k in (0, 1)]
    assert max(m.max() for m in maps) > 0
    tumour = np.asarray(nib.load(row["tumor_mask"]).dataobj) > 0
    for m in maps:  # the map lies in the encoder's crop, centred on the tumour
        if m.max() > 0:
            assert np.abs(np.argwhere(m > 0).mean(0) - np.argwhere(tumour).mean(0)).max() < 10


def test_features_come_from_the_cache_the_second_time(cases, cache, monkeypatch):
    table = read_case_table(cases).iloc[:4]
    first = compute_features(table, ["kinetic"], cache=cache, workers=1, progress=False)

    def fail(job):
        raise AssertionError("recomputed a cached case")

    monkeypatch.setattr("ssl_rcc.features._tabular", fail)
    again = compute_features(table, ["kinetic"], cache=cache, workers=1, progress=False)
    pd.testing.assert_frame_equal(first["kinetic"], again["kinetic"])
    assert list(first["kinetic"].index) == list(table["case_id"])


def _edited(cases, tmp_path, edit):
    table = pd.read_csv(cases, keep_default_na=False, dtype=str)
    table = edit(table)
    path = cases.parent / f"edited_{tmp_path.name}.csv"
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("edit, args, message", [
    (None, ["--task", "stage"], "task: unknown task 'stage'"),
    (lambda t: t.assign(subtype=["rcc"] + list(t["subtype"][1:])), ["--task", "subtype"], "subtype 'rcc' is not one of"),
    (None, ["--task", "subtype", "--shots", "30"], "--shots 30 needs at least 31"),
    (None, ["--task", "invasion", "--test-site", "site_z"], "test_site: 'site_z' is not a site"),
    (lambda t: t.assign(tumor_mask=["missing/tumor.nii.gz"] + list(t["tumor_mask"][1:])), ["--task", "subtype"],
     "tumor_mask file of case case_0000 (tumor.nii.gz) is missing"),
    (lambda t: t.drop(columns=["dce", "dce_times", "aif", "t10"]), ["--task", "subtype", "--features", "kinetic"],
     "kinetic features need the map columns"),
    (None, ["--task", "subtype", "--features", "image"], "the image block needs --encoder"),
    (None, ["--task", "subtype", "--features", "shape"], "unknown block(s) ['shape']"),
    (None, ["--task", "subtype", "--protocol", "svm"], "unknown protocol 'svm'"),
    (None, ["--task", "subtype", "--protocol", "finetune"], "finetune trains the encoder; add image"),
    (lambda t: t.assign(case_id=["x"] * len(t)), ["--task", "subtype"], "case_id 'x' appears more than once"),
])
def test_bad_input_is_one_sentence_and_leaves_nothing(cases, cache, tmp_path, capsys, edit, args, message):
    table = cases if edit is None else _edited(cases, tmp_path, edit)
    out = tmp_path / "out"
    code = main(["finetune", "--cases", str(table), "--out", str(out), "--cache", str(cache), "--features", "radiomic",
                 "--repeats", "2"] + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("make_mask, message", [
    (lambda mask, affine: (np.zeros_like(mask), affine), "the tumour mask of case case_0000 is empty"),
    (lambda mask, affine: (mask, affine @ np.diag([1, 1, 1.2, 1])), "the mask's affine differs from its image's"),
    (lambda mask, affine: (mask[:-2], affine), "the mask has shape (46, 48, 48), its image (48, 48, 48)"),
])
def test_a_bad_tumour_mask_is_one_sentence(cases, tmp_path, capsys, make_mask, message):
    import nibabel as nib

    table = pd.read_csv(cases, keep_default_na=False, dtype=str)
    original = nib.load(str(cases.parent / table["tumor_mask"][0]))
    mask, affine = make_mask(np.asarray(original.dataobj), original.affine)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(tmp_path / "bad_mask.nii.gz"))
    table.loc[0, "tumor_mask"] = str(tmp_path / "bad_mask.nii.gz")
    path = cases.parent / f"badmask_{tmp_path.name}.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "out"
    code = main(["finetune", "--cases", str(path), "--task", "subtype", "--features", "radiomic", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_an_encoder_with_other_channels_is_one_sentence(cases, tmp_path, capsys):
    from ssl_rcc.features.image import write_untrained_encoder

    encoder = write_untrained_encoder(tmp_path / "enc", architecture="resnet18", in_channels=1, patch=(16,) * 3, spacing_mm=6)
    code = main(["finetune", "--cases", str(cases), "--task", "subtype", "--features", "image", "--encoder", str(encoder),
                 "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "the image has 4 channels, the encoder takes 1" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_predict_refuses_what_is_not_a_model(cases, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "head.json").write_text(json.dumps({"format": "ssl-rcc-head/0"}))
    (tmp_path / "model" / "head.npz").write_bytes(b"")
    assert main(["predict", "--model", str(tmp_path / "model"), "--cases", str(cases), "--out", str(tmp_path / "p.csv")]) == 2
    assert "model format 'ssl-rcc-head/0'" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
    assert main(["predict", "--model", str(tmp_path), "--cases", str(cases), "--out", str(tmp_path / "p.csv")]) == 2
    assert "not a saved model" in capsys.readouterr().err


@pytest.mark.slow  # 20 s: finetune and predict twice
def test_a_lesion_model_records_its_preprocessing_and_predict_checks_it(cases, cache, tmp_path, capsys):
    out = tmp_path / "lesion"
    assert main(["finetune", "--cases", str(cases), "--task", "malignant", "--features", "lesion", "--shots", "all",
                 "--repeats", "2", "--protocol", "knn", "--out", str(out), "--cache", str(cache), "--n-boot", "30"]) == 0
    head = out / "model" / "head.json"
    description = json.loads(head.read_text())
    assert description["settings"]["lesion_preprocessing"]["spacing_mm"] == [1.5, 1.5, 1.5]  # the default, recorded
    assert main(["predict", "--model", str(out / "model"), "--cases", str(cases), "--out", str(tmp_path / "p.csv"),
                 "--cache", str(cache)]) == 0
    description["settings"]["lesion_preprocessing"]["spacing_mm"] = [2.0, 2.0, 2.0]  # made by another preprocessing
    head.write_text(json.dumps(description))
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model"), "--cases", str(cases), "--out", str(tmp_path / "q.csv"),
                 "--cache", str(cache)]) == 2
    assert "preprocessed otherwise" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()
