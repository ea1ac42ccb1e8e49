"""CMAGDetector: Algorithm 1 training, Algorithm 2 thresholds, scoring, extras."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError

from advdetect import CMAGDetector
from advdetect.models import SmallCNN

from .conftest import fgsm, invalid_parameter

FAST = dict(max_epochs=2, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def digits_det(digits_small, small_victim):
    X, _ = digits_small
    return CMAGDetector(FrozenEstimator(small_victim), **FAST).fit(X)


def test_fitted_attributes(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    assert det.feature_layer_ == "features.pool1"
    assert det.image_shape_ == (1, 8, 8) and det.n_features_in_ == 64
    assert set(det.thresholds_.index) == {"fmr", "lr", "gr"}
    # Defaults: FMR's SSIM and L2 tests and the two-sided confidence test, summed
    # (see the class docstring and benchmarks/bench_defaults.py).
    assert (det.stage, det.criterion, det.confidence_test, det.combine_tests) == (
        "fmr", "both", "two-sided", "sum")
    assert det.threshold_ssim_ == det.thresholds_.loc["fmr", "ssim"]
    assert det.confidence_threshold_ == pytest.approx(
        np.quantile(det.calibration_["confidence"], 0.01, method="lower"))
    assert len(det.calibration_) == round(0.2 * len(X))
    # The summed margins are cut at their own 1 % quantile on the calibration images.
    cal, thr = det.calibration_, det.thresholds_.loc["fmr"]
    conf = cal["confidence"]
    summed = ((cal["ssim_fmr"] - thr["ssim"]) / thr["ssim_scale"]
              + (thr["l2"] - cal["l2_fmr"]) / thr["l2_scale"]
              + np.minimum((conf - det.confidence_threshold_) / det.confidence_scale_,
                           (det.confidence_upper_threshold_ - conf) / det.confidence_upper_scale_))
    assert det.offset_ == pytest.approx(np.quantile(summed, 0.01, method="lower"))
    for name in ("feature_map_reconstructor_", "logit_reconstructor_", "global_reconstructor_"):
        assert not getattr(det, name).training


def test_reconstruct_stages(digits_det, digits_small):
    X, _ = digits_small
    for stage in ("fmr", "lr", "gr"):
        rec = digits_det.reconstruct(X[:7], stage=stage)
        assert rec.shape == (7, 1, 8, 8) and rec.dtype == np.float32
        assert rec.min() >= 0 and rec.max() <= 1
    with pytest.raises(ValueError, match="stage"):
        digits_det.reconstruct(X[:2], stage="xx")


def test_reconstruction_errors_frame(digits_det, digits_small):
    X, _ = digits_small
    frame = digits_det.reconstruction_errors(X[:9])
    assert isinstance(frame, pd.DataFrame) and len(frame) == 9
    for col in ("ssim", "l2", "ssim_fmr", "l2_lr", "ssim_gr", "confidence", "score", "decision",
                "is_adversarial"):
        assert col in frame
    np.testing.assert_allclose(frame["score"], digits_det.score_samples(X[:9]))
    np.testing.assert_array_equal(frame["is_adversarial"], digits_det.predict(X[:9]) == -1)
    # The L2 column is Eq. (3) on the scored stage's reconstruction (FMR by default).
    np.testing.assert_array_equal(frame["l2"], frame["l2_fmr"])
    rec = digits_det.reconstruct(X[:9], stage="fmr")
    np.testing.assert_allclose(frame["l2"], np.linalg.norm((rec - X[:9]).reshape(9, -1), axis=1),
                               rtol=1e-4)


def test_strict_thresholds_are_algorithm_2(digits_small, small_victim):
    X, _ = digits_small
    det = CMAGDetector.paper(small_victim, **FAST).fit(X)
    assert (det.stage, det.criterion, det.confidence_test) == ("gr", "both", False)
    frame = det.reconstruction_errors(X)
    # Thr_SSIM = min over the training set, Thr_L2 = max: no training image is flagged.
    assert det.threshold_ssim_ == pytest.approx(frame["ssim_gr"].min(), abs=1e-6)
    assert det.threshold_l2_ == pytest.approx(frame["l2_gr"].max(), rel=1e-5)
    assert (det.predict(X) == 1).all()


def test_criterion_semantics(digits_small, small_victim):
    X, _ = digits_small
    frames = {}
    for criterion in ("ssim", "l2", "both"):
        det = CMAGDetector(small_victim, criterion=criterion, stage="gr", confidence_test=False,
                           combine_tests="min",
                           threshold_quantile=0.1, **FAST)
        frames[criterion] = det.fit(X).reconstruction_errors(X)
        thr = det.thresholds_.loc["gr"]
        f = frames[criterion]
        fail_ssim = f["ssim_gr"] < thr["ssim"]
        fail_l2 = f["l2_gr"] > thr["l2"]
        expected = {"ssim": fail_ssim, "l2": fail_l2, "both": fail_ssim | fail_l2}[criterion]
        np.testing.assert_array_equal(f["is_adversarial"], expected)
    # "both" flags the union of the two single tests (same seed, same networks).
    union = frames["ssim"]["is_adversarial"] | frames["l2"]["is_adversarial"]
    np.testing.assert_array_equal(frames["both"]["is_adversarial"], union)


def test_confidence_test_flags_low_margins(digits_small, small_victim):
    X, _ = digits_small
    det = CMAGDetector(small_victim, stage="fmr", criterion="ssim", threshold_quantile=0.1,
                       confidence_test=True, combine_tests="min", **FAST).fit(X)
    f = det.reconstruction_errors(X)
    fail_ssim = f["ssim_fmr"] < det.threshold_ssim_
    fail_conf = f["confidence"] < det.confidence_threshold_
    assert fail_conf.any() and not fail_conf.all()
    np.testing.assert_array_equal(f["is_adversarial"], fail_ssim | fail_conf)
    # The margin is log p_max - log(1 - p_max), from the victim's logits.
    logits = small_victim.module_(torch.as_tensor(X[:20])).detach().double()
    p = torch.softmax(logits, 1).max(1).values
    np.testing.assert_allclose(f["confidence"][:20], torch.log(p / (1 - p)), rtol=1e-3, atol=1e-3)
    det.set_params(confidence_test=False).recalibrate()
    np.testing.assert_array_equal(det.predict(X) == -1, fail_ssim)


def test_recalibrate_matches_a_refit(digits_small, small_victim):
    """Threshold parameters act on kept calibration metrics: no retraining needed."""
    X, _ = digits_small
    det = CMAGDetector(FrozenEstimator(small_victim), **FAST).fit(X)
    params = dict(stage="gr", criterion="both", threshold_quantile=0.05, confidence_test=False)
    refit = clone(det).set_params(**params).fit(X)
    det.set_params(**params).recalibrate()
    pd.testing.assert_frame_equal(det.thresholds_, refit.thresholds_)
    np.testing.assert_allclose(det.score_samples(X[:30]), refit.score_samples(X[:30]), rtol=1e-6)
    det.set_params(threshold_quantile=0.9)
    with pytest.raises(InvalidParameterError, match=invalid_parameter("threshold_quantile", 0.9)):
        det.recalibrate()


def test_scoring_runs_only_the_scored_stage(digits_det, digits_small):
    X, _ = digits_small
    calls = {"fmr": 0, "lr": 0, "gr": 0}
    networks = {"fmr": "feature_map_reconstructor_", "lr": "logit_reconstructor_",
                "gr": "global_reconstructor_"}
    hooks = [getattr(digits_det, networks[s]).register_forward_hook(
        lambda *a, s=s: calls.__setitem__(s, calls[s] + 1)) for s in calls]
    try:
        digits_det.score_samples(X[:10])
        assert calls == {"fmr": 1, "lr": 0, "gr": 0}
        digits_det.reconstruction_errors(X[:10])  # every stage's metrics
        assert calls == {"fmr": 2, "lr": 1, "gr": 1}
    finally:
        for h in hooks:
            h.remove()


def test_paper_constructor():
    det = CMAGDetector.paper(SmallCNN(), max_epochs=3, mu_gr=0.2)
    params = det.get_params()
    for key, value in CMAGDetector.PAPER_PARAMS.items():
        if key != "mu_gr":
            assert params[key] == value
    assert params["mu_gr"] == 0.2 and params["max_epochs"] == 3
    assert isinstance(det.classifier, SmallCNN)


def test_stage_all_flags_union_of_stages(digits_small, small_victim):
    X, _ = digits_small
    det_all = CMAGDetector(FrozenEstimator(small_victim), stage="all", threshold_quantile=0.1,
                           combine_tests="min", **FAST).fit(X)
    flags = np.zeros(len(X), bool)
    for stage in ("fmr", "lr", "gr"):
        det = clone(det_all).set_params(stage=stage).fit(X)
        flags |= det.predict(X) == -1
    np.testing.assert_array_equal(det_all.predict(X) == -1, flags)


def test_combine_mean_differs_from_hadamard(digits_small, small_victim):
    X, _ = digits_small
    a = CMAGDetector(small_victim, **FAST).fit(X).reconstruct(X[:5], stage="gr")
    b = CMAGDetector(small_victim, combine="mean", **FAST).fit(X).reconstruct(X[:5], stage="gr")
    assert not np.allclose(a, b)


def test_same_seed_same_scores_other_seed_differs(digits_small, small_victim):
    X, _ = digits_small
    s1 = CMAGDetector(small_victim, **FAST).fit(X).score_samples(X[:20])
    s2 = CMAGDetector(small_victim, **FAST).fit(X).score_samples(X[:20])
    np.testing.assert_array_equal(s1, s2)
    s3 = CMAGDetector(small_victim, **dict(FAST, random_state=1)).fit(X).score_samples(X[:20])
    assert not np.allclose(s1, s3)


@pytest.mark.parametrize("param, value", [
    ("combine", "sum"), ("criterion", "ssim2"), ("stage", "x"), ("mu_gr", 1.5),
    ("temperature", 0), ("threshold_quantile", 0.7), ("max_epochs", 0),
    ("validation_fraction", 1.0), ("lr", -1.0),
])
def test_invalid_parameters(digits_small, param, value):
    X, _ = digits_small
    det = CMAGDetector(SmallCNN(), **FAST).set_params(**{param: value})
    with pytest.raises(InvalidParameterError, match=invalid_parameter(param, value)):
        det.fit(X[:20])


def test_probability_output_classifier(digits_small, small_victim):
    """A classifier that ends in softmax is read as probabilities, not logits."""
    X, _ = digits_small
    module = torch.nn.Sequential(small_victim.module_, torch.nn.Softmax(dim=1))
    det = CMAGDetector(module, feature_layer="0.features", **FAST).fit(X)
    assert det.classifier_output_ == "proba"
    ref = CMAGDetector(small_victim, **FAST).fit(X)
    assert ref.classifier_output_ == "logits"
    # Same seed, same LR input (log-probabilities are logits up to a constant).
    np.testing.assert_allclose(det.score_samples(X[:10]), ref.score_samples(X[:10]), rtol=1e-3,
                               atol=1e-3)


def test_end_to_end_mnist_fgsm_scores_lower(mnist_small, mnist_victim):
    """Fit on clean MNIST; FGSM eps=0.3 examples score lower than clean test images."""
    X_tr, _, X_te, y_te = mnist_small
    det = CMAGDetector(FrozenEstimator(mnist_victim), max_epochs=5, batch_size=32, device="cpu",
                       random_state=0).fit(X_tr)
    X_adv = fgsm(mnist_victim.module_, X_te, y_te, eps=0.3)
    clean, adv = det.score_samples(X_te), det.score_samples(X_adv)
    assert np.median(adv) < np.median(clean)
    y = np.r_[np.ones(len(clean)), -np.ones(len(adv))]
    # A briefly trained victim and detector: far from the benchmark's figures, but
    # a broken score (or a swapped sign) would put these near 0.5 or below.
    assert roc_auc_score(y, np.r_[clean, adv]) > 0.8
    assert np.mean(det.predict(X_adv) == -1) > 0.5
    assert np.mean(det.predict(X_te) == -1) < 0.2
    # The paper's scoring (GR, both tests) on the same networks ranks them too.
    det.set_params(stage="gr", criterion="both", confidence_test=False).recalibrate()
    assert roc_auc_score(y, np.r_[det.score_samples(X_te), det.score_samples(X_adv)]) > 0.8


# --------------------------------------------------------------------------- #
# input_range other than [0, 1] (issue 14, item 5)
# --------------------------------------------------------------------------- #
class _Divide255(torch.nn.Module):
    def forward(self, x):
        return x / 255.0


def test_input_range_0_255_trains_the_detector_of_scaled_images(digits_small, small_victim):
    # A classifier of 8-bit images (it divides by 255) and input_range=(0, 255):
    # the SSIM loss's L2 term and GR's Hadamard input are taken on [0, 1], so
    # training and the SSIM scores are those of the scaled images, L2 x 255.
    X = digits_small[0][:120]
    module = small_victim.module_
    unit = CMAGDetector(module, **FAST).fit(X)
    byte = CMAGDetector(torch.nn.Sequential(_Divide255(), module), input_range=(0, 255),
                        feature_layer="1." + unit.feature_layer_, **FAST).fit(X * 255)
    a, b = unit.reconstruction_errors(X), byte.reconstruction_errors(X * 255)
    for stage in ("fmr", "lr", "gr"):
        np.testing.assert_allclose(b[f"ssim_{stage}"], a[f"ssim_{stage}"], atol=1e-3)
        np.testing.assert_allclose(b[f"l2_{stage}"] / 255, a[f"l2_{stage}"], rtol=1e-3,
                                   atol=1e-4)
    np.testing.assert_allclose(byte.score_samples(X * 255), unit.score_samples(X), atol=1e-3)


def test_reconstruct_defaults_to_the_scored_stage(digits_det, digits_small):
    # Issue 14, item 11: the default used to be GR while FMR is scored.
    X = digits_small[0][:6]
    det = digits_det
    by_stage = {s: det.reconstruct(X, stage=s) for s in ("fmr", "lr", "gr")}
    assert not np.allclose(by_stage["fmr"], by_stage["gr"])
    np.testing.assert_array_equal(det.reconstruct(X), by_stage[det.stage])
    for stage, expected in (("lr", "lr"), ("gr", "gr"), ("all", "gr")):
        other = clone(det).set_params(stage=stage)
        # Same networks, another scored stage: no refit needed to read the default.
        other.__dict__.update({k: v for k, v in vars(det).items() if k.endswith("_")})
        np.testing.assert_array_equal(other.reconstruct(X), by_stage[expected])
def test_two_sided_confidence_test_flags_both_tails(digits_det, digits_small):
    """confidence_test="two-sided" also flags margins above the upper clean quantile."""
    X, _ = digits_small
    det = copy.copy(digits_det)  # the fitted networks, own parameters
    det.set_params(threshold_quantile=0.1, confidence_test="two-sided", criterion="ssim",
                   combine_tests="min").recalibrate()
    conf = det.calibration_["confidence"]
    assert det.confidence_upper_threshold_ == pytest.approx(np.quantile(conf, 0.9,
                                                                        method="higher"))
    f = det.reconstruction_errors(X)
    fail_ssim = f["ssim_fmr"] < det.threshold_ssim_
    low = f["confidence"] < det.confidence_threshold_
    high = f["confidence"] > det.confidence_upper_threshold_
    assert high.any() and low.any()
    np.testing.assert_array_equal(f["is_adversarial"], fail_ssim | low | high)
    # "lower" is the same as True, the one-sided test.
    det.set_params(confidence_test="lower").recalibrate()
    np.testing.assert_array_equal(det.predict(X) == -1, fail_ssim | low)
    det.set_params(confidence_test="both")
    with pytest.raises(InvalidParameterError, match=invalid_parameter("confidence_test", "both")):
        det.recalibrate()


def test_combine_tests_sum_adds_margins_and_thresholds_the_sum(digits_det, digits_small):
    X, _ = digits_small
    det = copy.copy(digits_det)  # the fitted networks, own parameters
    det.set_params(criterion="both", threshold_quantile=0.05, confidence_test=True,
                   combine_tests="min").recalibrate()
    f = det.reconstruction_errors(X)
    thr = det.thresholds_.loc["fmr"]
    margins = np.stack([(f["ssim_fmr"] - thr["ssim"]) / thr["ssim_scale"],
                        (thr["l2"] - f["l2_fmr"]) / thr["l2_scale"],
                        (f["confidence"] - det.confidence_threshold_) / det.confidence_scale_])
    np.testing.assert_allclose(f["score"], margins.min(axis=0), rtol=1e-5, atol=1e-6)
    assert det.offset_ == 0.0
    det.set_params(combine_tests="sum").recalibrate()
    f = det.reconstruction_errors(X)
    np.testing.assert_allclose(f["score"], margins.sum(axis=0), rtol=1e-5, atol=1e-5)
    # The sum is thresholded at its own 5 % quantile on the clean calibration images.
    cal = det.calibration_
    cal_margins = ((cal["ssim_fmr"] - thr["ssim"]) / thr["ssim_scale"]
                   + (thr["l2"] - cal["l2_fmr"]) / thr["l2_scale"]
                   + (cal["confidence"] - det.confidence_threshold_) / det.confidence_scale_)
    assert det.offset_ == pytest.approx(np.quantile(cal_margins, 0.05, method="lower"))
    np.testing.assert_array_equal(f["is_adversarial"], f["score"] < det.offset_)
    det.set_params(combine_tests="mean")
    with pytest.raises(InvalidParameterError, match=invalid_parameter("combine_tests", "mean")):
        det.recalibrate()


def test_paper_recipe_unchanged():
    det = CMAGDetector.paper()
    assert {k: det.get_params()[k] for k in ("stage", "criterion", "confidence_test",
                                             "combine_tests", "threshold_quantile",
                                             "validation_fraction", "combine")} == dict(
        stage="gr", criterion="both", confidence_test=False, combine_tests="min",
        threshold_quantile=0.0, validation_fraction=0.0, combine="hadamard")
    assert det.threshold_rule == "per-test"


def test_joint_threshold_rule_cuts_the_min_score_at_its_quantile(digits_det, digits_small):
    X, _ = digits_small
    det = copy.copy(digits_det)
    det.set_params(criterion="both", threshold_quantile=0.05, confidence_test=True,
                   combine_tests="min").recalibrate()
    per_test = det.score_samples(X)
    assert det.offset_ == 0.0
    det.set_params(threshold_rule="joint").recalibrate()
    # Same ranking, one cut: the 5 % quantile of the clean calibration min-margins.
    np.testing.assert_allclose(det.score_samples(X), per_test)
    cal = det.calibration_
    thr = det.thresholds_.loc["fmr"]
    m = np.minimum.reduce([(cal["ssim_fmr"] - thr["ssim"]) / thr["ssim_scale"],
                           (thr["l2"] - cal["l2_fmr"]) / thr["l2_scale"],
                           (cal["confidence"] - det.confidence_threshold_)
                           / det.confidence_scale_])
    assert det.offset_ == pytest.approx(np.quantile(m, 0.05, method="lower"))
    np.testing.assert_allclose(det.decision_function(X), per_test - det.offset_)
