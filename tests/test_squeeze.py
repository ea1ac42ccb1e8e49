"""FeatureSqueezingDetector: squeezers, the max-L1 score, the 95th-percentile threshold."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError

from advdetect.models import SmallCNN
from advdetect.squeeze import (SQUEEZER_PRESETS, FeatureSqueezingDetector, bit_depth,
                               median_filter, non_local_means)

from .conftest import fgsm, invalid_parameter


# Small networks: on a busy 2-core machine intra-op threads slow them down.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_det(digits_small, small_victim):
    X, _ = digits_small
    return FeatureSqueezingDetector(FrozenEstimator(small_victim), device="cpu").fit(X)


def test_bit_depth_values():
    x = torch.tensor([0.0, 0.2, 0.5, 0.5001, 0.7, 1.0])
    # 1 bit is rint(x): 0.5 rounds half to even, to 0.
    np.testing.assert_array_equal(bit_depth(x, 1).numpy(), [0, 0, 0, 1, 1, 1])
    r = np.random.default_rng(0).random((4, 3, 5, 5)).astype(np.float32)
    for bits in (1, 3, 5, 8):
        levels = 2 ** bits - 1
        out = bit_depth(torch.as_tensor(r), bits).numpy()
        np.testing.assert_allclose(out, np.rint(r * levels) / levels, atol=1e-7)
        assert len(np.unique(out)) <= levels + 1


@pytest.mark.parametrize("size", [2, 3, (2, 3), (1, 4)])
@pytest.mark.parametrize("shape", [(3, 2, 9, 7), (2, 1, 1, 6), (1, 3, 4, 4)])
def test_median_filter_equals_scipy(size, shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    x[0, 0, :2, :2] = 0.25  # ties
    ours = median_filter(torch.as_tensor(x), size).numpy()
    kh, kw = (size, size) if isinstance(size, int) else size
    for i in range(shape[0]):
        for c in range(shape[1]):
            ref = ndimage.median_filter(x[i, c], size=(kh, kw), mode="reflect")
            np.testing.assert_array_equal(ours[i, c], ref)


def test_non_local_means_follows_skimage():
    from skimage.restoration import denoise_nl_means

    x = np.random.default_rng(2).random((2, 3, 12, 12)).astype(np.float32)
    ours = non_local_means(torch.as_tensor(x), 13, 3, 2).numpy()
    ref = denoise_nl_means(x[1].transpose(1, 2, 0), patch_size=3, patch_distance=6,
                           h=2 / 255, channel_axis=-1, fast_mode=True)
    np.testing.assert_allclose(ours[1], ref.transpose(2, 0, 1), atol=1e-6)
    grey = non_local_means(torch.as_tensor(x[:, :1]), 13, 3, 2).numpy()
    assert grey.shape == (2, 1, 12, 12)
    ref = denoise_nl_means(x[0, 0], patch_size=3, patch_distance=6, h=2 / 255, fast_mode=True)
    np.testing.assert_allclose(grey[0, 0], ref, atol=1e-6)
    flat = np.full((1, 3, 12, 12), 0.3, dtype=np.float32)
    np.testing.assert_allclose(non_local_means(torch.as_tensor(flat), 13, 3, 2).numpy(), flat,
                               atol=1e-6)


def test_score_is_max_l1_over_squeezers(digits_det, digits_small, small_victim):
    X, _ = digits_small
    x = X[:12]
    module = small_victim.module_

    def softmax(a):
        with torch.no_grad():
            return torch.softmax(module(torch.as_tensor(a)), dim=1).numpy()

    p = softmax(x)
    l1_bits = np.abs(p - softmax(np.rint(x).astype(np.float32))).sum(axis=1)
    medians = ndimage.median_filter(x, size=(1, 1, 2, 2), mode="reflect")
    l1_median = np.abs(p - softmax(medians)).sum(axis=1)
    f = digits_det.reconstruction_errors(x)
    assert list(f.columns) == ["l1_bit_depth_1", "l1_median_2", "l1_max", "score", "decision",
                               "is_adversarial"]
    np.testing.assert_allclose(f["l1_bit_depth_1"], l1_bits, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(f["l1_median_2"], l1_median, rtol=1e-4, atol=1e-6)
    expected = np.maximum(l1_bits, l1_median)
    np.testing.assert_allclose(f["l1_max"], expected, rtol=1e-4, atol=1e-6)
    scores = digits_det.score_samples(x)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, -expected, rtol=1e-4, atol=1e-6)


def test_threshold_is_95th_percentile_of_clean_scores(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    d = det.reconstruction_errors(X)["l1_max"].to_numpy()
    # The reference: sorted(d)[ceil(n * (1 - fpr)) - 1], flagged when d > threshold.
    assert det.threshold_ == pytest.approx(np.sort(d)[int(np.ceil(len(d) * 0.95)) - 1],
                                           rel=1e-6)
    assert det.threshold_ == pytest.approx(np.percentile(d, 95, method="inverted_cdf"), rel=1e-6)
    assert det.offset_ == -det.threshold_
    pred = det.predict(X)
    assert pred.dtype.kind == "i"
    assert np.mean(pred == -1) <= 0.05 and np.mean(pred == -1) > 0.03
    np.testing.assert_allclose(det.decision_function(X), det.threshold_ - d, atol=1e-7)


def test_pickle_round_trip(digits_det, digits_small):
    import pickle

    X, _ = digits_small
    det = pickle.loads(pickle.dumps(digits_det))
    np.testing.assert_array_equal(det.score_samples(X[:10]), digits_det.score_samples(X[:10]))


def test_fpr_parameter(digits_small, small_victim):
    X, _ = digits_small
    det = FeatureSqueezingDetector(small_victim, fpr=0.2, device="cpu").fit(X)
    assert np.mean(det.predict(X) == -1) == pytest.approx(0.2, abs=0.01)
    strict = FeatureSqueezingDetector(small_victim, fpr=0.0, device="cpu").fit(X)
    assert (strict.predict(X) == 1).all()


def test_probability_output_matches_logits(digits_small, small_victim):
    X, _ = digits_small
    proba = torch.nn.Sequential(small_victim.module_, torch.nn.Softmax(dim=1))
    a = FeatureSqueezingDetector(proba, device="cpu").fit(X)
    b = FeatureSqueezingDetector(small_victim, device="cpu").fit(X)
    assert a.classifier_output_ == "proba" and b.classifier_output_ == "logits"
    np.testing.assert_allclose(a.score_samples(X[:20]), b.score_samples(X[:20]), atol=1e-5)


@pytest.mark.parametrize("squeezers, match", [
    ([("blur", 2)], "unknown squeezer"), ("cifar100", r"among \{"), ([], "at least one"),
    ([("bit_depth", 0)], "bit_depth"), ([("bit_depth", 2.5)], "bit_depth"),
    ([("median", 0)], "median"), ([("median", (2, 2, 2))], "median"),
    ([("nl_means", (13, 3))], "nl_means"), ([("median", 2), ("median", 2)], "repeated"),
    (["median"], "pair"),
])
def test_invalid_squeezers(digits_small, squeezers, match):
    X, _ = digits_small
    det = FeatureSqueezingDetector(SmallCNN(), squeezers=squeezers, device="cpu")
    with pytest.raises(InvalidParameterError, match=match) as info:
        det.fit(X[:10])
    assert info.match(invalid_parameter("squeezers", squeezers))


@pytest.mark.parametrize("fpr", [1.0, -0.1, "0.05"])
def test_invalid_fpr(digits_small, fpr):
    X, _ = digits_small
    with pytest.raises(InvalidParameterError, match=invalid_parameter("fpr", fpr)):
        FeatureSqueezingDetector(SmallCNN(), fpr=fpr, device="cpu").fit(X[:10])


def test_classifier_is_required(digits_small):
    X, _ = digits_small
    with pytest.raises(TypeError, match="classifier"):
        FeatureSqueezingDetector(device="cpu").fit(X[:10])


def test_colour_images_cifar10_preset():
    rng = np.random.default_rng(0)
    X = rng.random((6, 3, 32, 32), dtype=np.float32)
    clf = SmallCNN(in_channels=3, image_size=32)
    det = FeatureSqueezingDetector(clf, squeezers="cifar10", device="cpu").fit(X)
    f = det.reconstruction_errors(X[:2])
    assert list(f.columns[:4]) == ["l1_bit_depth_5", "l1_median_2", "l1_nl_means_13_3_2",
                                   "l1_max"]
    assert np.isfinite(f.to_numpy(dtype=float)).all() and (f["l1_max"] >= 0).all()
    # The preset name and the explicit list are the same detector.
    explicit = FeatureSqueezingDetector(clf, squeezers=list(SQUEEZER_PRESETS["cifar10"]),
                                        device="cpu").fit(X)
    np.testing.assert_allclose(explicit.score_samples(X[:2]), f["score"], rtol=1e-6)


def test_flat_vectors_with_a_lazy_classifier():
    """scikit-learn's common checks: tabular rows, one feature, unbounded values."""
    X = np.random.default_rng(0).normal(scale=3.0, size=(30, 1))
    clf = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    det = FeatureSqueezingDetector(clf, input_shape="flat", input_range=None,
                                   device="cpu").fit(X)
    s = det.score_samples(X)
    assert s.shape == (30,) and np.isfinite(s).all()


