"""Bad input fails safely on every detector: a clear scikit-learn error, scores unchanged.

Each detector is fitted once per module on random 8x8 images. Every test of a
bad input asserts the exception type (``ValueError``, ``TypeError`` or
``NotFittedError``), a message that names the problem (``match=``), and that
the fitted detector gives the same scores afterwards. The property-based tests
(hypothesis) draw valid inputs in every accepted form (dtype, memory order,
layout, container) and check that they score alike, and corrupted ones, which
must raise a ``ValueError``.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from skorch import NeuralNetClassifier
from torch import nn

from advdetect import (CMAGDetector, DAFARDetector, DefenseGANDetector, FeatureSqueezingDetector,
                       MagNetDetector, MahalanobisDetector, MaxSoftmaxDetector)
from advdetect.models import MNISTCNN, SmallCNN

SHAPE = (1, 8, 8)
FAST = {
    CMAGDetector: dict(max_epochs=1, width=4),
    DAFARDetector: dict(max_epochs=1, anomaly_max_epochs=1),
    MagNetDetector: dict(max_epochs=1),
    FeatureSqueezingDetector: {},
    DefenseGANDetector: dict(max_epochs=1, width=4, latent_dim=4, n_restarts=2, n_steps=3),
    MahalanobisDetector: dict(fpr=0.05),
    MaxSoftmaxDetector: dict(fpr=0.05),
}
#: Detectors these tests cannot fit on clean images alone, with the reason.
SUPERVISED = {"BinaryClassifierDetector": "fit needs clean and adversarial rows (y = +1/-1); "
                                          "its validation is tested in test_binary.py"}
DETECTORS = list(FAST)
MODEL_AWARE = [CMAGDetector, DAFARDetector, FeatureSqueezingDetector, MaxSoftmaxDetector]
NO_CLASSIFIER = ("MagNet and Defense-GAN are model-agnostic: they take no classifier "
                 "(test_magnet.py::test_magnet_takes_no_classifier)")


def _make(cls, classifier=None, **params):
    torch.manual_seed(0)
    params = dict(FAST[cls], device="cpu", random_state=0, **params)
    if "classifier" not in cls._get_param_names():  # model-agnostic: MagNet, Defense-GAN
        return cls(**params)
    return cls(SmallCNN() if classifier is None else classifier, **params)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((40,) + SHAPE, dtype=np.float32)


@pytest.fixture(scope="module", params=DETECTORS, ids=lambda c: c.__name__)
def fitted(request, images):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = _make(request.param).fit(images)
    finally:
        torch.set_num_threads(n)
    return det


def _methods(det):
    names = ["score_samples", "decision_function", "predict", "reconstruction_errors"]
    return names + [m for m in ("transform", "reconstruct") if hasattr(det, m)]


# --------------------------------------------------------------------------- bad X
def _complex(shape):
    return np.zeros(shape, dtype=np.complex64)


def _object_with(value):
    X = np.full((3,) + SHAPE, 0.5, dtype=object)
    X[1, 0, 2, 3] = value
    return X


BAD_INPUTS = {
    "nan": (lambda: np.full((3,) + SHAPE, np.nan, np.float32), ValueError, "NaN"),
    "nan_tensor": (lambda: torch.full((3,) + SHAPE, float("nan")), ValueError, "NaN"),
    "inf": (lambda: np.full((3,) + SHAPE, np.inf, np.float32), ValueError, "infinity"),
    "neg_inf_flat": (lambda: np.full((3, 64), -np.inf), ValueError, "infinity"),
    "rank_1": (lambda: np.zeros(64, np.float32), ValueError,
               r"got an array with 1 dimension\(s\)\. Reshape"),
    "rank_5": (lambda: np.zeros((3, 1) + SHAPE, np.float32), ValueError,
               r"2-D \(n, C\*H\*W\), 3-D \(n, H, W\) or 4-D .* 5 dimension"),
    "scalar": (lambda: 0.5, ValueError, r"0 dimension"),
    "other_image_size": (lambda: np.zeros((3, 1, 9, 9), np.float32), ValueError,
                         r"images of shape \(1, 9, 9\), but .* fitted on images of shape "
                         r"\(1, 8, 8\)"),
    "other_channels": (lambda: np.zeros((3, 3, 8, 8), np.float32), ValueError,
                       r"images of shape \(3, 8, 8\), but .* fitted"),
    "other_width_flat": (lambda: np.zeros((3, 63), np.float32), ValueError,
                         "X has 63 features, but .* expecting 64"),
    "zero_sized_image": (lambda: np.zeros((3, 1, 0, 8), np.float32), ValueError,
                         r"images of shape \(1, 0, 8\)"),
    "above_range": (lambda: np.full((3,) + SHAPE, 1.5, np.float32), ValueError,
                    r"values in \[1\.5, 1\.5\], outside \[0\.0, 1\.0\]"),
    "below_range": (lambda: np.full((3,) + SHAPE, -0.25, np.float32), ValueError,
                    r"outside \[0\.0, 1\.0\]"),
    "uint8_0_255": (lambda: np.full((3,) + SHAPE, 255, np.uint8), ValueError,
                    r"divide 8-bit images by 255"),
    "empty": (lambda: np.zeros((0,) + SHAPE, np.float32), ValueError, r"0 sample\(s\)"),
    "empty_flat": (lambda: np.zeros((0, 64), np.float32), ValueError, r"0 sample\(s\)"),
    "sparse": (lambda: sp.csr_matrix(np.zeros((3, 64))), ValueError, "sparse input"),
    "complex": (lambda: _complex((3,) + SHAPE), ValueError, "Complex data not supported"),
    "complex_tensor": (lambda: torch.zeros((3,) + SHAPE, dtype=torch.complex64), ValueError,
                       "Complex data not supported"),
    "strings": (lambda: np.full((3,) + SHAPE, "a"), ValueError, "X holds strings"),
    "numeric_strings": (lambda: np.full((3,) + SHAPE, "0.5"), ValueError, "X holds strings"),
    "object_with_string": (lambda: _object_with("x"), ValueError, "X holds strings"),
    "object_with_dict": (lambda: _object_with({"a": 1}), TypeError,
                         "object array that does not hold only real numbers"),
    "object_with_complex": (lambda: _object_with(1j), TypeError,
                            "object array that does not hold only real numbers"),
    "ragged_list": (lambda: [np.zeros(SHAPE).tolist(), np.zeros((1, 8, 7)).tolist()],
                    ValueError, "not a regular array"),
    "datetimes": (lambda: np.zeros((3,) + SHAPE, dtype="datetime64[s]"), ValueError,
                  r"dtype datetime64"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_and_scores_are_unchanged(fitted, images, case):
    make_bad, error, match = BAD_INPUTS[case]
    before = fitted.score_samples(images[:5])
    for method in _methods(fitted):
        with pytest.raises(error, match=match):
            getattr(fitted, method)(make_bad())
    np.testing.assert_array_equal(fitted.score_samples(images[:5]), before)


@pytest.mark.parametrize("case", ["nan", "rank_5", "above_range", "empty", "sparse", "complex",
                                  "strings", "object_with_dict", "zero_sized_image"])
def test_bad_input_to_fit_leaves_a_fitted_detector_as_it_was(fitted, images, case):
    """fit validates X before it changes anything: a failed refit keeps the old model."""
    make_bad, error, match = BAD_INPUTS[case]
    before = fitted.score_samples(images[:5])
    attributes = (fitted.image_shape_, fitted.n_features_in_, fitted.flat_input_)
    with pytest.raises(error, match=match):
        fitted.fit(make_bad())
    assert (fitted.image_shape_, fitted.n_features_in_, fitted.flat_input_) == attributes
    np.testing.assert_array_equal(fitted.score_samples(images[:5]), before)
    np.testing.assert_array_equal(fitted.score_samples(images[:5].reshape(5, -1)), before)


def test_flat_fit_without_input_shape_keeps_the_fitted_width(fitted, images):
    """The 2-D path sets n_features_in_ through scikit-learn before it can fail."""
    before = fitted.score_samples(images[:5])
    with pytest.raises(ValueError, match="give input_shape"):
        fitted.fit(np.zeros((10, 100), np.float32))
    assert fitted.n_features_in_ == 64
    np.testing.assert_array_equal(fitted.score_samples(images[:5].reshape(5, -1)), before)


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_methods_before_fit_raise_not_fitted(cls, images):
    det = _make(cls)
    for method in _methods(det) + ["calibrate"]:
        with pytest.raises(NotFittedError, match="not fitted yet"):
            getattr(det, method)(images[:3])


# --------------------------------------------------------------------- bad classifier
def _unfitted_skorch():
    return NeuralNetClassifier(SmallCNN, max_epochs=1, device="cpu")


class _OneScore(nn.Module):
    """A regressor-like network: one output per image, as (n,) or (n, 1)."""

    def __init__(self, squeeze):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 1))
        self.squeeze = squeeze

    def forward(self, x):
        out = self.body(x)
        return out[:, 0] if self.squeeze else out


class _ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SmallCNN()

    def forward(self, x):
        return self.net(x), x


BAD_CLASSIFIERS = {
    "unfitted_skorch": (_unfitted_skorch, NotFittedError, "NeuralNetClassifier is not fitted"),
    "frozen_unfitted_skorch": (lambda: FrozenEstimator(_unfitted_skorch()), NotFittedError,
                               "is not fitted"),
    "sklearn_model": (LogisticRegression, TypeError,
                      "classifier must be a torch.nn.Module.*got LogisticRegression"),
    "none": (lambda: None, TypeError, "classifier is required"),
    "output_1d": (lambda: _OneScore(squeeze=True), ValueError,
                  r"output has shape \(8,\); a detector needs class scores"),
    "output_n_by_1": (lambda: _OneScore(squeeze=False), ValueError,
                      r"output has shape \(8, 1\); a detector needs class scores"),
    "output_tuple": (_ReturnsTuple, ValueError, "output has shape tuple"),
    "wrong_input_size": (MNISTCNN, ValueError,
                         r"classifier failed on inputs of shape \(8, 1, 8, 8\)"),
}


@pytest.mark.parametrize("case", list(BAD_CLASSIFIERS))
def test_bad_classifier_is_rejected_and_scores_are_unchanged(fitted, images, case):
    if isinstance(fitted, (MagNetDetector, DefenseGANDetector)):
        pytest.skip(NO_CLASSIFIER)
    make_bad, error, match = BAD_CLASSIFIERS[case]
    before = fitted.score_samples(images[:5])
    good = fitted.classifier
    fitted.set_params(classifier=make_bad())
    try:
        with pytest.raises(error, match=match):
            fitted.fit(images)
    finally:
        fitted.set_params(classifier=good)
    np.testing.assert_array_equal(fitted.score_samples(images[:5]), before)


@pytest.mark.parametrize("layer, match", [
    ("conv9", r"feature_layer='conv9' does not exist in SmallCNN; its layers are: \["),
    ("features.nope", "feature_layer='features.nope' does not exist"),
])
def test_missing_feature_layer_is_rejected_and_scores_are_unchanged(fitted, images, layer,
                                                                     match):
    if "feature_layer" not in fitted.get_params():
        pytest.skip(f"{type(fitted).__name__} has no feature_layer parameter (MagNet reads no "
                    "classifier; feature squeezing reads only its output)")
    before = fitted.score_samples(images[:5])
    good = fitted.feature_layer
    fitted.set_params(feature_layer=layer)
    try:
        with pytest.raises(ValueError, match=match):
            fitted.fit(images)
    finally:
        fitted.set_params(feature_layer=good)
    np.testing.assert_array_equal(fitted.score_samples(images[:5]), before)


@pytest.mark.parametrize("cls", [CMAGDetector, DAFARDetector], ids=lambda c: c.__name__)
def test_feature_layer_outside_the_forward_pass(cls, images):
    """A layer that exists but is never called names the problem, not a torch error."""
    class Unused(SmallCNN):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(3, 3)

    with pytest.raises(ValueError, match="'spare' was not called in the classifier's forward"):
        _make(cls, Unused(), feature_layer="spare").fit(images)


# --------------------------------------------------------------------- properties
# Values exactly representable in every dtype drawn (float16 and bfloat16
# included), so that every form of one input is the same float32 array.
_LEVELS = np.arange(257) / 256.0
_FLOAT_DTYPES = ["float16", "float32", "float64"]
_BINARY_DTYPES = ["int64", "int32", "uint8", "bool"]


@st.composite
def _valid_inputs(draw):
    """(reference float32 (n, 1, 8, 8), the same images in some accepted form)."""
    n = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(_FLOAT_DTYPES + _BINARY_DTYPES))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if dtype in _BINARY_DTYPES:
        ref = rng.integers(0, 2, size=(n,) + SHAPE).astype(np.float32)
    else:
        ref = rng.choice(_LEVELS, size=(n,) + SHAPE).astype(np.float32)
    layout = draw(st.sampled_from(["nchw", "nhw", "flat"]))
    X = {"nchw": ref, "nhw": ref[:, 0], "flat": ref.reshape(n, -1)}[layout]
    X = X.astype(dtype)
    container = draw(st.sampled_from(["C", "F", "list", "tensor", "object"]))
    if container == "F":
        X = np.asfortranarray(X)
    elif container == "list":
        X = X.tolist()
    elif container == "tensor":
        X = torch.from_numpy(np.ascontiguousarray(X))
        if dtype == "float32" and draw(st.booleans()):
            X = X.to(torch.bfloat16)
    elif container == "object":
        X = X.astype(object)
    return ref, X


@st.composite
def _invalid_inputs(draw):
    """A valid float input with one defect that must be a ValueError."""
    n = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.random((n,) + SHAPE).astype(draw(st.sampled_from(_FLOAT_DTYPES)))
    defect = draw(st.sampled_from(["nan", "inf", "above", "below", "size", "rank", "empty"]))
    pos = tuple(draw(st.integers(0, s - 1)) for s in X.shape)
    if defect in ("nan", "inf", "above", "below"):
        X[pos] = {"nan": np.nan, "inf": np.inf, "above": 1.01, "below": -0.01}[defect]
    elif defect == "size":
        h, w = draw(st.sampled_from([(8, 9), (7, 8), (4, 4), (16, 16)]))
        X = np.zeros((n, 1, h, w), X.dtype)
    elif defect == "rank":
        X = X.reshape((n,) + (1,) * draw(st.integers(1, 2)) + SHAPE) \
            if draw(st.booleans()) else X.reshape(-1)
    else:
        X = X[:0]
    if draw(st.booleans()):
        X = torch.from_numpy(np.ascontiguousarray(X))
    return X


@pytest.fixture(scope="module")
def references(fitted):
    return {}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_valid_inputs())
def test_valid_inputs_in_every_form_give_the_same_float64_scores(fitted, data):
    ref, X = data
    scores = fitted.score_samples(X)
    assert scores.dtype == np.float64 and scores.shape == (len(ref),)
    np.testing.assert_allclose(scores, fitted.score_samples(ref), rtol=1e-5, atol=1e-6)
    pred = fitted.predict(X)
    assert pred.shape == (len(ref),) and set(np.unique(pred)) <= {-1, 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(X=_invalid_inputs())
def test_invalid_inputs_raise_value_error(fitted, images, X):
    with pytest.raises(ValueError):
        fitted.score_samples(X)


def test_every_detector_is_covered():
    import advdetect

    names = {n for n in advdetect.__all__ if n.endswith("Detector")}
    assert {c.__name__ for c in DETECTORS} == names - set(SUPERVISED)


def test_clone_of_a_fitted_detector_is_unfitted(fitted, images):
    with pytest.raises(NotFittedError):
        clone(fitted).score_samples(images[:2])
