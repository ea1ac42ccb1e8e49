"""Detection metrics and scorers: hand-computed values, sklearn identities, errors."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.metrics import get_scorer, roc_auc_score, roc_curve

from advdetect.metrics import (
    DETECTION_SCORERS,
    detection_rate,
    detection_rate_scorer,
    detection_report,
    detection_roc_auc,
    false_positive_rate,
    neg_false_positive_rate_scorer,
    roc_auc_scorer,
    tpr_at_1_fpr_scorer,
    tpr_at_5_fpr_scorer,
    tpr_at_fpr,
)


def _tpr_at_fpr_from_roc_curve(y, d, fpr):
    """Independent reference: best ROC point with FPR <= fpr, adversarial positive."""
    fprs, tprs, _ = roc_curve(np.asarray(y) == -1, -np.asarray(d, dtype=float),
                              drop_intermediate=False)
    return tprs[fprs <= fpr].max()


class FixedDetector(OutlierMixin, BaseEstimator):
    """Outlier-convention stub: decision = column 0, predict from column 1's sign."""

    def fit(self, X, y=None):
        self.offset_ = 0.0
        return self

    def score_samples(self, X):
        return np.asarray(X, dtype=float)[:, 0]

    def decision_function(self, X):
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        return np.where(np.asarray(X)[:, 1] < 0, -1, 1)


# --------------------------------------------------------------------------- #
# Hand-computed values
# --------------------------------------------------------------------------- #
def test_detection_rate_and_fpr_by_hand():
    y = [1, 1, 1, 1, -1, -1, -1]
    pred = [-1, 1, 1, 1, -1, 1, -1]
    assert detection_rate(y, pred) == pytest.approx(2 / 3)
    assert false_positive_rate(y, pred) == pytest.approx(1 / 4)
    # Perfect and useless detectors.
    assert detection_rate(y, y) == 1.0 and false_positive_rate(y, y) == 0.0
    assert detection_rate(y, [1] * 7) == 0.0 and false_positive_rate(y, [-1] * 7) == 1.0
    assert isinstance(detection_rate(y, pred), float)


def test_metrics_accept_float_and_column_labels():
    y = np.array([[1.0], [-1.0], [-1.0]])
    assert detection_rate(y, np.array([1.0, -1.0, 1.0])) == 0.5


def test_tpr_at_fpr_by_hand():
    y = [1] * 10 + [-1] * 4
    d = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, -0.5, 0.0, 0.15, 0.25]
    # 10 % of 10 clean: one false positive allowed, threshold 0.2 -> 3 of 4 flagged.
    assert tpr_at_fpr(y, d, fpr=0.1) == 0.75
    assert tpr_at_fpr(y, d, fpr=0.1, return_threshold=True) == (0.75, 0.2)
    # Less than one false positive: threshold at the lowest clean score, 0.1.
    assert tpr_at_fpr(y, d, fpr=0.05) == 0.5
    assert tpr_at_fpr(y, d, fpr=0.0) == 0.5
    # 20 %: threshold 0.3 -> all flagged.
    assert tpr_at_fpr(y, d, fpr=0.2) == 1.0
    assert tpr_at_fpr(y, d, fpr=1.0, return_threshold=True) == (1.0, np.inf)


def test_tpr_at_fpr_ties_are_flagged_together_and_pessimistic():
    # Two clean scores tie at 0.1: both or neither are flagged.
    y = [1, 1, 1, 1, -1, -1, -1]
    d = [0.1, 0.1, 0.3, 0.4, 0.05, 0.1, 0.2]
    # fpr=0.25 allows one clean sample, but the lowest two tie -> none flagged
    # (achieved FPR 0), and the adversarial sample tied at 0.1 is not detected.
    tpr, thr = tpr_at_fpr(y, d, fpr=0.25, return_threshold=True)
    assert (tpr, thr) == (pytest.approx(1 / 3), 0.1)
    # fpr=0.5 allows both tied clean samples: threshold 0.3, all adversarial below.
    assert tpr_at_fpr(y, d, fpr=0.5) == 1.0
    for f in (0.0, 0.25, 0.49, 0.5, 0.75, 1.0):
        assert tpr_at_fpr(y, d, fpr=f) == pytest.approx(_tpr_at_fpr_from_roc_curve(y, d, f))