def test_end_to_end_mnist_fgsm(mnist_small, mnist_victim):
    """FGSM eps=0.3 examples score as more anomalous than clean MNIST test images."""
    X_tr, _, X_te, y_te = mnist_small
    det = FeatureSqueezingDetector(FrozenEstimator(mnist_victim), device="cpu").fit(X_tr)
    X_adv = fgsm(mnist_victim.module_, X_te, y_te, eps=0.3)
    clean, adv = det.score_samples(X_te), det.score_samples(X_adv)
    y = np.r_[np.ones(len(clean)), -np.ones(len(adv))]
    assert roc_auc_score(y, np.r_[clean, adv]) > 0.7
    assert np.mean(det.predict(X_adv) == -1) > np.mean(det.predict(X_te) == -1)


# --------------------------------------------------------------------------- #
# Squeezing in the declared input_range (issue 14, item 5)
# --------------------------------------------------------------------------- #
class _Divide(torch.nn.Module):
    def __init__(self, by):
        super().__init__()
        self.by = by

    def forward(self, x):
        return x / self.by


@pytest.mark.parametrize("squeezers", [[("bit_depth", 1)], [("bit_depth", 3), ("median", 2)],
                                       [("nl_means", (5, 3, 20))]])
def test_squeezers_work_in_the_declared_input_range(digits_small, small_victim, squeezers):
    # The same images and the same classifier, once on [0, 1] and once on
    # [0, 255] (the classifier divides by 255 first): the squeezers must see
    # the same images, so every distance and the threshold are the same.
    X = digits_small[0][:60]
    module = small_victim.module_
    unit = FeatureSqueezingDetector(module, squeezers=squeezers, device="cpu").fit(X)
    byte = FeatureSqueezingDetector(torch.nn.Sequential(_Divide(255.0), module),
                                    squeezers=squeezers, input_range=(0, 255),
                                    device="cpu").fit(X * 255)
    d_unit = unit.reconstruction_errors(X)
    d_byte = byte.reconstruction_errors(X * 255)
    assert d_unit["l1_max"].max() > 1e-3  # the squeezers change something
    for column in [c for c in d_unit.columns if c.startswith("l1_")]:
        np.testing.assert_allclose(d_byte[column], d_unit[column], atol=1e-5, err_msg=column)
    assert byte.threshold_ == pytest.approx(unit.threshold_, abs=1e-5)
    assert byte.squeeze_range_ == (0.0, 255.0)


