"""DetectAndPurify: reject what the detector flags, classify the purified rest."""

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from advdetect.dafar import DAFARDetector
from advdetect.defence import DetectAndPurify

from .conftest import invalid_parameter

FAST = dict(max_epochs=1, anomaly_max_epochs=1, device="cpu", random_state=0)


class _MockDetector(BaseEstimator):
    """Flags images whose mean is above 0.5; purifies by inverting the image."""

    def fit(self, X, y=None):
        self.image_shape_ = tuple(np.asarray(X).shape[1:])
        self.n_fits_ = getattr(self, "n_fits_", 0) + 1
        return self

    def predict(self, X):
        return np.where(np.asarray(X).reshape(len(X), -1).mean(axis=1) > 0.5, -1, 1)

    def transform(self, X):
        return 1.0 - np.asarray(X, dtype=np.float32)


class _FirstPixel(nn.Module):
    """Class 1 if the first pixel is above 0.5, else class 0."""

    def forward(self, x):
        p = x.flatten(1)[:, :1]
        return torch.cat([0.5 - p, p - 0.5], dim=1)


def _images(first_pixels, means):
    """(n, 1, 2, 2) images with a given first pixel and a given mean."""
    X = np.empty((len(first_pixels), 1, 2, 2), dtype=np.float32)
    for i, (p, m) in enumerate(zip(first_pixels, means)):
        rest = (4 * m - p) / 3
        X[i] = [[[p, rest], [rest, rest]]]
    return X


def test_rejects_flagged_and_classifies_the_purified_rest():
    # Means 0.6, 0.6 are flagged; the rest are classified after inversion (1 - x).
    X = _images([0.9, 0.1, 0.9, 0.1], [0.6, 0.6, 0.3, 0.3])
    defence = DetectAndPurify(_FirstPixel(), _MockDetector()).fit(X)
    np.testing.assert_array_equal(defence.classes_, [0, 1, -1])  # the rejection is a class
    np.testing.assert_array_equal(defence.predict(X), [-1, -1, 0, 1])
    raw = DetectAndPurify(_FirstPixel(), _MockDetector(), purify=False, reject_label=99).fit(X)
    np.testing.assert_array_equal(raw.predict(X), [99, 99, 1, 0])


def test_score_is_defence_accuracy():
    # Predictions: [-1, -1, 0, 1] (see above).
    X = _images([0.9, 0.1, 0.9, 0.1], [0.6, 0.6, 0.3, 0.3])
    defence = DetectAndPurify(_FirstPixel(), _MockDetector()).fit(X)
    y = np.array([1, 1, 0, 0])
    # All clean: rejecting is an error; input 3 is right, input 4 wrong.
    assert defence.score(X, y) == pytest.approx(1 / 4)
    # Inputs 1 and 4 adversarial: 1 rejected (defended), 4 misclassified (not).
    adversarial = np.array([True, False, False, True])
    assert defence.score(X, y, adversarial=adversarial) == pytest.approx(2 / 4)
    # Adversarial and correctly classified counts as defended too.
    assert defence.score(X, np.array([1, 1, 0, 1]), adversarial=adversarial) == \
        pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="adversarial"):
        defence.score(X, y, adversarial=np.ones(3, dtype=bool))


def test_fits_an_unfitted_detector_keeps_a_fitted_one():
    X = _images([0.9, 0.1], [0.3, 0.3])
    det = _MockDetector()
    defence = DetectAndPurify(_FirstPixel(), det).fit(X)
    assert defence.detector_ is not det and not hasattr(det, "n_fits_")
    fitted = _MockDetector().fit(X)
    defence = DetectAndPurify(_FirstPixel(), fitted).fit(X)
    assert defence.detector_ is fitted and fitted.n_fits_ == 1
    # clone() would unfit a fitted detector; FrozenEstimator keeps it.
    frozen = clone(DetectAndPurify(_FirstPixel(), FrozenEstimator(fitted))).fit(X)
    assert frozen.detector_.estimator is fitted and fitted.n_fits_ == 1
    np.testing.assert_array_equal(frozen.predict(X), [0, 1])


def test_errors():
    X = _images([0.9, 0.1], [0.3, 0.3])
    with pytest.raises(NotFittedError):
        DetectAndPurify(_FirstPixel(), _MockDetector()).predict(X)
    with pytest.raises(ValueError, match="reject_label"):
        DetectAndPurify(_FirstPixel(), _MockDetector(), reject_label=1).fit(X)
    with pytest.raises(InvalidParameterError, match=invalid_parameter("detector", None)):
        DetectAndPurify(_FirstPixel()).fit(X)
    with pytest.raises(InvalidParameterError, match=invalid_parameter("purify", "yes")):
        DetectAndPurify(_FirstPixel(), _MockDetector(), purify="yes").fit(X)


@pytest.fixture(scope="module")
def dafar(digits_small, small_victim):
    X, _ = digits_small
    return DAFARDetector(FrozenEstimator(small_victim), **FAST).fit(X[:150])


def test_with_dafar_matches_detector_and_classifier(dafar, digits_small, small_victim):
    X, _ = digits_small
    dafar = clone(dafar).set_params(z=0.0).fit(X[:150])  # flags about half
    defence = DetectAndPurify(FrozenEstimator(small_victim), dafar).fit(X[:150])
    assert defence.detector_ is dafar
    np.testing.assert_array_equal(defence.classes_, np.r_[small_victim.classes_, -1])
    pred = defence.predict(X[150:])
    flagged = dafar.predict(X[150:]) == -1
    assert 0 < flagged.sum() < len(flagged)
    np.testing.assert_array_equal(pred[flagged], -1)
    expected = small_victim.predict(dafar.transform(X[150:]))
    np.testing.assert_array_equal(pred[~flagged], expected[~flagged])
    # classifier=None uses the detector's own (here: identical) classifier copy.
    own = DetectAndPurify(detector=dafar).fit(X[:150])
    np.testing.assert_array_equal(own.predict(X[150:]), pred)


