"""Cloning, model selection, pipelines and seeds with a pretrained classifier.

Every detector protects a classifier that was trained beforehand. scikit-learn's
model selection clones the detector for every candidate and split (and with
``n_jobs=2`` pickles it into worker processes); wrapped in ``FrozenEstimator``
the classifier keeps its weights through all of that. The searches here run on
a detection data set of clean 8x8 digits and their FGSM examples, split by
:class:`~advdetect.model_selection.CleanTrainSplit` (clean-only training folds)
and scored with :mod:`advdetect.metrics`.
"""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import uniform
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, make_scorer
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.validation import check_is_fitted

from advdetect import (CMAGDetector, DAFARDetector, DefenseGANDetector, FeatureSqueezingDetector,
                       MagNetDetector)
from advdetect.base import unwrap_classifier
from advdetect.metrics import (DETECTION_SCORERS, detection_rate_scorer, detection_roc_auc,
                               neg_false_positive_rate_scorer, roc_auc_scorer)
from advdetect.model_selection import CleanTrainSplit, make_detection_dataset

from .conftest import build, fgsm

# Cheap settings per detector (as in the detectors' own test modules).
FAST = {
    CMAGDetector: dict(max_epochs=2, device="cpu", random_state=0),
    DAFARDetector: dict(max_epochs=1, anomaly_max_epochs=2, device="cpu", random_state=0),
    MagNetDetector: dict(max_epochs=1, device="cpu", random_state=0),
    FeatureSqueezingDetector: dict(device="cpu", random_state=0),
    DefenseGANDetector: dict(max_epochs=1, width=4, latent_dim=4, n_restarts=2, n_steps=3,
                             device="cpu", random_state=0),
}
DETECTORS = list(FAST)
IDS = [cls.__name__ for cls in DETECTORS]

# Enough training for the detectors to detect (small batches: many Adam steps on
# few images); the searches compare candidates, so the candidates must work.
TRAINED = dict(max_epochs=5, batch_size=16, device="cpu", random_state=0)
BALANCED_ACCURACY = make_scorer(balanced_accuracy_score)


# --------------------------------------------------------------------------- #
# Helpers (module level: picklable, for FunctionTransformer and worker processes)
# --------------------------------------------------------------------------- #
def _to_images(X):
    return np.asarray(X).reshape(len(X), 1, 8, 8)


def _to_unit_range(X):
    """Raw digits hold 0..16."""
    return np.asarray(X) / 16.0


def _flatten(X):
    return np.asarray(X).reshape(len(X), -1)


def _logits(classifier, X):
    with torch.no_grad():
        return unwrap_classifier(classifier)(torch.as_tensor(X)).numpy()


def _networks(det):
    """The detector's own trained networks (not the frozen classifier copy)."""
    return {name: m for name, m in vars(det).items()
            if name.endswith("_") and name != "classifier_" and isinstance(m, torch.nn.Module)}


def _fitted_attributes(det):
    return [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]


def _build(cls, classifier, **params):
    return build(cls, classifier, **{**FAST[cls], **params})


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def digits_all():
    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


