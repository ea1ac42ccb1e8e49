"""Misleading layouts get an error that says what to do (issue 14, item 8).

A single image passed without its batch axis, and a channels-last batch, are the
two layout mistakes users make; each must be named in the error, with the fix,
by every detector at fit and at scoring, and by ``attacks.generate``.
"""

import numpy as np
import pytest
import torch
from torch import nn

from advdetect import CMAGDetector, DAFARDetector, FeatureSqueezingDetector, MagNetDetector
from advdetect.attacks import generate
from advdetect.base import layout_hint


def _rgb_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def _images(n=24, seed=0):
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


FAST = dict(max_epochs=1, device="cpu", random_state=0, batch_size=16)


def _detectors():
    clf = _rgb_cnn()
    return [CMAGDetector(clf, **FAST), DAFARDetector(clf, anomaly_max_epochs=1, **FAST),
            FeatureSqueezingDetector(clf, device="cpu"), MagNetDetector(**FAST)]


@pytest.fixture(scope="module")
def fitted():
    X = _images()
    return [det.fit(X) for det in _detectors()]


@pytest.mark.parametrize("i", range(4))
def test_scoring_a_single_image_says_pass_a_batch_of_one(fitted, i):
    det = fitted[i]
    one = _images(1)[0]                      # (3, 16, 16): one image without its batch axis
    with pytest.raises(ValueError, match=r"single image of shape \(3, 16, 16\).*X\[None\]"):
        det.score_samples(one)
    assert det.score_samples(one[None]).shape == (1,)  # the fix works


@pytest.mark.parametrize("i", range(4))
def test_scoring_channels_last_says_moveaxis(fitted, i):
    det = fitted[i]
    X_last = np.moveaxis(_images(5), 1, -1)  # (5, 16, 16, 3)
    with pytest.raises(ValueError, match=r"channels-last.*np\.moveaxis\(X, -1, 1\)"):
        det.decision_function(X_last)
    np.testing.assert_allclose(det.decision_function(np.moveaxis(X_last, -1, 1)),
                               det.decision_function(_images(5)), rtol=1e-6)


@pytest.mark.parametrize("i", range(3))  # MagNet has no classifier to disagree with
def test_fit_on_channels_last_says_moveaxis_not_torch(i):
    det = _detectors()[i]
    with pytest.raises(ValueError, match=r"channels-last.*np\.moveaxis\(X, -1, 1\)") as info:
        det.fit(np.moveaxis(_images(), 1, -1))
    assert "cannot run on images of shape (16, 16, 3)" in str(info.value)
    assert not hasattr(det, "_fit_input_shape")


def test_fit_on_a_single_rgb_image_says_it_was_read_as_grey_images():
    det = CMAGDetector(_rgb_cnn(), **FAST)
    with pytest.raises(ValueError, match=r"read as 3 greyscale images.*X\[None\]"):
        det.fit(_images(1)[0])


def test_a_grey_detector_scoring_one_2d_image_says_pass_a_batch_of_one(digits_small,
                                                                        small_victim):
    X, _ = digits_small  # (n, 1, 8, 8)
    det = FeatureSqueezingDetector(small_victim, device="cpu").fit(X[:100])
    with pytest.raises(ValueError, match=r"single image of shape \(8, 8\).*X\[None\]"):
        det.score_samples(X[0, 0])


def test_attacks_name_the_layout_instead_of_a_torch_error():
    clf = _rgb_cnn()
    X, y = _images(6), np.arange(6) % 10
    with pytest.raises(ValueError, match=r"channels-last.*np\.moveaxis\(X, -1, 1\)"):
        generate(clf, np.moveaxis(X, 1, -1), y, attack="fgsm", eps=0.1)
    with pytest.raises(ValueError, match=r"single image.*X\[None\]"):
        generate(clf, X[0], y[:1], attack="fgsm", eps=0.1)


def test_layout_hint_stays_quiet_on_right_layouts():
    assert layout_hint((10, 3, 32, 32)) == ""
    assert layout_hint((10, 1, 28, 28)) == ""
    assert layout_hint((10, 28, 28)) == ""           # a batch of grey images
    assert layout_hint((10, 3, 32, 32), image_shape=(3, 32, 32)) == ""
    assert layout_hint((4, 28, 28), image_shape=(1, 28, 28)) == ""