def test_tpr_at_fpr_float_boundary_matches_roc_curve():
    # 0.29 * 100 == 28.999999999999996: 29 false positives out of 100 are still <= 0.29.
    rng = np.random.RandomState(1)
    y = np.r_[np.ones(100, int), -np.ones(50, int)]
    d = np.r_[np.arange(100) / 100.0, rng.uniform(0, 0.5, 50)]
    for f in (0.07, 0.29, 0.57, 0.58):
        assert tpr_at_fpr(y, d, fpr=f) == pytest.approx(_tpr_at_fpr_from_roc_curve(y, d, f))
    _, thr = tpr_at_fpr(y, d, fpr=0.29, return_threshold=True)
    assert np.sum(d[y == 1] < thr) == 29


@pytest.mark.parametrize("seed", range(6))
def test_tpr_at_fpr_matches_roc_curve_on_random_data(seed):
    rng = np.random.RandomState(seed)
    n_clean, n_adv = rng.randint(5, 120), rng.randint(1, 60)
    y = rng.permutation(np.r_[np.ones(n_clean, int), -np.ones(n_adv, int)])
    # Rounded scores: plenty of ties within and across classes.
    d = np.round(rng.normal(size=y.size) + 0.8 * (y == 1), 1)
    for f in np.r_[0.0, 0.01, 0.05, 0.1, 0.333, 0.5, 1.0, rng.uniform(size=5)]:
        tpr, thr = tpr_at_fpr(y, d, fpr=f, return_threshold=True)
        assert tpr == pytest.approx(_tpr_at_fpr_from_roc_curve(y, d, f), abs=1e-12)
        # The returned threshold realises the operating point.
        assert np.mean(d[y == 1] < thr) <= f
        assert np.mean(d[y == -1] < thr) == pytest.approx(tpr)


