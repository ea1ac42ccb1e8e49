"""MaxSoftmaxDetector: the maximum softmax probability and its fpr-quantile threshold."""

import numpy as np
import pytest
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from advdetect import MaxSoftmaxDetector
from advdetect.base import BaseDetector

from .conftest import fgsm


@pytest.fixture(scope="module")
def digits_det(digits_small, small_victim):
    X, _ = digits_small
    return MaxSoftmaxDetector(FrozenEstimator(small_victim), device="cpu").fit(X[:200])


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_score_is_the_max_softmax_probability(digits_small, small_victim, temperature):
    X, _ = digits_small
    det = MaxSoftmaxDetector(FrozenEstimator(small_victim), temperature=temperature,
                             device="cpu").fit(X[:200])
    with torch.no_grad():
        logits = small_victim.module_.eval()(torch.from_numpy(X[200:]))
    expected = torch.softmax(logits / temperature, dim=1).max(dim=1).values.numpy()
    scores = det.score_samples(X[200:])
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert np.all((scores >= 1 / det.n_classes_ - 1e-6) & (scores <= 1))


def test_probability_outputs_are_used_as_they_are(digits_small, small_victim):
    X, _ = digits_small
    proba = torch.nn.Sequential(small_victim.module_, torch.nn.Softmax(dim=1))
    det = MaxSoftmaxDetector(proba, device="cpu").fit(X[:200])
    assert det.classifier_output_ == "proba"
    np.testing.assert_allclose(det.score_samples(X[200:]),
                               small_victim.predict_proba(X[200:]).max(axis=1), rtol=1e-5)


def test_threshold_gives_the_fpr_on_the_calibration_split(digits_small, small_victim):
    X, _ = digits_small
    det = MaxSoftmaxDetector(FrozenEstimator(small_victim), fpr=0.1, validation_fraction=0.5,
                             device="cpu", random_state=0).fit(X)
    cal = det.calibration_["max_softmax"].to_numpy()
    assert len(cal) == 150
    assert det.offset_ == np.quantile(cal, 0.1, method="lower")
    # At most a fraction fpr of the calibration images is flagged (about that fraction).
    assert 0.08 <= np.mean(cal < det.offset_) <= 0.1
    # The calibration scores are the detector's own scores of held-out images.
    assert np.isin(cal, det.score_samples(X)).all()


def test_without_a_split_every_image_calibrates(digits_det, digits_small):
    X, _ = digits_small
    np.testing.assert_array_equal(digits_det.calibration_["max_softmax"].to_numpy(),
                                  digits_det.score_samples(X[:200]))
    assert np.mean(digits_det.predict(X[:200]) == -1) <= 0.05


def test_recalibrate_follows_fpr(digits_det, digits_small):
    import copy

    det = copy.copy(digits_det).set_params(fpr=0.2).recalibrate()
    assert det.offset_ == np.quantile(digits_det.calibration_["max_softmax"].to_numpy(), 0.2, method="lower")
    assert det.offset_ >= digits_det.offset_


def test_detects_fgsm_better_than_chance(mnist_small, mnist_victim):
    # The MNIST victim (about 90 % accurate): the digits fixture's small_victim is about
    # 30 % accurate, too unsure of clean images for its confidence to tell anything.
    X_tr, _, X_te, y_te = mnist_small
    det = MaxSoftmaxDetector(FrozenEstimator(mnist_victim), device="cpu").fit(X_tr)
    correct = mnist_victim.predict(X_te) == y_te
    X_adv = fgsm(mnist_victim.module_.eval(), X_te[correct], y_te[correct], 0.1)
    X_adv = X_adv[mnist_victim.predict(X_adv) != y_te[correct]]
    assert len(X_adv) >= 30
    dec = np.r_[det.decision_function(X_te), det.decision_function(X_adv)]
    labels = np.r_[np.ones(len(X_te)), -np.ones(len(X_adv))]
    assert roc_auc_score(labels, dec) > 0.75
    assert np.mean(det.predict(X_adv) == -1) > 2 * np.mean(det.predict(X_te) == -1)


def test_to_torch_is_the_decision_function(digits_det, digits_small):
    X, _ = digits_small
    x = torch.from_numpy(X[:10].copy()).requires_grad_(True)
    out = digits_det.to_torch()(x)
    np.testing.assert_allclose(out.detach().numpy(), digits_det.decision_function(X[:10]),
                               atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_save_and_load_round_trip(digits_det, digits_small, small_victim, tmp_path):
    X, _ = digits_small
    path = tmp_path / "max_softmax.safetensors"
    digits_det.save(path)
    again = BaseDetector.load(path, FrozenEstimator(small_victim))
    assert type(again) is MaxSoftmaxDetector
    np.testing.assert_array_equal(again.score_samples(X), digits_det.score_samples(X))
    assert again.offset_ == digits_det.offset_
    np.testing.assert_array_equal(again.calibration_["max_softmax"].to_numpy(), digits_det.calibration_["max_softmax"].to_numpy())


@pytest.mark.parametrize("params", [dict(temperature=0), dict(temperature=-1.0),
                                    dict(temperature=float("nan")), dict(temperature=True),
                                    dict(fpr=1.0), dict(fpr=-0.1),
                                    dict(validation_fraction=1.0)])
def test_invalid_parameters_are_refused(params, digits_small, small_victim):
    X, _ = digits_small
    with pytest.raises(ValueError):
        MaxSoftmaxDetector(small_victim, device="cpu", **params).fit(X[:50])
