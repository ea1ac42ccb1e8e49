"""The shared base: validation, classifier handling, hooks, batching, thresholds."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from torch import nn

from advdetect import CMAGDetector
from advdetect.base import (HookedClassifier, batched, default_feature_layer, resolve_device,
                            unwrap_classifier)
from advdetect.models import MNISTCNN, SmallCNN


def _fitted(X, **kw):
    params = dict(max_epochs=1, device="cpu", random_state=0)
    params.update(kw)
    return CMAGDetector(SmallCNN(), **params).fit(X)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def fitted(images):
    return _fitted(images)


def test_default_feature_layer_is_last_block_before_fc():
    assert default_feature_layer(MNISTCNN()) == "features.pool2"
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 2))
    assert default_feature_layer(mlp) == "1"
    with pytest.raises(ValueError, match="no fully connected"):
        default_feature_layer(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_hooked_classifier_returns_features_and_scores():
    net = MNISTCNN().eval()
    hooked = HookedClassifier(net, "features.pool2")
    x = torch.rand(3, 1, 28, 28)
    feats, scores = hooked(x)
    assert feats.shape == (3, 64, 4, 4)
    torch.testing.assert_close(scores, net(x))
    torch.testing.assert_close(feats, net.features(x))
    with pytest.raises(ValueError, match="does not exist"):
        HookedClassifier(net, "features.nope")


def test_unwrap_classifier_forms(small_victim):
    module = small_victim.module_
    assert unwrap_classifier(module) is module
    assert unwrap_classifier(small_victim) is module
    assert unwrap_classifier(FrozenEstimator(small_victim)) is module
    from skorch import NeuralNetClassifier
    with pytest.raises(NotFittedError, match="not fitted"):
        unwrap_classifier(NeuralNetClassifier(SmallCNN))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        unwrap_classifier("a string")


def test_fit_does_not_touch_the_classifier(images):
    net = SmallCNN()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    det = CMAGDetector(net, max_epochs=1, device="cpu").fit(images)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.requires_grad for p in net.parameters())
    assert det.classifier is net and det.classifier_.module is not net


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning, match="CUDA is not available"):
            assert resolve_device("cuda") == "cpu"
    if not torch.backends.mps.is_available():
        with pytest.warns(RuntimeWarning, match="MPS is not available"):
            assert resolve_device("mps") == "cpu"
    for wrong in ("gpu", "tpu"):
        with pytest.raises(ValueError, match=f"device='{wrong}' is not a torch device"):
            resolve_device(wrong)


def test_batched_matches_unbatched():
    X = np.random.default_rng(1).random((23, 4)).astype(np.float32)
    out = batched(lambda x: (x * 2, x.sum(1)), X, batch_size=5, device="cpu")
    np.testing.assert_allclose(out[0], X * 2, rtol=1e-6)
    np.testing.assert_allclose(out[1], X.sum(1), rtol=1e-5)
    # dtypes and trailing shapes are kept; a single tensor gives a single array
    idx, mask = batched(lambda x: (x.argmax(1), x.reshape(-1, 2, 2) > 0.5), X, batch_size=5,
                        device="cpu")
    assert idx.dtype == np.int64 and mask.dtype == np.bool_ and mask.shape == (23, 2, 2)
    np.testing.assert_array_equal(idx, X.argmax(1))
    np.testing.assert_array_equal(mask, X.reshape(-1, 2, 2) > 0.5)
    single = batched(lambda x: x[:, :1], X, batch_size=23, device="cpu")
    assert isinstance(single, np.ndarray) and single.flags.owndata
    np.testing.assert_array_equal(single, X[:, :1])


@pytest.mark.parametrize("bad, match", [
    (np.full((3, 1, 8, 8), np.nan, dtype=np.float32), "NaN"),
    (np.full((3, 1, 8, 8), np.inf, dtype=np.float32), "infinity|inf"),
    (np.zeros((3, 1, 1, 8, 8), dtype=np.float32), "dimension"),
    (np.zeros((3,), dtype=np.float32), "dimension|2D|2-D"),
    (np.zeros((3, 1, 9, 9), dtype=np.float32), "shape"),
    (np.full((3, 1, 8, 8), 2.0, dtype=np.float32), r"outside \[0.0, 1.0\]"),
    (np.full((3, 1, 8, 8), -0.5, dtype=np.float32), r"outside"),
    (np.zeros((0, 1, 8, 8), dtype=np.float32), "0 sample"),
    (np.zeros((3, 1, 8, 8), dtype=np.complex64), "[Cc]omplex"),
    (np.array([[["a"] * 8] * 8] * 3), "string|convert"),
])
def test_bad_input_is_rejected_and_detector_keeps_working(fitted, images, bad, match):
    before = fitted.score_samples(images[:4])
    with pytest.raises(ValueError, match=match):
        fitted.score_samples(bad)
    np.testing.assert_array_equal(fitted.score_samples(images[:4]), before)


def test_sparse_input_is_rejected(fitted):
    with pytest.raises(ValueError, match="sparse"):
        fitted.predict(sp.csr_matrix(np.zeros((2, 64))))


def test_input_forms_agree(fitted, images):
    ref = fitted.score_samples(images[:5])
    np.testing.assert_allclose(fitted.score_samples(images[:5, 0]), ref, rtol=1e-6)
    np.testing.assert_allclose(fitted.score_samples(torch.tensor(images[:5])), ref, rtol=1e-6)
    np.testing.assert_allclose(fitted.score_samples(images[:5].tolist()), ref, rtol=1e-6)
    np.testing.assert_allclose(fitted.score_samples(images[:5].reshape(5, -1)), ref, rtol=1e-6)


def test_flat_input_needs_input_shape(images):
    with pytest.raises(ValueError, match="input_shape"):
        CMAGDetector(SmallCNN(), max_epochs=1, device="cpu").fit(images.reshape(40, -1))
    det = _fitted(images.reshape(40, -1), input_shape=(1, 8, 8))
    assert det.image_shape_ == (1, 8, 8) and det.n_features_in_ == 64
    with pytest.raises(ValueError, match="X has 63 features"):
        det.predict(np.zeros((2, 63), dtype=np.float32))


def test_not_fitted_errors(images):
    det = CMAGDetector(SmallCNN())
    for method in (det.score_samples, det.decision_function, det.predict, det.reconstruct,
                   det.reconstruction_errors):
        with pytest.raises(NotFittedError):
            method(images)


def test_bad_classifier_outputs(images):
    with pytest.raises(ValueError, match="class scores"):
        CMAGDetector(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), feature_layer="0",
                     max_epochs=1, device="cpu").fit(images)
    with pytest.raises(ValueError, match="does not exist"):
        CMAGDetector(SmallCNN(), feature_layer="nope", max_epochs=1, device="cpu").fit(images)
    with pytest.raises(ValueError, match="failed on inputs"):
        CMAGDetector(MNISTCNN(), max_epochs=1, device="cpu").fit(images)


def test_calibrate_hits_target_fpr(fitted, images):
    rng = np.random.default_rng(3)
    clean = np.clip(images + rng.normal(0, 0.01, images.shape).astype(np.float32), 0, 1)
    fitted_copy = _fitted(images)
    offset_before = fitted_copy.offset_
    fitted_copy.calibrate(clean, fpr=0.1)
    assert fitted_copy.offset_ != offset_before
    assert np.mean(fitted_copy.predict(clean) == -1) <= 0.1
    with pytest.raises(ValueError, match="fpr"):
        fitted_copy.calibrate(clean, fpr=1.5)


def test_outputs_types(fitted, images):
    assert fitted.score_samples(images).dtype == np.float64
    assert fitted.decision_function(images).dtype == np.float64
    pred = fitted.predict(images)
    assert pred.dtype.kind == "i" and set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_array_equal(pred, np.where(fitted.decision_function(images) >= 0, 1, -1))
    np.testing.assert_array_equal(fitted.fit_predict(images), fitted.predict(images))


def test_pickle_and_joblib_round_trips_keep_scores(fitted, images):
    import io
    import pickle

    import joblib

    scores = fitted.score_samples(images)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.score_samples(images), scores)
    buf = io.BytesIO()
    joblib.dump(fitted, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).score_samples(images), scores)
    # No hook is left behind on the classifier copy between calls.
    assert all(not m._forward_hooks for m in again.classifier_.modules())


def test_lazy_classifier_sized_per_fit():
    """fit works on its own copy, so one lazy classifier serves inputs of two widths."""
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    rng = np.random.default_rng(0)
    for d in (3, 7):
        det = CMAGDetector(net, input_shape="flat", max_epochs=1, device="cpu").fit(
            rng.random((20, d), dtype=np.float32))
        assert det.n_features_in_ == d and det.predict(rng.random((2, d))).shape == (2,)
    assert isinstance(net[0], nn.LazyLinear)  # the caller's module was never materialised


def test_read_only_input_scores_without_warning(fitted, images):
    frozen = images.copy()
    frozen.setflags(write=False)                 # as a memory map or an unpickled array
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = fitted.score_samples(frozen)
    np.testing.assert_array_equal(scores, fitted.score_samples(images))
    assert not frozen.flags.writeable
