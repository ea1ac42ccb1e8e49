"""The fit template's shared contract, on every detector of the package (issue 17).

Every detector keeps the raw metrics of its held-out clean images in one
DataFrame, ``calibration_``, and derives every threshold from it in
``_set_thresholds``. So, for each detector class: ``calibration_`` has one row
per held-out clean image, and they are the metrics ``reconstruction_errors``
computes for those images; after ``set_params`` of the threshold parameter,
``recalibrate()`` gives what a refit with the same seed gives; and
``recalibrate()`` undoes a ``calibrate()``.
"""

import copy
import numbers

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator

import advdetect
from advdetect.base import _REGISTRY, BaseDetector

from .conftest import fgsm

pytestmark = [pytest.mark.filterwarnings("ignore:.*needs at least"),
              pytest.mark.usefixtures("one_torch_thread")]  # small networks: one thread

COMMON = dict(device="cpu", random_state=0, batch_size=64)
TRAINED = dict(COMMON, max_epochs=1)

#: {class name: (build from the victim, threshold parameter, a new value for it)}
CASES = {
    "CMAGDetector": (lambda v: advdetect.CMAGDetector(v, width=4, **TRAINED),
                     "threshold_quantile", 0.1),
    "DAFARDetector": (lambda v: advdetect.DAFARDetector(v, anomaly_max_epochs=1, **TRAINED),
                      "z", 1.0),
    "MagNetDetector": (lambda v: advdetect.MagNetDetector(**TRAINED), "drop_rate", 0.2),
    "FeatureSqueezingDetector": (lambda v: advdetect.FeatureSqueezingDetector(v, **COMMON),
                                 "fpr", 0.2),
    "MahalanobisDetector": (lambda v: advdetect.MahalanobisDetector(v, **COMMON), "fpr", 0.2),
    "DefenseGANDetector": (lambda v: advdetect.DefenseGANDetector(n_restarts=2, n_steps=5,
                                                                  **TRAINED), "fpr", 0.2),
    "BinaryClassifierDetector": (lambda v: advdetect.BinaryClassifierDetector(v, fpr=0.05,
                                                                              **TRAINED),
                                 "fpr", 0.2),
    "MaxSoftmaxDetector": (lambda v: advdetect.MaxSoftmaxDetector(v, **COMMON), "fpr", 0.2),
}




@pytest.fixture(scope="module")
def data(digits_small, small_victim):
    """``(X_fit, y_fit, clean rows of X_fit, X_test)``: digits 0-199 to fit, 200-299 to score.

    The binary detector is supervised: its ``X_fit`` is the clean images and
    their FGSM versions, labelled +1 and -1.
    """
    X, y = digits_small
    X_fit, X_test = X[:200], X[200:]
    adv = fgsm(small_victim.module_.eval(), X_fit, y[:200], eps=0.2)
    return dict(clean=(X_fit, None, np.arange(200)),
                binary=(np.concatenate([X_fit, adv]), np.r_[np.ones(200), -np.ones(200)],
                        np.arange(200)),
                test=X_test)


def _fit_data(name, data):
    return data["binary" if name == "BinaryClassifierDetector" else "clean"]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, data, small_victim):
    """``(name, fitted detector, threshold parameter, new value)``, fitted once per class."""
    name = request.param
    build, param, value = CASES[name]
    X, y, _ = _fit_data(name, data)
    det = build(FrozenEstimator(small_victim)).fit(X, y)
    return name, det, param, value


def test_every_detector_class_has_a_case():
    advdetect_classes = {n for n, cls in _REGISTRY.items()
                         if cls.__module__.startswith("advdetect.")}
    assert advdetect_classes == set(CASES)
    assert all(issubclass(_REGISTRY[n], BaseDetector) for n in CASES)