def test_detection_roc_auc_by_hand():
    assert detection_roc_auc([1, 1, -1, -1], [0.9, 0.1, 0.2, -0.3]) == 0.75
    assert detection_roc_auc([1, -1], [1.0, 0.0]) == 1.0
    assert detection_roc_auc([1, -1], [0.0, 1.0]) == 0.0
    assert detection_roc_auc([1, -1], [0.5, 0.5]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_detection_roc_auc_equals_sklearn_roc_auc_with_plus_one_positive(seed):
    rng = np.random.RandomState(seed)
    y = rng.choice([1, -1], size=80)
    y[:2] = [1, -1]
    d = np.round(rng.normal(size=80) + 0.5 * y, 1)
    ours = detection_roc_auc(y, d)
    assert ours == pytest.approx(roc_auc_score(y, d), abs=1e-12)
    assert ours == pytest.approx(roc_auc_score(y == -1, -d), abs=1e-12)


def test_detection_report_by_hand():
    y = [1, 1, 1, -1, -1]
    d = [0.3, 0.1, -0.1, -0.2, 0.2]
    report = detection_report(y, d)
    assert report == {
        "n_samples": 5, "n_clean": 3, "n_adversarial": 2,
        "n_detected": 1, "n_false_positives": 1,
        "roc_auc": pytest.approx(4 / 6),
        "tpr_at_1_fpr": 0.5, "tpr_at_5_fpr": 0.5,
        "detection_rate": 0.5, "false_positive_rate": pytest.approx(1 / 3),
    }
    # A decision of exactly 0 is clean, as in scikit-learn's outlier detectors.
    assert detection_report([1, -1], [0.0, -1.0])["false_positive_rate"] == 0.0
    # An explicit y_pred overrides the sign of the decision.
    report = detection_report(y, d, y_pred=[1, 1, 1, 1, 1])
    assert report["detection_rate"] == 0.0 and report["n_detected"] == 0
    assert report["roc_auc"] == pytest.approx(4 / 6)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("bad", [[0, 1, 1, 0], [1, 2, 1, 2], [True, False, True, False],
                                 ["clean", "adv", "adv", "clean"]])
def test_bad_labels_raise(bad):
    good = [1, -1, -1, 1]
    with pytest.raises(ValueError, match=r"\+1 \(clean\) and -1 \(adversarial\)"):
        detection_rate(bad, good)
    with pytest.raises(ValueError, match="y_true"):
        detection_roc_auc(bad, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="y_true"):
        tpr_at_fpr(bad, [0.1, 0.2, 0.3, 0.4])


def test_zero_one_labels_get_a_hint():
    with pytest.raises(ValueError, match="0/1"):
        false_positive_rate([0, 1, 1], [1, 1, -1])
    with pytest.raises(ValueError, match="y_pred"):
        detection_rate([1, -1, -1], [1, 0, 0])


def test_missing_class_raises():
    with pytest.raises(ValueError, match="adversarial"):
        detection_rate([1, 1, 1], [1, -1, 1])
    with pytest.raises(ValueError, match="clean"):
        false_positive_rate([-1, -1], [1, -1])
    for fn in (tpr_at_fpr, detection_roc_auc, detection_report):
        with pytest.raises(ValueError, match="adversarial"):
            fn([1, 1, 1], [0.1, 0.2, 0.3])
        with pytest.raises(ValueError, match="clean"):
            fn([-1, -1], [0.1, 0.2])


def test_other_input_errors():
    with pytest.raises(ValueError):
        detection_rate([1, -1, 1], [1, -1])
    with pytest.raises(ValueError, match="empty"):
        detection_rate([], [])
    with pytest.raises(ValueError, match="NaN"):
        detection_roc_auc([1, -1], [0.1, np.nan])
    for f in (-0.01, 1.5, "0.05", True, None):
        with pytest.raises(ValueError, match="fpr"):
            tpr_at_fpr([1, -1], [0.1, 0.2], fpr=f)


# --------------------------------------------------------------------------- #
# Scorers
# --------------------------------------------------------------------------- #
def _stub_data():
    # decision (col 0): 4 clean, 4 adversarial; predict (col 1) disagrees on purpose.
    decision = [0.5, 0.4, 0.3, -0.1, -0.2, 0.35, -0.6, -0.7]
    pred_sign = [1, 1, 1, 1, -1, 1, 1, 1]
    X = np.c_[decision, pred_sign].astype(float)
    y = np.array([1, 1, 1, 1, -1, -1, -1, -1])
    return FixedDetector().fit(X), X, y


def test_scorers_use_the_right_response_and_sign():
    det, X, y = _stub_data()
    d, pred = X[:, 0], det.predict(X)
    assert detection_rate_scorer(det, X, y) == detection_rate(y, pred) == 0.25
    assert false_positive_rate(y, pred) == 0.0
    assert neg_false_positive_rate_scorer(det, X, y) == 0.0
    assert tpr_at_1_fpr_scorer(det, X, y) == tpr_at_fpr(y, d, fpr=0.01)
    assert tpr_at_5_fpr_scorer(det, X, y) == tpr_at_fpr(y, d, fpr=0.05)
    assert roc_auc_scorer(det, X, y) == detection_roc_auc(y, d)

    # The false positive rate is negated: more false positives, lower score.
    X_fp = X.copy()
    X_fp[:2, 1] = -1
    assert false_positive_rate(y, det.predict(X_fp)) == 0.5
    assert neg_false_positive_rate_scorer(det, X_fp, y) == -0.5


def test_roc_auc_scorer_equals_sklearn_roc_auc_string():
    det, X, y = _stub_data()
    assert roc_auc_scorer(det, X, y) == pytest.approx(get_scorer("roc_auc")(det, X, y))
    from sklearn.ensemble import IsolationForest
    rng = np.random.RandomState(0)
    Xc, Xa = rng.normal(size=(40, 2)), rng.normal(1.5, 1, size=(20, 2))
    iso = IsolationForest(n_estimators=10, random_state=0).fit(Xc)
    X2, y2 = np.r_[Xc, Xa], np.r_[np.ones(40), -np.ones(20)]
    assert roc_auc_scorer(iso, X2, y2) == pytest.approx(get_scorer("roc_auc")(iso, X2, y2))


def test_scorers_are_greater_is_better():
    y = np.array([1, 1, 1, 1, -1, -1, -1, -1])
    good = FixedDetector().fit(None)
    X_good = np.c_[y * 1.0, y * 1.0]       # perfect decision and prediction
    X_bad = np.c_[-y * 1.0, -y * 1.0]      # inverted detector
    for name, scorer in DETECTION_SCORERS.items():
        assert scorer(good, X_good, y) > scorer(good, X_bad, y), name
    assert DETECTION_SCORERS["neg_false_positive_rate"](good, X_good, y) == 0.0
    assert DETECTION_SCORERS["neg_false_positive_rate"](good, X_bad, y) == -1.0


def test_detection_scorers_dict():
    assert set(DETECTION_SCORERS) == {"roc_auc", "tpr_at_1_fpr", "tpr_at_5_fpr",
                                      "detection_rate", "neg_false_positive_rate"}
    assert DETECTION_SCORERS["roc_auc"] is roc_auc_scorer
    assert DETECTION_SCORERS["neg_false_positive_rate"] is neg_false_positive_rate_scorer
    assert "greater_is_better=False" in repr(neg_false_positive_rate_scorer)
    assert "fpr=0.01" in repr(tpr_at_1_fpr_scorer)


def test_scorer_with_bad_labels_raises():
    det, X, _ = _stub_data()
    with pytest.raises(ValueError, match="0/1"):
        roc_auc_scorer(det, X, np.array([0, 0, 0, 0, 1, 1, 1, 1]))