def test_unbounded_input_range_squeezes_in_the_training_range(digits_small, small_victim):
    X = digits_small[0][:60]
    module = small_victim.module_
    unit = FeatureSqueezingDetector(module, device="cpu").fit(X)
    # Shifted and scaled data with an unbounded range: squeezed on the training
    # images' own [min, max], which is [-2, 2] here.
    shifted = FeatureSqueezingDetector(
        torch.nn.Sequential(_Affine(), module), input_range=None, device="cpu").fit(X * 4 - 2)
    assert shifted.squeeze_range_ == (-2.0, 2.0)
    np.testing.assert_allclose(shifted.score_samples(X * 4 - 2), unit.score_samples(X),
                               atol=1e-5)


class _Affine(torch.nn.Module):
    def forward(self, x):
        return (x + 2) / 4


def test_out_of_range_error_names_the_declared_input_range(digits_small, small_victim):
    # With input_range=(0, 255) the advice "divide 8-bit images by 255" is wrong.
    X = digits_small[0][:20] * 255
    det = FeatureSqueezingDetector(small_victim.module_, input_range=(0, 255), device="cpu")
    with pytest.raises(ValueError, match=r"outside \[0.0, 255.0\].*input_range=\(0, 255\)") \
            as info:
        det.fit(X * 2)
    assert "divide 8-bit images by 255" not in str(info.value)
    det.fit(X)
    with pytest.raises(ValueError, match=r"input_range=\(0, 255\) as declared"):
        det.score_samples(X - 100)
