"""Few-label heads, draws and metrics on planted data: metrics equal scikit-learn's, draws are
stratified and paired, a noise block does not drag the fused probe down, saved heads predict alike."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from kinetics.roi_stats import roi_statistics
from ssl_rcc.errors import InputError
from ssl_rcc.finetune import KnnHead, ProbeHead, evaluate_draws, few_label_draws, parse_shots
from ssl_rcc.finetune.heads import _logit_proba, head_from_state, youden_threshold
from ssl_rcc.finetune.metrics import auc_rows, bootstrap_metrics, expected_calibration_error, point_metrics


def test_roi_statistics_of_planted_maps():
    ktrans = np.zeros((4, 4, 2))
    ktrans[:2] = np.arange(16).reshape(2, 4, 2) / 100  # 0.00 .. 0.15 /min inside the ROI
    mask = np.zeros_like(ktrans, bool)
    mask[:2] = True
    ok = mask.copy()
    ok[0, 0, 0] = False  # the 0.00 voxel failed
    ve = np.where(mask, 0.3, np.nan)
    stats = roi_statistics({"ktrans": ktrans, "ve": ve}, mask, fit_ok=ok)
    inside = np.arange(1, 16) / 100
    assert stats["ktrans_mean"] == pytest.approx(inside.mean())
    assert stats["ktrans_median"] == pytest.approx(np.median(inside))
    assert stats["ktrans_p10"] == pytest.approx(np.percentile(inside, 10))
    assert stats["ktrans_iqr"] == pytest.approx(np.percentile(inside, 75) - np.percentile(inside, 25))
    assert stats["ve_p90"] == pytest.approx(0.3) and stats["fit_ok_fraction"] == pytest.approx(15 / 16)
    assert np.isnan(roi_statistics({"vp": np.full(mask.shape, np.nan)}, mask)["vp_mean"])
    with pytest.raises(ValueError, match="selects no voxel"):
        roi_statistics({"ktrans": ktrans}, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        roi_statistics({"ktrans": ktrans[:3]}, mask)


def test_vectorised_auc_equals_scikit_learn_with_ties(rng):
    for n_classes in (2, 5):
        y = rng.integers(0, n_classes, 60)
        proba = rng.dirichlet(np.ones(n_classes), 60).round(1)  # rounding makes ties
        proba /= proba.sum(1, keepdims=True)
        expected = roc_auc_score(y, proba[:, 1]) if n_classes == 2 else roc_auc_score(y, proba, multi_class="ovr", average="macro")
        assert auc_rows(y, proba, n_classes)[0] == pytest.approx(expected, abs=1e-12)
        resamples = rng.integers(0, 60, size=(5, 60))
        boot = auc_rows(y[resamples], proba[resamples], n_classes)
        for row, b in zip(resamples, boot):
            if n_classes == 2:
                assert b == pytest.approx(roc_auc_score(y[row], proba[row, 1]), abs=1e-12)


def test_binary_metrics_by_hand_and_calibration():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.4, 0.7, 0.8, 0.6, 0.3, 0.9, 0.2])
    m = point_metrics(y, np.stack([1 - p1, p1], 1), 0.5, 2)
    # predicted positive: 0.7 (FP), 0.8, 0.6, 0.9 (TP); negatives 0.1, 0.4, 0.2 (TN), 0.3 (FN)
    assert (m["sensitivity"], m["specificity"], m["ppv"], m["npv"]) == (0.75, 0.75, 0.75, 0.75)
    assert m["balanced_accuracy"] == 0.75 and m["auc"] == pytest.approx(roc_auc_score(y, p1))
    calibrated = np.repeat([[0.8, 0.2]], 10, axis=0)  # P(positive) 0.2 and 2 of 10 positive
    assert expected_calibration_error(np.array([1, 1] + [0] * 8), calibrated, 2)[0] == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(10, int), calibrated, 2)[0] == pytest.approx(0.8)
    boots = bootstrap_metrics(y, np.stack([1 - p1, p1], 1), 0.5, 2, np.arange(8)[None])
    assert boots["sensitivity"][0] == 0.75


def test_draws_are_stratified_paired_and_checked():
    labels = np.array(["a"] * 12 + ["b"] * 8 + [""] * 3)
    sites = np.array(["s1", "s2"] * 11 + ["s1"])
    draws = few_label_draws(labels, sites, classes=("a", "b"), shots=3, repeats=4, seed=1)
    again = few_label_draws(labels, sites, classes=("a", "b"), shots=3, repeats=4, seed=1)
    for d, e in zip(draws, again):
        np.testing.assert_array_equal(d.train, e.train)
        assert sorted(labels[d.train]) == ["a"] * 3 + ["b"] * 3
        assert not set(d.train) & set(d.test) and "" not in labels[d.test] and len(d.test) == 20 - 6
    assert len({tuple(d.train) for d in draws}) > 1
    external = few_label_draws(labels, sites, classes=("a", "b"), shots="all", repeats=1, test_site="s2")[0]
    assert set(sites[external.test]) == {"s2"} and set(sites[external.train]) == {"s1"}
    with pytest.raises(InputError, match="class 'b' has 8 labelled cases; --shots 8 needs at least 9"):
        few_label_draws(labels, sites, classes=("a", "b"), shots=8, repeats=1)
    with pytest.raises(InputError, match="test_site: 's9' is not a site"):
        few_label_draws(labels, sites, classes=("a", "b"), shots=2, repeats=1, test_site="s9")
    assert parse_shots("5,10,all") == [5, 10, "all"]
    with pytest.raises(InputError, match="neither a whole number"):
        parse_shots("five")


def planted(rng, n=120, noise_dims=300):
    y = np.array(["low", "high"])[rng.integers(0, 2, n)]
    signal = rng.normal(size=(n, 4)) + 1.2 * (y == "high")[:, None]
    return y, {"signal": signal, "noise": rng.normal(size=(n, noise_dims))}


def test_probe_matches_scikit_learn_and_saves_exactly(rng):
    y, blocks = planted(rng)
    one = {"signal": blocks["signal"]}
    head = ProbeHead(("low", "high")).fit(one, y)
    x = head.scaler.transform(one, ["signal"])
    reference = LogisticRegression(C=head.members[0][1], class_weight="balanced", max_iter=500).fit(x, y == "high")
    np.testing.assert_allclose(head.predict_proba(one), reference.predict_proba(x), atol=1e-4)
    np.testing.assert_allclose(_logit_proba(x, *head.coefs[0]), reference.predict_proba(x), atol=1e-4)
    for fusion in ("late", "early"):
        head = ProbeHead(("low", "high"), fusion=fusion).fit(blocks, y)
        meta, arrays = head.state()
        np.testing.assert_array_equal(head_from_state(meta, arrays).predict_proba(blocks), head.predict_proba(blocks))
        assert head.predict_proba(blocks)[:, 1][y == "high"].mean() > 0.6
    knn = KnnHead(("low", "high")).fit(blocks, y)
    meta, arrays = knn.state()
    np.testing.assert_array_equal(head_from_state(meta, arrays).predict_proba(blocks), knn.predict_proba(blocks))
    assert youden_threshold(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.3, 0.9])) == 0.3


def test_a_noise_block_does_not_drag_the_fused_probe_down(rng):
    """A 300-feature block of pure noise beside a 4-feature informative one: the probe weighs each
    block by its inner cross-validated AUC, so the noise block costs the fusion little (0.007-0.03 AUC
    seen with 10 labels per class, where a noise block reaches an inner AUC of 0.6 by chance) and the
    fusion beats the noise block, paired."""
    y, blocks = planted(rng)
    result = evaluate_draws(blocks, y, np.full(len(y), "s"), classes=("low", "high"), protocol="probe", shots=10,
                            repeats=8, seed=0, n_boot=50)
    auc = {name: result["sets"][name]["auc"]["mean"] for name in result["sets"]}
    print("planted AUCs:", auc, "chosen:", result["chosen"])
    assert auc["signal"] > 0.75 and auc["noise"] < 0.65
    assert auc["signal+noise"] >= auc["signal"] - 0.04
    assert "noise" not in result["chosen"]  # the noise block is never kept alone
    lo, hi = result["differences"]["noise"]["ci95"]
    assert lo > 0  # fusion beats the noise block, paired
    assert set(result["predictions"]["role"]) == {"test"}
    knn = evaluate_draws(blocks, y, np.full(len(y), "s"), classes=("low", "high"), protocol="knn", shots=10, repeats=4,
                         seed=0, n_boot=50)
    assert knn["sets"]["signal"]["auc"]["mean"] > 0.7


@pytest.mark.slow
def test_end_to_end_head_learns_a_planted_lesion_and_saves_exactly(rng):
    """Crops whose class is a bright core: the encoder trained end to end separates unseen crops."""
    import torch

    from ssl_rcc.finetune.endtoend import FinetuneHead
    from ssl_rcc.models import build_encoder

    def crops(n):
        y = np.array(["no", "yes"])[np.arange(n) % 2]
        x = rng.normal(0.4, 0.1, size=(n, 1, 16, 16, 16)).astype(np.float32)
        x[y == "yes", :, 5:11, 5:11, 5:11] += 0.5
        return x, y

    torch.manual_seed(0)  # the encoder's initialisation; the head seeds its own training
    encoder = build_encoder("resnet18", in_channels=1, patch=(16, 16, 16))
    x, y = crops(32)
    head = FinetuneHead(("no", "yes"), encoder_config=encoder.config(), encoder_state=encoder.state_dict(), epochs=15,
                        batch_size=8, seed=0).fit({"image": x}, y)
    x_new, y_new = crops(20)
    proba = head.predict_proba({"image": x_new})
    assert roc_auc_score(y_new == "yes", proba[:, 1]) > 0.9
    meta, arrays = head.state()
    np.testing.assert_allclose(head_from_state(meta, arrays).predict_proba({"image": x_new}), proba, atol=1e-6)