# --------------------------------------------------------------------------- helpers
def _holds_network_or_code(value):
    if isinstance(value, torch.nn.Module) or callable(value):
        return True
    if isinstance(value, dict):
        return any(_holds_network_or_code(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_network_or_code(v) for v in value)
    return False


def _fitted_values(det):
    """Every fitted attribute (``name_``) that is neither a network nor holds one or code."""
    return {k: v for k, v in vars(det).items()
            if k.endswith("_") and not k.startswith("_") and not _holds_network_or_code(v)}


def _assert_same(a, b, where, rtol):
    """``a`` equals ``b``: numbers and arrays within ``rtol`` (0: bitwise), the rest exactly."""
    atol = 0.0 if rtol == 0 else 1e-9
    if isinstance(a, (pd.DataFrame, pd.Series)):
        assert type(a) is type(b), where
        check = pd.testing.assert_frame_equal if isinstance(a, pd.DataFrame) else \
            pd.testing.assert_series_equal
        if rtol == 0:
            check(a, b, check_exact=True, obj=where)
        else:
            check(a, b, check_exact=False, rtol=rtol, atol=atol, obj=where)
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]", rtol)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]", rtol)
    elif isinstance(a, numbers.Real) and not isinstance(a, (bool, np.bool_)):
        assert isinstance(b, numbers.Real), where
        np.testing.assert_allclose(float(a), float(b), rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=where)
    else:
        assert a == b, where


def _assert_same_state(det, other, rtol):
    mine, theirs = _fitted_values(det), _fitted_values(other)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        _assert_same(mine[name], theirs[name], name, rtol)


# --------------------------------------------------------------------------- the contract
def test_calibration_holds_the_metrics_of_the_held_out_clean_images(case, data):
    name, det, _, _ = case
    X, _, clean = _fit_data(name, data)
    cal = det.calibration_
    assert isinstance(cal, pd.DataFrame) and len(cal.columns) >= 1
    assert cal.index.name == "image" and cal.index.dtype.kind == "i"
    idx = cal.index.to_numpy()
    # One row per held-out clean image: distinct clean rows of fit's X, in order.
    assert np.all(np.diff(idx) > 0) and np.isin(idx, clean).all()
    fraction = getattr(det, "validation_fraction", 0.0)
    expected = round(fraction * len(clean)) if fraction else len(clean)
    assert len(cal) == expected
    if hasattr(det, "n_calibration_"):
        assert det.n_calibration_ == len(cal)
    assert all(cal[c].dtype == np.float64 for c in cal.columns)
    # Raw metrics, as reconstruction_errors reports them for the same images.
    frame = det.reconstruction_errors(X[idx])
    assert set(cal.columns) <= set(frame.columns)
    for column in cal.columns:
        np.testing.assert_allclose(cal[column].to_numpy(), frame[column].to_numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=column)


