"""BinaryClassifierDetector: supervised on clean + adversarial, on inputs or activations."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError

from advdetect import BinaryClassifierDetector, load
from advdetect.model_selection import make_detection_dataset

from .conftest import fgsm, invalid_parameter

FAST = dict(device="cpu", random_state=0, max_epochs=2)


# Small networks: on a busy 2-core machine intra-op threads slow them down.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_pairs(digits_small, small_victim):
    X, y = digits_small
    X_adv = fgsm(small_victim.module_, X, y, eps=0.3)
    Xy, labels, _ = make_detection_dataset(X, X_adv)
    return Xy, labels


def test_fit_needs_both_classes(digits_small):
    X, y = digits_small
    det = BinaryClassifierDetector(**FAST)
    with pytest.raises(ValueError, match="requires y to be passed.*make_detection_dataset"):
        det.fit(X)
    with pytest.raises(ValueError, match=r"both \+1 \(clean\) and -1"):
        det.fit(X, np.ones(len(X)))
    with pytest.raises(ValueError, match="make_detection_dataset"):
        det.fit(X, y)  # class labels are not clean/adversarial labels
    assert not hasattr(det, "offset_")


def test_detects_the_attack_it_was_trained_on(mnist_small, mnist_victim):
    X_tr, y_tr, X_te, y_te = mnist_small
    module = mnist_victim.module_
    X, y, _ = make_detection_dataset(X_tr[:400], fgsm(module, X_tr[:400], y_tr[:400], 0.3))
    det = BinaryClassifierDetector(**FAST).fit(X, y)
    assert (det.n_clean_, det.n_adversarial_) == (400, 400)
    X_adv = fgsm(module, X_te, y_te, eps=0.3)
    clean, adv = det.score_samples(X_te), det.score_samples(X_adv)
    auc = roc_auc_score(np.r_[np.ones(len(clean)), -np.ones(len(adv))], np.r_[clean, adv])
    assert auc > 0.95
    # Two epochs on 800 images: ranked well, the logit-0 threshold not yet settled.
    assert np.mean(det.predict(X_adv) == -1) > np.mean(det.predict(X_te) == -1) + 0.5
    assert det.offset_ == 0.0  # the classifier's own decision


def test_on_features_reads_the_layer(digits_pairs, small_victim):
    X, y = digits_pairs
    det = BinaryClassifierDetector(FrozenEstimator(small_victim), on="features",
                                   feature_layer="features.pool1", **FAST).fit(X, y)
    assert det.classifier_.feature_layer == "features.pool1"
    assert det.detector_.head.net[0].in_channels == 16  # a CNN on the 16 feature maps
    s = det.score_samples(X)
    assert roc_auc_score(y, s) > 0.8
    vec = BinaryClassifierDetector(small_victim, on="features", feature_layer="head.fc_relu1",
                                   **FAST).fit(X, y)
    assert isinstance(vec.detector_.head.net[0], torch.nn.Linear)


def test_fpr_threshold_on_held_out_clean_rows(digits_pairs):
    X, y = digits_pairs
    det = BinaryClassifierDetector(fpr=0.1, validation_fraction=0.3, **FAST).fit(X, y)
    assert det.n_clean_ == 210 and det.n_adversarial_ == 300
    assert det.offset_ != 0.0


def test_seeds_save_load_and_pickle(digits_pairs, tmp_path):
    X, y = digits_pairs
    a = BinaryClassifierDetector(**FAST).fit(X, y)
    b = BinaryClassifierDetector(**FAST).fit(X, y)
    np.testing.assert_array_equal(a.score_samples(X[:40]), b.score_samples(X[:40]))
    c = BinaryClassifierDetector(**{**FAST, "random_state": 1}).fit(X, y)
    assert not np.array_equal(a.score_samples(X[:40]), c.score_samples(X[:40]))
    a.save(tmp_path / "binary.safetensors")
    again = load(tmp_path / "binary.safetensors")  # on="input": no classifier needed
    np.testing.assert_array_equal(again.score_samples(X[:40]), a.score_samples(X[:40]))
    copy = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(copy.decision_function(X[:40]), a.decision_function(X[:40]))


def test_to_torch_equals_decision_function(digits_pairs, small_victim):
    X, y = digits_pairs
    det = BinaryClassifierDetector(small_victim, on="features", fpr=0.1, **FAST).fit(X, y)
    module = det.to_torch()
    x = torch.as_tensor(X[:16]).requires_grad_(True)
    out = module(x)
    np.testing.assert_allclose(out.detach().numpy(), det.decision_function(X[:16]), atol=1e-4)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0
    assert not module.training and not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("param, value", [
    ("on", "logits"), ("width", 0), ("hidden", 0), ("fpr", 1.5),
])
def test_invalid_parameters(digits_pairs, param, value):
    X, y = digits_pairs
    with pytest.raises(InvalidParameterError, match=invalid_parameter(param, value)):
        BinaryClassifierDetector(**{param: value}, **FAST).fit(X, y)


def test_classes_weigh_alike_when_imbalanced(digits_small, small_victim):
    """Ten clean rows per adversarial one: the logit-0 decision still flags the attack."""
    X, y = digits_small
    X_adv = fgsm(small_victim.module_, X[:30], y[:30], eps=0.3)
    Xy, labels, _ = make_detection_dataset(X, X_adv, source_index=np.arange(30))
    det = BinaryClassifierDetector(**{**FAST, "max_epochs": 10}).fit(Xy, labels)
    assert np.mean(det.predict(X_adv) == -1) > 0.5
    assert np.mean(det.predict(X) == -1) < 0.5
