"""MagNetDetector: the reference autoencoders, noisy training, drop-rate thresholds."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from advdetect.magnet import (MNIST_STRUCTURES, DenoisingAutoencoderNet, MagNetAutoencoder,
                              MagNetDetector)
from advdetect.models import SmallCNN

from .conftest import fgsm, invalid_parameter

FAST = dict(max_epochs=2, device="cpu", random_state=0)


# Small networks: on a busy 2-core machine intra-op threads slow them down.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_det(digits_small):
    X, _ = digits_small
    return MagNetDetector(drop_rate=0.05, validation_fraction=0.25, **FAST).fit(X)


def _layers(module):
    return [type(m).__name__ for m in module.body]


def test_autoencoder_architectures_are_the_references():
    ae1 = MagNetAutoencoder((1, 28, 28), MNIST_STRUCTURES["I"])
    assert _layers(ae1) == ["Conv2d", "Sigmoid", "AvgPool2d", "Conv2d", "Sigmoid", "Conv2d",
                            "Sigmoid", "Upsample", "CropTo", "Conv2d", "Sigmoid", "Conv2d"]
    ae2 = MagNetAutoencoder((1, 28, 28), MNIST_STRUCTURES["II"])
    assert _layers(ae2) == ["Conv2d", "Sigmoid", "Conv2d", "Sigmoid", "Conv2d"]
    for ae, channels in ((ae1, [3, 3, 3, 3, 1]), (ae2, [3, 3, 1])):
        convs = [m for m in ae.body if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == channels
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
        x = torch.rand(4, 1, 28, 28)
        out = ae.eval()(x)
        # The last activation is a sigmoid: output in [0, 1], the input's shape.
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 7, 9), (2, 5, 4), (1, 3, 3), (1, 1, 6)])
def test_autoencoder_output_shape_equals_input_shape(shape):
    for structure in MNIST_STRUCTURES.values():
        ae = MagNetAutoencoder(shape, structure).eval()
        assert ae(torch.rand(3, *shape)).shape == (3, *shape)
    # Under 4 px a side there is nothing for a 3x3 convolution: a dense autoencoder.
    assert MagNetAutoencoder(shape).convolutional == (min(shape[1:]) >= 4)


class _Recorder(nn.Module):
    """Identity plus a bias, recording what it is fed."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x + self.bias


def test_noise_is_added_in_training_only():
    torch.manual_seed(0)
    X = np.full((400, 1, 6, 6), 0.5, dtype=np.float32)
    X[:200] = 0.0  # clipped at the lower bound
    net = DenoisingAutoencoderNet(_Recorder, criterion=nn.MSELoss, max_epochs=1, batch_size=400,
                                  train_split=None, noise_std=0.1, lr=0.0, device="cpu")
    net.fit(X, X)
    (seen,) = net.module_.seen
    noise = seen[200:] - 0.5
    assert abs(float(noise.std()) - 0.1) < 0.01 and abs(float(noise.mean())) < 0.01
    assert float(seen[:200].min()) >= 0.0 and float(seen[:200].max()) > 0.05
    net.module_.seen.clear()
    net.module_.eval()
    with torch.no_grad():
        net.infer(torch.as_tensor(X))
    np.testing.assert_array_equal(net.module_.seen[0].numpy(), X)


def test_activity_regulariser_enters_the_training_loss():
    net = DenoisingAutoencoderNet(MagNetAutoencoder, module__image_shape=(1, 8, 8),
                                  criterion=nn.MSELoss, noise_std=0.0, activity_l2=0.5,
                                  device="cpu").initialize()
    x = torch.rand(5, 1, 8, 8)
    net.module_.train()
    y = net.infer(x)
    activity = net.module_.activity_
    assert activity > 0
    mse = ((y - x) ** 2).mean().item()
    loss = net.get_loss(y, x, training=True).item()
    assert loss == pytest.approx(mse + 0.5 * activity.item(), rel=1e-5)
    assert net.get_loss(y, x, training=False).item() == pytest.approx(mse)