@pytest.fixture(scope="module")
def trained_victim(digits_all):
    """A digits CNN that classifies (92 % on held-out digits), unlike ``small_victim``.

    ``small_victim`` (5 epochs of 3 Adam steps) is right on 28 % of its own
    training digits, so FGSM against it is no attack worth detecting (CMAG ranked
    such FGSM digits at or below chance). This one is trained on the first 1,000
    digits; the detection data below are digits it has not seen.
    """
    from advdetect.models import train_classifier

    X, y = digits_all
    return train_classifier(X[:1000], y[:1000], max_epochs=8, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def detection_data(digits_all, trained_victim):
    """``(X, y, groups)`` for the search and ``(X, y)`` held out, FGSM eps = 0.2."""
    X, labels = digits_all
    module = trained_victim.module_

    def dataset(sl):
        clean = X[sl]
        return make_detection_dataset(clean, fgsm(module, clean, labels[sl], eps=0.2))

    X_search, y_search, groups = dataset(slice(1000, 1180))
    X_held, y_held, _ = dataset(slice(1180, 1300))
    # The attack works: the victim misclassifies most FGSM examples.
    adv = X_search[y_search == -1]
    assert np.mean(trained_victim.predict(adv) == labels[1000:1180]) < 0.3
    return (X_search, y_search, groups), (X_held, y_held)


# --------------------------------------------------------------------------- #
# clone
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls", DETECTORS, ids=IDS)
def test_clone_keeps_the_frozen_classifier_and_is_unfitted(cls, digits_small, small_victim):
    X, _ = digits_small
    reference = _logits(small_victim, X[:50])
    det = _build(cls, FrozenEstimator(small_victim)).fit(X[:120])
    twin = clone(det)

    # The clone is unfitted: no fitted attribute, and it refuses to predict.
    assert _fitted_attributes(twin) == []
    with pytest.raises(NotFittedError):
        check_is_fitted(twin)
    with pytest.raises(NotFittedError):
        twin.predict(X[:2])
    params, twin_params = det.get_params(), twin.get_params()
    assert params.keys() == twin_params.keys()
    assert {k: v for k, v in twin_params.items() if k != "classifier"} == \
        {k: v for k, v in params.items() if k != "classifier"}

    # Its classifier is the trained one: same logits, through a clone of the clone
    # and a pickle round trip (what GridSearchCV(n_jobs=2) sends to its workers).
    shipped = pickle.loads(pickle.dumps(clone(twin)))
    for copy in (twin, clone(twin), shipped):
        if "classifier" not in params:  # model-agnostic (MagNet, Defense-GAN): none to keep
            continue
        assert isinstance(copy.classifier, FrozenEstimator)
        np.testing.assert_array_equal(_logits(copy.classifier, X[:50]), reference)
    if hasattr(det, "classifier_"):  # MagNet never reads the classifier
        np.testing.assert_array_equal(_logits(det.classifier_.module, X[:50]), reference)

    # Fitting the clones reproduces the original detector: weights and seed survived.
    expected = det.score_samples(X[120:170])
    np.testing.assert_array_equal(twin.fit(X[:120]).score_samples(X[120:170]), expected)
    np.testing.assert_array_equal(shipped.fit(X[:120]).score_samples(X[120:170]), expected)
    # ... and fitting left the shared classifier untouched.
    np.testing.assert_array_equal(_logits(small_victim, X[:50]), reference)


# --------------------------------------------------------------------------- #
# GridSearchCV
# --------------------------------------------------------------------------- #
def test_grid_search_cmag_weights_temperature_and_thresholds(detection_data, trained_victim):
    (X, y, groups), (X_held, y_held) = detection_data
    det = CMAGDetector(FrozenEstimator(trained_victim), **TRAINED)
    grid = [
        # FMR's SSIM and the one-sided confidence test (the former defaults) at two
        # SSIM/L2 weights, with the thresholds relaxed to the 5 % quantile ...
        {"mu_fmr": [0.0, 1.0], "threshold_quantile": [0.05], "criterion": ["ssim"],
         "confidence_test": [True], "combine_tests": ["min"]},
        # ... and LR alone without the confidence test, at two temperatures: weak.
        {"stage": ["lr"], "confidence_test": [False], "temperature": [1.0, 10.0]},
    ]
    search = GridSearchCV(det, grid, scoring=roc_auc_scorer, refit=True, error_score="raise",
                          cv=CleanTrainSplit(2, shuffle=True, random_state=0), n_jobs=2)
    search.fit(X, y, groups=groups)

    res = search.cv_results_
    scores = res["mean_test_score"]
    assert len(scores) == 4 and np.all(np.isfinite(scores))
    assert np.all((scores >= 0) & (scores <= 1))
    assert search.best_index_ == int(np.argmax(scores))
    assert search.best_params_ == res["params"][int(np.argmax(scores))]
    assert search.best_score_ == scores.max() > scores.min()
    # The candidates differ by more than noise between folds.
    assert scores.max() - scores.min() > 2 * res["std_test_score"].max()

    # The refit detector was trained on the clean rows only (the base class drops
    # y == -1), exactly like a detector fitted on them directly.
    best = search.best_estimator_
    assert best.get_params()["mu_fmr"] == search.best_params_.get("mu_fmr", 0.5)
    direct = clone(det).set_params(**search.best_params_).fit(X[y == 1])
    np.testing.assert_array_equal(best.score_samples(X_held), direct.score_samples(X_held))

    # On new data the best candidate beats the worst one.
    pred = best.predict(X_held)
    assert pred.shape == y_held.shape and set(np.unique(pred)) <= {-1, 1}
    worst = clone(det).set_params(**res["params"][int(np.argmin(scores))]).fit(X, y)
    best_auc = detection_roc_auc(y_held, best.decision_function(X_held))
    worst_auc = detection_roc_auc(y_held, worst.decision_function(X_held))
    assert best_auc > 0.6
    assert best_auc > worst_auc + 0.1
    assert search.score(X_held, y_held) == pytest.approx(best_auc)


def test_grid_search_dafar_z_with_threshold_dependent_scorers(detection_data, trained_victim):
    (X, y, groups), (X_held, y_held) = detection_data
    det = DAFARDetector(FrozenEstimator(trained_victim), **dict(TRAINED, max_epochs=8,
                                                                 anomaly_max_epochs=16))
    scoring = {"balanced_accuracy": BALANCED_ACCURACY, "roc_auc": roc_auc_scorer,
               "detection_rate": detection_rate_scorer,
               "neg_false_positive_rate": neg_false_positive_rate_scorer}
    zs = [-1.0, 1.0, 10.0]
    search = GridSearchCV(det, {"z": zs}, scoring=scoring, refit="balanced_accuracy",
                          error_score="raise", n_jobs=2,
                          cv=CleanTrainSplit(3, shuffle=True, random_state=0))
    search.fit(X, y, groups=groups)
    res = search.cv_results_
    assert [p["z"] for p in res["params"]] == zs

    for k in range(3):
        split = {name: res[f"split{k}_test_{name}"] for name in scoring}
        # z only moves the threshold: the same networks in every candidate of a
        # split (one seed), so ROC-AUC cannot tell the candidates apart ...
        assert np.all(split["roc_auc"] == split["roc_auc"][0])
        # ... while a higher threshold flags fewer inputs, clean or adversarial.
        assert np.all(np.diff(split["detection_rate"]) <= 0)
        assert np.all(np.diff(split["neg_false_positive_rate"]) >= 0)
        # Balanced accuracy is the mean of the TPR and the TNR.
        np.testing.assert_allclose(
            split["balanced_accuracy"],
            (split["detection_rate"] + 1 + split["neg_false_positive_rate"]) / 2)
    # z = -1 flags most clean images, z = 10 nothing: the middle z wins.
    assert res["mean_test_neg_false_positive_rate"][0] < -0.5
    assert res["mean_test_detection_rate"][-1] < 0.1
    bacc = res["mean_test_balanced_accuracy"]
    assert search.best_params_ == {"z": 1.0} and search.best_index_ == int(np.argmax(bacc))
    assert search.best_score_ == bacc.max() > bacc.min() + 0.05

    best = search.best_estimator_
    assert best.z == 1.0 and best.threshold_ == -best.offset_
    held = balanced_accuracy_score(y_held, best.predict(X_held))
    worst = clone(det).set_params(z=zs[int(np.argmin(bacc))]).fit(X, y)
    assert held > balanced_accuracy_score(y_held, worst.predict(X_held))


# --------------------------------------------------------------------------- #
# RandomizedSearchCV and cross_validate
# --------------------------------------------------------------------------- #
def test_randomized_search_over_the_threshold_quantile(detection_data, trained_victim):
    (X, y, groups), (X_held, y_held) = detection_data
    det = CMAGDetector(FrozenEstimator(trained_victim), **FAST[CMAGDetector])
    search = RandomizedSearchCV(det, {"threshold_quantile": uniform(0.0, 0.3)}, n_iter=3,
                                scoring=DETECTION_SCORERS, refit="roc_auc", random_state=0,
                                error_score="raise",
                                cv=CleanTrainSplit(2, shuffle=True, random_state=0))
    search.fit(X, y, groups=groups)
    res = search.cv_results_
    qs = np.array([p["threshold_quantile"] for p in res["params"]])
    assert len(np.unique(qs)) == 3 and np.all((qs >= 0) & (qs < 0.3))
    for name in DETECTION_SCORERS:
        values = np.concatenate([res[f"split{k}_test_{name}"] for k in range(2)])
        assert np.all(np.isfinite(values))
        low, high = (-1, 0) if name.startswith("neg_") else (0, 1)
        assert np.all((values >= low) & (values <= high)), name
    # The quantile only moves the thresholds: per split, a larger quantile flags
    # a superset of the inputs (same networks), so both rates can only grow.
    order = np.argsort(qs)
    for k in range(2):
        assert np.all(np.diff(res[f"split{k}_test_detection_rate"][order]) >= 0)
        assert np.all(np.diff(res[f"split{k}_test_neg_false_positive_rate"][order]) <= 0)
    best = search.best_estimator_
    assert best.threshold_quantile == search.best_params_["threshold_quantile"]
    assert best.predict(X_held).shape == y_held.shape


@pytest.mark.parametrize("cls", DETECTORS, ids=IDS)
def test_cross_validate_with_the_detection_scorers(cls, detection_data, trained_victim):
    (X, y, groups), _ = detection_data
    det = _build(cls, FrozenEstimator(trained_victim))
    cv = CleanTrainSplit(2, shuffle=True, random_state=0)
    res = cross_validate(det, X, y, groups=groups, cv=cv, scoring=DETECTION_SCORERS,
                         error_score="raise")
    for name in DETECTION_SCORERS:
        values = res[f"test_{name}"]
        assert values.shape == (2,) and np.all(np.isfinite(values))
        low, high = (-1, 0) if name.startswith("neg_") else (0, 1)
        assert np.all((values >= low) & (values <= high)), name
    # The first split, by hand: train on its clean rows, score its test rows.
    train, test = next(cv.split(X, y, groups))
    assert np.all(y[train] == 1)
    fitted = clone(det).fit(X[train])
    assert res["test_roc_auc"][0] == detection_roc_auc(y[test],
                                                       fitted.decision_function(X[test]))


# --------------------------------------------------------------------------- #
# Pipelines
# --------------------------------------------------------------------------- #
def test_pipeline_scales_and_reshapes_before_cmag(digits_small, small_victim):
    """Raw flat digits (64 columns, 0..16) -> [0, 1] -> (n, 1, 8, 8) -> CMAG."""
    X_img, _ = digits_small
    raw = X_img.reshape(len(X_img), -1) * 16.0
    X_raw, y, _ = make_detection_dataset(raw[:120], np.clip(raw[120:180] + 3.0, 0, 16),
                                         source_index=np.arange(60))
    pipe = make_pipeline(FunctionTransformer(_to_unit_range), FunctionTransformer(_to_images),
                         _build(CMAGDetector, FrozenEstimator(small_victim)))
    pipe.fit(X_raw, y)  # outlier labels reach the detector: it trains on the clean rows
    bare = _build(CMAGDetector, FrozenEstimator(small_victim))
    bare.fit(_to_images(_to_unit_range(X_raw[y == 1])))
    images = _to_images(_to_unit_range(X_raw))
    for method in ("score_samples", "decision_function", "predict"):
        np.testing.assert_array_equal(getattr(pipe, method)(X_raw), getattr(bare, method)(images))
    assert pipe[-1].image_shape_ == (1, 8, 8) and pipe[-1].n_features_in_ == 64
    # Without the scaling step the raw values are rejected, not silently accepted.
    unscaled = make_pipeline(FunctionTransformer(_to_images),
                             _build(CMAGDetector, FrozenEstimator(small_victim)))
    with pytest.raises(ValueError, match=r"outside \[0.0, 1.0\]"):
        unscaled.fit(X_raw, y)


def test_pipeline_dafar_purifies_before_a_classifier(digits_small, small_victim):
    X, labels = digits_small
    pipe = make_pipeline(_build(DAFARDetector, FrozenEstimator(small_victim)),
                         FunctionTransformer(_flatten), LogisticRegression(max_iter=300))
    pipe.fit(X[:200], labels[:200])  # class labels: ignored by the plug-in detector
    assert 0 <= pipe.score(X[200:], labels[200:]) <= 1

    bare = _build(DAFARDetector, FrozenEstimator(small_victim)).fit(X[:200])
    purified = bare.transform(X[:200])
    np.testing.assert_array_equal(pipe[0].transform(X[200:]), bare.transform(X[200:]))
    clf = LogisticRegression(max_iter=300).fit(_flatten(purified), labels[:200])
    np.testing.assert_array_equal(pipe.predict(X[200:]),
                                  clf.predict(_flatten(bare.transform(X[200:]))))
    # The detector in the pipeline still detects.
    assert pipe[0].predict(X[200:]).shape == (100,)


def test_grid_search_over_a_pipeline_parameter(detection_data, trained_victim):
    (X, y, groups), _ = detection_data
    flat = _flatten(X) * 16.0  # raw-digit scale, flat rows
    pipe = make_pipeline(FunctionTransformer(_to_unit_range), FunctionTransformer(_to_images),
                         _build(DAFARDetector, FrozenEstimator(trained_victim)))
    zs = [-1.0, 1.0, 50.0]
    search = GridSearchCV(pipe, {"dafardetector__z": zs}, refit="detection_rate",
                          scoring={"detection_rate": detection_rate_scorer,
                                   "neg_false_positive_rate": neg_false_positive_rate_scorer},
                          cv=CleanTrainSplit(2, shuffle=True, random_state=0),
                          error_score="raise")
    search.fit(flat, y, groups=groups)
    res = search.cv_results_
    rates = res["mean_test_detection_rate"]
    neg_fpr = res["mean_test_neg_false_positive_rate"]
    assert np.all(np.diff(rates) <= 0) and rates[0] > rates[-1]
    assert np.all(np.diff(neg_fpr) >= 0) and neg_fpr[0] < neg_fpr[-1]
    best = search.best_estimator_
    assert search.best_params_ == {"dafardetector__z": -1.0} and best[-1].z == -1.0
    assert best.predict(flat[:5]).shape == (5,)


# --------------------------------------------------------------------------- #
# Reproducibility
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls", DETECTORS, ids=IDS)
def test_same_seed_same_scores_other_seed_other_networks(cls, digits_small, small_victim):
    X, _ = digits_small

    def fit(seed):
        return _build(cls, FrozenEstimator(small_victim), random_state=seed).fit(X[:120])

    first, again, other = fit(0), fit(0), fit(1)
    scores = first.score_samples(X[120:200])
    np.testing.assert_array_equal(again.score_samples(X[120:200]), scores)
    for name, module in _networks(first).items():
        for a, b in zip(module.state_dict().values(),
                        _networks(again)[name].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    if cls is FeatureSqueezingDetector:
        # Nothing is trained or sampled: random_state is accepted but unused (as
        # documented), so another seed gives the same scores.
        assert _networks(first) == {}
        np.testing.assert_array_equal(other.score_samples(X[120:200]), scores)
        return
    assert not np.allclose(other.score_samples(X[120:200]), scores)
    assert _networks(first).keys() == _networks(other).keys() != set()
    for name, module in _networks(first).items():
        weights = [p.detach() for p in module.parameters()]
        others = [p.detach() for p in _networks(other)[name].parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(weights, others)), name


_SCRIPT = """
import sys
import numpy as np, torch
torch.set_num_threads(1)
from advdetect import (CMAGDetector, DAFARDetector, DefenseGANDetector,
                       FeatureSqueezingDetector, MagNetDetector)
from advdetect.models import SmallCNN

victim_path, data_path, out_path = sys.argv[1:4]
victim = SmallCNN()
victim.load_state_dict(torch.load(victim_path))
X = np.load(data_path)
common = dict(device="cpu", random_state=3)
detectors = {
    "cmag": CMAGDetector(victim, max_epochs=2, **common),
    "dafar": DAFARDetector(victim, max_epochs=1, anomaly_max_epochs=2, **common),
    "magnet": MagNetDetector(max_epochs=1, **common),
    "squeeze": FeatureSqueezingDetector(victim, **common),
    "defensegan": DefenseGANDetector(max_epochs=1, width=4, latent_dim=4, n_restarts=2,
                                     n_steps=3, **common),
}
np.savez(out_path, **{name: det.fit(X[:100]).score_samples(X[100:])
                      for name, det in detectors.items()})
"""


def test_same_seed_same_scores_across_processes(tmp_path, digits_small, small_victim):
    """Two processes fitting all four detectors with one seed agree bit for bit."""
    X, _ = digits_small
    torch.save(small_victim.module_.state_dict(), tmp_path / "victim.pt")
    np.save(tmp_path / "X.npy", X[:160])
    runs = [subprocess.Popen([sys.executable, "-c", _SCRIPT, str(tmp_path / "victim.pt"),
                              str(tmp_path / "X.npy"), str(tmp_path / f"scores{i}.npz")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    first, second = (np.load(tmp_path / f"scores{i}.npz") for i in range(2))
    assert sorted(first.files) == ["cmag", "dafar", "defensegan", "magnet", "squeeze"]
    for name in first.files:
        scores = first[name]
        assert scores.shape == (60,) and np.all(np.isfinite(scores))
        assert np.ptp(scores) > 0, name  # real scores, not a constant
        np.testing.assert_array_equal(second[name], scores, err_msg=name)