def test_fits_an_unfitted_dafar_and_works_in_clone(digits_small, small_victim):
    X, y = digits_small
    det = DAFARDetector(FrozenEstimator(small_victim), **FAST)
    defence = clone(DetectAndPurify(FrozenEstimator(small_victim), det)).fit(X[:100], y[:100])
    assert not hasattr(det, "threshold_") and hasattr(defence.detector_, "threshold_")
    pred = defence.predict(X[100:140])
    assert pred.shape == (40,) and set(pred) <= set(range(10)) | {-1}
    assert 0 <= defence.score(X[100:140], y[100:140]) <= 1


# --------------------------------------------------------------------------- #
# predict_proba (issue 14, item 15)
# --------------------------------------------------------------------------- #
def test_predict_proba_has_a_reject_column_and_agrees_with_predict():
    X = _images([0.9, 0.1, 0.9, 0.1], [0.6, 0.6, 0.3, 0.3])  # predict: [-1, -1, 0, 1]
    defence = DetectAndPurify(_FirstPixel(), _MockDetector()).fit(X)
    proba = defence.predict_proba(X)
    assert proba.shape == (4, len(defence.classes_)) == (4, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(defence.classes_[proba.argmax(axis=1)], defence.predict(X))
    np.testing.assert_array_equal(proba[:2], [[0, 0, 1], [0, 0, 1]])  # rejected
    # Accepted: softmax of the classifier's logits on the purified image 1 - x.
    logits = _FirstPixel()(torch.as_tensor(1 - X[2:])).double()
    np.testing.assert_allclose(proba[2:, :2], torch.softmax(logits, 1).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(proba[2:, 2], 0.0)
    log_proba = defence.predict_log_proba(X)
    np.testing.assert_allclose(np.exp(log_proba), proba)
    assert np.isneginf(log_proba[:2, :2]).all() and np.isneginf(log_proba[2:, 2]).all()
    # A classifier that returns probabilities: used as they are.
    probs = nn.Sequential(_FirstPixel(), nn.Softmax(dim=1))
    same = DetectAndPurify(probs, _MockDetector()).fit(X)
    np.testing.assert_allclose(same.predict_proba(X), proba, rtol=1e-6)
    # reject_label of another type: classes_ holds both.
    named = DetectAndPurify(_FirstPixel(), _MockDetector(), reject_label=99).fit(X)
    np.testing.assert_array_equal(named.classes_, [0, 1, 99])
    np.testing.assert_array_equal(named.classes_[named.predict_proba(X).argmax(1)],
                                  named.predict(X))


def test_predict_proba_with_dafar_is_the_classifiers_on_the_purified_images(
        dafar, digits_small, small_victim):
    X, _ = digits_small
    dafar = clone(dafar).set_params(z=0.0).fit(X[:150])
    defence = DetectAndPurify(FrozenEstimator(small_victim), dafar).fit(X[:150])
    proba = defence.predict_proba(X[150:])
    flagged = dafar.predict(X[150:]) == -1
    assert 0 < flagged.sum() < len(flagged)
    expected = small_victim.predict_proba(dafar.transform(X[150:]))
    np.testing.assert_allclose(proba[~flagged, :-1], expected[~flagged], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(proba[flagged, -1], 1.0)
    np.testing.assert_array_equal(defence.classes_[proba.argmax(1)], defence.predict(X[150:]))
    own = DetectAndPurify(detector=dafar).fit(X[:150])  # the detector's copy
    np.testing.assert_allclose(own.predict_proba(X[150:]), proba, rtol=1e-4, atol=1e-6)


def test_predict_proba_exists_only_when_the_classifier_has_one():
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    assert hasattr(DetectAndPurify(_FirstPixel(), _MockDetector()), "predict_proba")
    assert hasattr(DetectAndPurify(None, _MockDetector()), "predict_log_proba")
    assert hasattr(make_pipeline(DetectAndPurify(_FirstPixel(), _MockDetector())),
                   "predict_proba")
    no_proba = DetectAndPurify(FrozenEstimator(LinearSVC()), _MockDetector())
    assert not hasattr(no_proba, "predict_proba")
    assert not hasattr(no_proba, "predict_log_proba")


def test_every_transform_keeps_the_layout_it_was_given(digits_small):
    # One layout rule for DAFAR, MagNet and Defense-GAN (they disagreed on 3-D input).
    from advdetect import DAFARDetector, DefenseGANDetector, MagNetDetector
    from advdetect.models import SmallCNN

    X, _ = digits_small
    fast = dict(max_epochs=1, device="cpu", random_state=0)
    dets = [DAFARDetector(SmallCNN(), anomaly_max_epochs=1, **fast),
            MagNetDetector(**fast),
            DefenseGANDetector(width=4, latent_dim=4, n_restarts=1, n_steps=2, **fast)]
    for det in dets:
        det.fit(X[:120])
        four = det.transform(X[:5])
        assert four.shape == (5, 1, 8, 8), type(det).__name__
        np.testing.assert_array_equal(det.transform(X[:5, 0]), four[:, 0])   # (n, H, W)
        np.testing.assert_array_equal(det.transform(X[:5].reshape(5, -1) if False else X[:5]),
                                      four)