def test_fitted_attributes(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    assert det.detectors_ == ("I", "II")
    assert list(det.autoencoders_) == ["I", "II"]
    assert all(not ae.training for ae in det.autoencoders_.values())
    assert det.n_calibration_ == 75 and det.offset_ == 0.0
    assert list(det.thresholds_.index) == ["I", "II"]
    assert det.thresholds_.loc["I", "p"] == 2 and det.thresholds_.loc["II", "p"] == 1
    assert det.image_shape_ == (1, 8, 8) and det.n_features_in_ == 64


def test_thresholds_at_the_drop_rate(digits_det):
    det = digits_det
    errors = det.calibration_
    assert isinstance(errors, pd.DataFrame) and len(errors) == det.n_calibration_
    n = len(errors)
    for name in ("I", "II"):
        e = np.sort(errors[f"error_{name}"].to_numpy())
        thr = det.thresholds_.loc[name, "threshold"]
        assert thr == e[int(np.ceil(n * (1 - 0.05))) - 1]
        # Exactly floor(n * drop_rate) clean validation images are rejected.
        assert np.sum(e > thr) == int(n * 0.05)
        assert det.thresholds_.loc[name, "scale"] == pytest.approx(np.std(e))


def test_decision_is_any_detector_and_score_is_smallest_margin(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    f = det.reconstruction_errors(X)
    thr = det.thresholds_
    flagged = (f["error_I"] > thr.loc["I", "threshold"]) | \
        (f["error_II"] > thr.loc["II", "threshold"])
    assert 0 < flagged.sum() < len(X)
    np.testing.assert_array_equal(f["is_adversarial"], flagged)
    np.testing.assert_array_equal(det.predict(X) == -1, flagged)
    margins = [(thr.loc[k, "threshold"] - f[f"error_{k}"]) / thr.loc[k, "scale"]
               for k in ("I", "II")]
    np.testing.assert_allclose(f["score"], np.minimum(*margins), rtol=1e-5, atol=1e-6)
    # The errors are the paper's mean |x - AE(x)|^p.
    for k, p in (("I", 2), ("II", 1)):
        rec = det.reconstruct(X[:10], detector=k)
        expected = (np.abs(X[:10] - rec) ** p).reshape(10, -1).mean(axis=1)
        np.testing.assert_allclose(f[f"error_{k}"][:10], expected, rtol=1e-4)


def test_strict_drop_rate_rejects_no_validation_image(digits_small):
    X, _ = digits_small
    # 30 validation images and drop_rate 0.001: the reference would index
    # marks[-0] and reject everything; we reject none of them.
    det = MagNetDetector(validation_fraction=0.1, **FAST).fit(X)
    for name in ("I", "II"):
        assert det.thresholds_.loc[name, "threshold"] == \
            det.calibration_[f"error_{name}"].max()


@pytest.mark.parametrize("only", ["I", "II"])
def test_one_detector_uses_only_its_autoencoder(digits_small, only):
    X, _ = digits_small
    det = MagNetDetector(detectors=(only,), **FAST).fit(X)
    assert det.detectors_ == (only,) and list(det.autoencoders_) == [only]
    f = det.reconstruction_errors(X[:20])
    assert [c for c in f.columns if c.startswith("error_")] == [f"error_{only}"]
    thr = det.thresholds_.loc[only]
    np.testing.assert_allclose(f["score"], (thr["threshold"] - f[f"error_{only}"]) / thr["scale"],
                               rtol=1e-5, atol=1e-6)
    # transform uses the one autoencoder there is.
    np.testing.assert_array_equal(det.transform(X[:4]), det.reconstruct(X[:4], detector=only))
    with pytest.raises(ValueError, match="detector"):
        det.reconstruct(X[:2], detector="I" if only == "II" else "II")


def test_transform_is_the_reformer(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    out = det.transform(X[:6])
    assert out.shape == (6, 1, 8, 8) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, det.reconstruct(X[:6], detector="I"))
    # Same form as the input: (n, H, W) stays 3-D, flat rows stay flat.
    assert det.transform(X[:6, 0]).shape == (6, 8, 8)
    flat = clone(det).set_params(input_shape=(1, 8, 8)).fit(X.reshape(len(X), -1))
    assert flat.transform(X[:6].reshape(6, -1)).shape == (6, 64)
    np.testing.assert_allclose(flat.transform(X[:6].reshape(6, -1)), out.reshape(6, -1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clone(det).fit_transform(X)[:6], out)


@pytest.mark.parametrize("n_features", [1, 2, 5, 10])
def test_flat_unbounded_vectors(n_features):
    X = np.random.default_rng(0).normal(scale=5.0, size=(40, n_features))
    det = MagNetDetector(input_shape="flat", input_range=None, **FAST).fit(X)
    scores = det.score_samples(X)
    assert scores.dtype == np.float64 and scores.shape == (40,) and np.isfinite(scores).all()
    assert set(np.unique(det.predict(X))) <= {-1, 1}
    assert det.predict(X).dtype.kind == "i"
    assert det.transform(X[:3]).shape == (3, n_features)


@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 2, 2), (1, 1, 1)])
def test_tiny_images(shape):
    X = np.random.default_rng(0).random((30, *shape), dtype=np.float32)
    det = MagNetDetector(**FAST).fit(X)
    assert np.isfinite(det.score_samples(X)).all()
    assert det.transform(X).shape == X.shape