def test_recalibrate_after_set_params_matches_a_refit(case, data):
    name, fitted, param, value = case
    X, y, _ = _fit_data(name, data)
    X_test = data["test"]
    det = copy.copy(fitted)  # the fitted networks, own parameters and thresholds
    before = det.decision_function(X_test)
    det.set_params(**{param: value})
    # set_params alone changes nothing until recalibrate().
    np.testing.assert_array_equal(det.decision_function(X_test), before)
    det.recalibrate()
    after = det.decision_function(X_test)
    assert not np.allclose(after, before), f"{param}={value} did not move the threshold"
    refit = clone(fitted).set_params(**{param: value}).fit(X, y)
    assert det.offset_ == pytest.approx(refit.offset_, rel=1e-6, abs=1e-9)
    _assert_same_state(det, refit, rtol=1e-6)
    np.testing.assert_allclose(det.score_samples(X_test), refit.score_samples(X_test),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(after, refit.decision_function(X_test), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(det.predict(X_test), refit.predict(X_test))


def test_recalibrate_undoes_calibrate(case, data):
    _, fitted, _, _ = case
    X_test = data["test"]
    det = copy.copy(fitted)
    before = det.decision_function(X_test)
    det.calibrate(X_test, fpr=0.3)
    assert det.offset_ != fitted.offset_
    assert not np.allclose(det.decision_function(X_test), before)
    det.recalibrate()
    assert det.offset_ == fitted.offset_
    _assert_same_state(det, fitted, rtol=0)
    np.testing.assert_array_equal(det.decision_function(X_test), before)


# --------------------------------------------------------------------------- #
# What recalibrate and save do with parameters changed after fit (a new user's trial)
# --------------------------------------------------------------------------- #
def test_recalibrate_refuses_a_parameter_that_needs_a_refit(data, small_victim):
    X_fit = data["clean"][0]
    det = advdetect.CMAGDetector(FrozenEstimator(small_victim), width=4, max_epochs=1,
                                 device="cpu", random_state=0).fit(X_fit)
    offset = det.offset_
    with pytest.raises(ValueError, match=r"width=8 \(fitted with 4\) changed since fit"):
        det.set_params(width=8).recalibrate()
    assert det.offset_ == offset
    det.set_params(width=4, batch_size=7, threshold_quantile=0.05).recalibrate()  # allowed


def test_save_stores_the_parameters_the_detector_was_fitted_with(data, small_victim):
    import io

    X_fit = data["clean"][0]
    det = advdetect.CMAGDetector(FrozenEstimator(small_victim), width=4, max_epochs=1,
                                 device="cpu", random_state=0).fit(X_fit)
    det.set_params(width=8, threshold_quantile=0.2)  # neither applied: no recalibrate
    buffer = io.BytesIO()
    with pytest.warns(UserWarning, match="width=8 .* changed since fit and not applied"):
        det.save(buffer)
    buffer.seek(0)
    again = advdetect.load(buffer, FrozenEstimator(small_victim))
    assert again.width == 4 and again.threshold_quantile == 0.01
    np.testing.assert_array_equal(again.decision_function(data["test"]), det.decision_function(data["test"]))


def test_dafar_saved_after_recalibrating_without_c_loads(data, small_victim):
    import io

    X_fit = data["clean"][0]
    det = advdetect.DAFARDetector(FrozenEstimator(small_victim), max_epochs=1,
                                  anomaly_max_epochs=1, device="cpu", random_state=0).fit(X_fit)
    det.set_params(use_anomaly_detector=False).recalibrate()
    buffer = io.BytesIO()
    det.save(buffer)
    buffer.seek(0)
    again = advdetect.load(buffer, FrozenEstimator(small_victim))
    np.testing.assert_array_equal(again.decision_function(data["test"]), det.decision_function(data["test"]))
    again.set_params(use_anomaly_detector=True).recalibrate()  # C came along


def test_binary_fitted_without_a_hold_out_refuses_an_fpr_recalibration(data):
    X, y = data["binary"][:2]
    det = advdetect.BinaryClassifierDetector(max_epochs=1, device="cpu", random_state=0)
    det.fit(X, y)
    with pytest.raises(ValueError, match="fitted with fpr=None, which holds no clean"):
        det.set_params(fpr=0.2).recalibrate()


def test_a_threshold_is_never_learned_from_fewer_than_two_images(data, small_victim):
    X_fit = data["clean"][0]
    # Three images: two are held out (a spread), one trains.
    det = advdetect.DAFARDetector(FrozenEstimator(small_victim), max_epochs=1,
                                  anomaly_max_epochs=1, device="cpu", random_state=0)
    with pytest.warns(UserWarning, match="needs at least"):
        det.fit(X_fit[:3])
    assert len(det.calibration_) == 2
    # Two images cannot be split: learned on the training images, and said so.
    with pytest.warns(UserWarning, match="cannot be split"):
        det.fit(X_fit[:2])
    assert len(det.calibration_) == 2
    with pytest.raises(ValueError, match="from 1 clean image"):
        det._check_threshold_data(1, 0.01, "a rule")