def test_same_seed_same_scores_other_seed_differs(digits_small):
    X, _ = digits_small
    s1 = MagNetDetector(**FAST).fit(X).score_samples(X[:20])
    s2 = MagNetDetector(**FAST).fit(X).score_samples(X[:20])
    np.testing.assert_array_equal(s1, s2)
    s3 = MagNetDetector(**dict(FAST, random_state=1)).fit(X).score_samples(X[:20])
    assert not np.allclose(s1, s3)


def test_fit_restores_the_torch_thread_count(digits_small):
    X, _ = digits_small
    torch.set_num_threads(2)
    try:
        MagNetDetector(**FAST).fit(X[:50])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_pickle_round_trip(digits_det, digits_small):
    import pickle

    X, _ = digits_small
    det = pickle.loads(pickle.dumps(digits_det))
    np.testing.assert_array_equal(det.score_samples(X[:10]), digits_det.score_samples(X[:10]))


def test_magnet_takes_no_classifier():
    """Model-agnostic: no classifier parameter to be silently ignored (issue 17)."""
    assert "classifier" not in MagNetDetector().get_params()
    with pytest.raises(TypeError):
        MagNetDetector(SmallCNN())


@pytest.mark.parametrize("param, value", [
    ("detectors", ("III",)), ("detectors", ()), ("detectors", ("I", "I")),
    ("drop_rate", 1.0), ("drop_rate", -0.1), ("noise_std", -1.0), ("activity_l2", -1.0),
    ("max_epochs", 0), ("validation_fraction", 1.0),
])
def test_invalid_parameters(digits_small, param, value):
    X, _ = digits_small
    with pytest.raises(InvalidParameterError, match=invalid_parameter(param, value)):
        MagNetDetector(**FAST).set_params(**{param: value}).fit(X[:20])


def test_end_to_end_mnist_fgsm_scores_lower(mnist_small, mnist_victim):
    """Fit on 1,000 clean MNIST images; FGSM eps=0.3 examples score lower."""
    X_tr, _, X_te, y_te = mnist_small
    # 6 epochs of 29 updates: past the plateau where a sigmoid autoencoder still
    # outputs a blurred mean digit (there, FGSM images reconstruct no worse).
    det = MagNetDetector(max_epochs=6, device="cpu", random_state=0).fit(X_tr)
    X_adv = fgsm(mnist_victim.module_, X_te, y_te, eps=0.3)
    clean, adv = det.reconstruction_errors(X_te), det.reconstruction_errors(X_adv)
    y = np.r_[np.ones(len(clean)), -np.ones(len(adv))]
    assert roc_auc_score(y, np.r_[clean["score"], adv["score"]]) > 0.8
    for name in ("error_I", "error_II"):  # each detector on its own
        assert roc_auc_score(y, -np.r_[clean[name], adv[name]]) > 0.8
    assert np.mean(adv["is_adversarial"]) > 0.5
    assert np.mean(clean["is_adversarial"]) < 0.2


# --------------------------------------------------------------------------- #
# input_range other than [0, 1] (issue 14, item 5)
# --------------------------------------------------------------------------- #
class _Divide255(torch.nn.Module):
    def forward(self, x):
        return x / 255.0


def test_input_range_0_255_trains_the_detector_of_scaled_images(digits_small):
    # The same images on [0, 255] with input_range=(0, 255): the autoencoders see
    # them on [0, 1] (input, noise, activity regulariser), so the scores, which are
    # margins in units of the errors' spread, are those of the scaled images.
    X = digits_small[0][:120]
    unit = MagNetDetector(**FAST).fit(X)
    byte = MagNetDetector(input_range=(0, 255), **FAST).fit(X * 255)
    np.testing.assert_allclose(byte.score_samples(X * 255), unit.score_samples(X),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(byte.transform(X * 255) / 255, unit.transform(X), atol=1e-4)
