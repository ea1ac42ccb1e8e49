"""DAFARDetector: the mirrored feedback decoder, training modes, Eq. (9), scoring, extras."""

import copy
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from advdetect.dafar import DAFARDetector
from advdetect.models import CIFARCNN, MNISTCNN, SmallCNN
from advdetect.nn.decoders import (FeedbackDecoder, MirrorError, PoolingIndexRecorder,
                                   anomaly_hidden_sizes, plan_mirror_decoder, trace_encoder)

from .conftest import fgsm, invalid_parameter

FAST = dict(max_epochs=1, anomaly_max_epochs=2, device="cpu", random_state=0)


def _layer_types(decoder):
    return [type(m).__name__ for m in decoder.layers]


def _flatten(X):
    return X.reshape(len(X), -1)


@pytest.fixture(scope="module")
def digits_det(digits_small, small_victim):
    X, _ = digits_small
    return DAFARDetector(FrozenEstimator(small_victim), **dict(FAST, max_epochs=2)).fit(X)


# --------------------------------------------------------------------------- decoder
def test_mirror_plan_of_mnist_cnn_is_table_2():
    net = MNISTCNN().eval()
    calls, later = trace_encoder(net, "features.pool2", torch.rand(2, 1, 28, 28))
    steps, pools = plan_mirror_decoder(calls, later, (1, 28, 28))
    assert pools == ["features.pool1", "features.pool2"]
    decoder = FeedbackDecoder(steps, (1, 28, 28))
    # Table 2, D_M: MaxUnpool, ConvT 64, ConvT 32, MaxUnpool, ConvT 32, ConvT 1.
    assert _layer_types(decoder) == ["MaxUnpool2d", "ConvTranspose2d", "ConvTranspose2d",
                                     "MaxUnpool2d", "ConvTranspose2d", "ConvTranspose2d"]
    assert [m.out_channels for m in decoder.layers if isinstance(m, nn.ConvTranspose2d)] == \
        [64, 32, 32, 1]
    recorder = PoolingIndexRecorder([net.get_submodule(p) for p in pools])
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        with recorder.recording():
            feats = net.features(x)
        out = decoder(feats, recorder.take())
    assert out.shape == (3, 1, 28, 28) and 0 <= out.min() and out.max() <= 1


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_mirror_of_other_cuts_and_strided_convolutions():
    net = MNISTCNN().eval()
    x = torch.rand(2, 1, 28, 28)
    ops = {}
    for layer in ("features", "features.pool2", "head.flatten", "features.relu3"):
        steps, _ = plan_mirror_decoder(*trace_encoder(net, layer, x), (1, 28, 28))
        ops[layer] = [s["op"] for s in steps]
    assert ops["features"] == ops["features.pool2"]
    assert ops["head.flatten"] == ["reshape"] + ops["features.pool2"]
    assert ops["features.relu3"] == ["conv", "unpool", "conv", "conv"]
    # Strided, padded and "same" convolutions on an odd size: exact output shape.
    enc = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 8, 4, padding="same"), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 3)).eval()
    x = torch.rand(2, 3, 13, 13)
    steps, _ = plan_mirror_decoder(*trace_encoder(enc, "7", x), (3, 13, 13))
    decoder = FeedbackDecoder(steps, (3, 13, 13))
    assert decoder(enc[:8](x)).shape == (2, 3, 13, 13)


def test_pooling_indices_are_the_encoders_argmax():
    net = MNISTCNN().eval()
    recorder = PoolingIndexRecorder([net.features.pool1])
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        with recorder.recording():
            net(x)
        idx = recorder.take()[0]
        pre = net.features[:4](x)  # conv1 relu1 conv2 relu2: the input of pool1
        _, expected = nn.functional.max_pool2d(pre, 2, return_indices=True)
    torch.testing.assert_close(idx, expected)
    # Unpooling at these indices puts each pooled maximum back where it came from.
    pooled = net.features.pool1(pre)
    back = nn.functional.max_unpool2d(pooled, idx, 2, output_size=pre.shape[-2:])
    mask = back != 0
    torch.testing.assert_close(back[mask], pre[mask])


def test_upsample_option_and_unmirrorable_cut():
    net = SmallCNN().eval()
    calls, later = trace_encoder(net, "features.pool1", torch.rand(2, 1, 8, 8))
    steps, pools = plan_mirror_decoder(calls, later, (1, 8, 8), unpool="upsample")
    assert pools == [] and "Upsample" in _layer_types(FeedbackDecoder(steps, (1, 8, 8)))
    calls, later = trace_encoder(net, "head.fc1", torch.rand(2, 1, 8, 8))
    with pytest.raises(MirrorError, match="Linear"):
        plan_mirror_decoder(calls, later, (1, 8, 8))


def test_anomaly_detector_sizes_follow_table_3():
    assert anomaly_hidden_sizes(784) == (256, 32)
    assert anomaly_hidden_sizes(3072) == (512, 64)
    h, b = anomaly_hidden_sizes(64)
    assert 8 <= h < 256 and b == round(h / 8)


def test_small_cnn_mirror_and_fitted_attributes(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    assert det.decoder_kind_ == "mirror" and det.feature_layer_ == "features.pool1"
    assert _layer_types(det.feedback_decoder_) == ["MaxUnpool2d", "ConvTranspose2d",
                                                   "ConvTranspose2d"]
    assert det.image_shape_ == (1, 8, 8) and det.n_features_in_ == 64
    assert det.n_calibration_ == round(0.2 * len(X)) == len(det.calibration_)
    net = det.anomaly_detector_.net
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [72, 9, 72, 64]
    for module in (det.feedback_autoencoder_, det.anomaly_detector_, det.classifier_):
        assert not module.training


def test_dense_fallback_for_mlp_on_flat_input():
    X = np.random.default_rng(0).random((40, 64), dtype=np.float32)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    det = DAFARDetector(mlp, input_shape="flat", **FAST)
    with pytest.warns(UserWarning, match="dense decoder"):
        det.fit(X)
    assert det.decoder_kind_ == "dense"
    rec = det.reconstruct(X[:5])
    assert rec.shape == (5, 1, 1, 64) and rec.min() >= 0 and rec.max() <= 1
    np.testing.assert_array_equal(det.transform(X[:5]), rec.reshape(5, 64))  # rows in, rows out
    assert np.isfinite(det.score_samples(X)).all()


def test_dense_decoder_on_request(digits_small, small_victim):
    X, _ = digits_small
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*needs at least")  # 60 images
        det = DAFARDetector(small_victim, decoder="dense", **FAST).fit(X[:60])
    assert det.decoder_kind_ == "dense" and det.transform(X[:2]).shape == (2, 1, 8, 8)


def test_cifar_cnn_on_3x32x32():
    X = np.random.default_rng(0).random((10, 3, 32, 32), dtype=np.float32)
    # The paper's feedback position for T_C: the end of E_C (Table 1).
    det = DAFARDetector(CIFARCNN(), feature_layer="features.pool2", batch_size=16,
                        **FAST).fit(X)
    types = _layer_types(det.feedback_decoder_)
    assert types.count("MaxUnpool2d") == 2 and types.count("ConvTranspose2d") == 6
    rec = det.transform(X[:3])
    assert rec.shape == (3, 3, 32, 32) and rec.min() >= 0 and rec.max() <= 1
    assert det.anomaly_detector_.net[0].out_features == 512
    assert np.isfinite(det.score_samples(X)).all()


# --------------------------------------------------------------------------- training modes
def test_plugin_mode_leaves_the_classifier_untouched(digits_small):
    X, _ = digits_small
    net = SmallCNN()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    det = DAFARDetector(net, **FAST).fit(X[:80])
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
        torch.testing.assert_close(det.classifier_.module.state_dict()[k], before[k])
    assert all(p.requires_grad for p in net.parameters())
    assert det.classifier is net and det.classifier_.module is not net


def test_joint_mode_trains_a_copy(digits_small, small_victim):
    X, y = digits_small
    module = small_victim.module_
    before = {k: v.clone() for k, v in module.state_dict().items()}
    det = DAFARDetector(small_victim, training="joint", **FAST).fit(X, y)
    trained = det.classifier_.module.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert not any(p.requires_grad for p in det.classifier_.parameters())
    # The cross-entropy term of Eq. (7) trains the copy (a briefly trained victim gains).
    assert np.mean(det.predict_classes(X) == y) > np.mean(small_victim.predict(X) == y)
    with pytest.raises(ValueError, match="labels"):
        DAFARDetector(small_victim, training="joint", **FAST).fit(X)
    with pytest.raises(ValueError, match="range"):
        DAFARDetector(small_victim, training="joint", **FAST).fit(X[:20], np.full(20, 12))


# --------------------------------------------------------------------------- threshold
def test_threshold_is_mean_plus_z_sigma_of_held_out_scores(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    cal = det.reconstruction_errors(X[det.calibration_.index.to_numpy()])
    np.testing.assert_allclose(cal["anomaly_score"], det.calibration_scores_, rtol=1e-5)
    alpha = cal["anomaly_score"].mean() + 3.0 * cal["anomaly_score"].std(ddof=1)
    assert det.threshold_ == pytest.approx(alpha, rel=1e-5)
    assert det.offset_ == -det.threshold_
    np.testing.assert_allclose(cal["decision"], det.threshold_ - cal["anomaly_score"])
    np.testing.assert_allclose(cal["score"], -cal["anomaly_score"])
    train_idx = np.setdiff1d(np.arange(len(X)), det.calibration_.index.to_numpy())
    assert len(train_idx) + det.n_calibration_ == len(X)


def test_z_moves_the_false_positive_rate_monotonically(digits_small, small_victim):
    X, _ = digits_small
    fprs, thresholds = [], []
    for z in (0.0, 1.0, 3.0):
        det = DAFARDetector(small_victim, z=z, **FAST).fit(X)
        thresholds.append(det.threshold_)
        fprs.append(np.mean(det.predict(X[det.calibration_.index.to_numpy()]) == -1))
    assert thresholds[0] < thresholds[1] < thresholds[2]
    assert fprs[0] > fprs[1] >= fprs[2]
    assert 0.2 < fprs[0] < 0.8  # z = 0 puts alpha at the mean


def test_validation_fraction_zero_calibrates_on_the_training_set(digits_small, small_victim):
    X, _ = digits_small
    det = DAFARDetector(small_victim, validation_fraction=0.0, **FAST).fit(X[:50])
    np.testing.assert_array_equal(det.calibration_.index.to_numpy(), np.arange(50))


def test_without_anomaly_detector_scores_the_l2_error(digits_small, small_victim):
    X, _ = digits_small
    det = DAFARDetector(small_victim, use_anomaly_detector=False, **FAST).fit(X)
    assert det.anomaly_detector_ is None
    l2 = np.linalg.norm(_flatten(X[:30] - det.reconstruct(X[:30])), axis=1)
    np.testing.assert_allclose(det.score_samples(X[:30]), -l2, rtol=1e-4)
    frame = det.reconstruction_errors(X[:30])
    np.testing.assert_allclose(frame["anomaly_score"], frame["l2"])


def test_recalibrate_for_z_and_without_c_matches_a_refit(digits_small, small_victim):
    """Both calibration scores are kept: z and the scorer change with no retraining."""
    X, _ = digits_small
    det = DAFARDetector(FrozenEstimator(small_victim), **FAST).fit(X)
    frame = det.reconstruction_errors(X[det.calibration_.index.to_numpy()])
    np.testing.assert_allclose(det.calibration_["l2"], frame["l2"], rtol=1e-5)
    np.testing.assert_allclose(det.calibration_["anomaly_score"], frame["anomaly_score"], rtol=1e-5)
    det.set_params(z=1.0).recalibrate()
    refit = clone(det).fit(X)
    assert det.threshold_ == pytest.approx(refit.threshold_, rel=1e-6)
    l2 = det.calibration_["l2"]
    before = det.score_samples(X[:20])
    det.set_params(use_anomaly_detector=False)  # no effect until recalibrate()
    np.testing.assert_array_equal(det.score_samples(X[:20]), before)
    det.recalibrate()
    assert not det.scores_with_anomaly_detector_
    assert det.threshold_ == pytest.approx(l2.mean() + 1.0 * l2.std(ddof=1))
    np.testing.assert_allclose(det.score_samples(X[:20]),
                               -np.linalg.norm(_flatten(X[:20] - det.reconstruct(X[:20])), axis=1),
                               rtol=1e-4)
    # A detector fitted without C cannot score with it: refit, not recalibrate.
    no_c = DAFARDetector(small_victim, use_anomaly_detector=False, **FAST).fit(X)
    assert "anomaly_score" not in no_c.calibration_
    with pytest.raises(ValueError, match="without the anomaly detector"):
        no_c.set_params(use_anomaly_detector=True).recalibrate()
    assert no_c.predict(X[:5]).shape == (5,)


def test_paper_constructor():
    det = DAFARDetector.paper(SmallCNN(), z=2.0)
    params = det.get_params()
    assert params["validation_fraction"] == 0.0 and params["z"] == 2.0
    assert params["decoder"] == "mirror" and params["unpool"] == "indices"
    assert params["use_anomaly_detector"] and params["training"] == "plugin"


def test_paper_recipe_has_no_confidence_test():
    params = DAFARDetector.paper().get_params()
    assert (params["confidence_test"], params["combine_tests"], params["z"],
            params["validation_fraction"]) == (False, "min", 3.0, 0.0)


def test_confidence_test_min_and_sum(digits_det, digits_small):
    """The confidence test adds a margin to the anomaly test's; recalibrate switches it."""
    X, _ = digits_small
    det = copy.copy(digits_det)  # the fitted networks, own parameters
    plain = det.reconstruction_errors(X)
    np.testing.assert_allclose(plain["score"], -plain["anomaly_score"])
    conf = det.calibration_["confidence"]
    assert len(conf) == det.n_calibration_
    det.set_params(confidence_test="two-sided", confidence_quantile=0.1).recalibrate()
    assert det.confidence_threshold_ == pytest.approx(np.quantile(conf, 0.1, method="lower"))
    f = det.reconstruction_errors(X)
    np.testing.assert_allclose(f["anomaly_score"], plain["anomaly_score"])
    fail_c = f["anomaly_score"] > det.threshold_
    low = f["confidence"] < det.confidence_threshold_
    high = f["confidence"] > det.confidence_upper_threshold_
    assert low.any() and high.any() and det.offset_ == 0.0
    # "min": flagged exactly when a test fails.
    np.testing.assert_array_equal(f["is_adversarial"], fail_c | low | high)
    s = det.test_scales_
    margins = np.stack([(det.threshold_ - f["anomaly_score"]) / s["anomaly"],
                        np.minimum((f["confidence"] - det.confidence_threshold_) / s["low"],
                                   (det.confidence_upper_threshold_ - f["confidence"])
                                   / s["high"])])
    np.testing.assert_allclose(f["score"], margins.min(axis=0), rtol=1e-5, atol=1e-5)
    # "sum": the summed margins, thresholded at their 10 % calibration quantile.
    det.set_params(combine_tests="sum").recalibrate()
    f = det.reconstruction_errors(X)
    np.testing.assert_allclose(f["score"], margins.sum(axis=0), rtol=1e-5, atol=1e-5)
    a, c = det.calibration_["anomaly_score"], det.calibration_["confidence"]
    cal = (det.threshold_ - a) / s["anomaly"] + np.minimum(
        (c - det.confidence_threshold_) / s["low"], (det.confidence_upper_threshold_ - c) / s["high"])
    assert det.offset_ == pytest.approx(np.quantile(cal, 0.1, method="lower"))
    dec, purified = det._detect_and_purify(X[:10])
    np.testing.assert_allclose(dec, det.decision_function(X[:10]), rtol=1e-6)
    # calibrate moves offset_ and leaves alpha alone when the score is not -anomaly.
    alpha = det.threshold_
    det.calibrate(X, fpr=0.2)
    assert det.threshold_ == alpha and np.mean(det.predict(X) == -1) <= 0.2
    det.set_params(confidence_test=False).recalibrate()
    np.testing.assert_allclose(det.score_samples(X), plain["score"])


def test_calibrate_moves_threshold_with_offset(digits_small, small_victim):
    X, _ = digits_small
    det = DAFARDetector(small_victim, **FAST).fit(X[:150])
    det.calibrate(X[150:], fpr=0.1)
    assert det.threshold_ == -det.offset_
    assert np.mean(det.predict(X[150:]) == -1) <= 0.1


# --------------------------------------------------------------------------- outputs
def test_reconstruction_errors_frame(digits_det, digits_small):
    X, _ = digits_small
    frame = digits_det.reconstruction_errors(X[:9])
    assert isinstance(frame, pd.DataFrame) and len(frame) == 9
    for col in ("l2", "anomaly_score", "score", "decision", "is_adversarial"):
        assert col in frame
    rec = digits_det.reconstruct(X[:9])
    np.testing.assert_allclose(frame["l2"], np.linalg.norm(_flatten(rec - X[:9]), axis=1),
                               rtol=1e-4)
    np.testing.assert_array_equal(frame["is_adversarial"], digits_det.predict(X[:9]) == -1)


def test_transform_in_a_pipeline(digits_small, small_victim):
    X, y = digits_small
    pipe = Pipeline([
        ("purify", DAFARDetector(FrozenEstimator(small_victim), **FAST)),
        ("flat", FunctionTransformer(_flatten)),
        ("clf", LogisticRegression(max_iter=200)),
    ]).fit(X[:200], y[:200])
    assert pipe.predict(X[200:]).shape == (100,)
    purified = pipe[:1].transform(X[:4])
    assert purified.shape == (4, 1, 8, 8) and purified.dtype == np.float32
    assert purified.min() >= 0 and purified.max() <= 1
    assert pipe.score(X[200:], y[200:]) > 0.2  # reconstructions keep class information
    np.testing.assert_allclose(pipe[0].fit_transform(X[:50]), pipe[0].transform(X[:50]))


def test_same_seed_same_scores_other_seed_differs(digits_small, small_victim):
    X, _ = digits_small
    s1 = DAFARDetector(small_victim, **FAST).fit(X[:100]).score_samples(X[:20])
    s2 = DAFARDetector(small_victim, **FAST).fit(X[:100]).score_samples(X[:20])
    np.testing.assert_array_equal(s1, s2)
    s3 = DAFARDetector(small_victim, **dict(FAST, random_state=1)).fit(X[:100])
    assert not np.allclose(s1, s3.score_samples(X[:20]))


def test_pickle_round_trip_keeps_scores(digits_det, digits_small):
    X, _ = digits_small
    copy = pickle.loads(pickle.dumps(digits_det))
    np.testing.assert_array_equal(copy.score_samples(X[:10]), digits_det.score_samples(X[:10]))
    np.testing.assert_array_equal(copy.transform(X[:3]), digits_det.transform(X[:3]))


def test_not_fitted_and_clone(digits_small):
    X, _ = digits_small
    det = DAFARDetector(SmallCNN(), **FAST)
    for method in (det.reconstruct, det.transform, det.predict_classes, det.score_samples):
        with pytest.raises(NotFittedError):
            method(X[:2])
    assert clone(det).get_params()["z"] == 3.0


@pytest.mark.parametrize("param, value", [
    ("training", "both"), ("decoder", "deconv"), ("unpool", "max"),
    ("use_anomaly_detector", "yes"), ("z", float("nan")), ("anomaly_max_epochs", 0),
    ("anomaly_hidden", (8,)), ("anomaly_hidden", (8, 0)), ("reconstruction_loss", "l1"),
    ("max_epochs", 0), ("validation_fraction", 1.0), ("confidence_test", "upper"),
    ("confidence_quantile", 0.5), ("combine_tests", "max"),
])
def test_invalid_parameters(digits_small, param, value):
    X, _ = digits_small
    det = DAFARDetector(SmallCNN(), **FAST).set_params(**{param: value})
    with pytest.raises(InvalidParameterError, match=invalid_parameter(param, value)):
        det.fit(X[:20])


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("use_anomaly_detector", [True, False])
def test_end_to_end_mnist_fgsm_scores_lower(mnist_small, mnist_victim, use_anomaly_detector):
    """Fit on clean MNIST; FGSM eps=0.3 examples are more anomalous than clean test images."""
    X_tr, _, X_te, y_te = mnist_small
    # lr 3e-3: the decoder converges in fewer steps than at the default 1e-3.
    det = DAFARDetector(FrozenEstimator(mnist_victim), use_anomaly_detector=use_anomaly_detector,
                        max_epochs=3, anomaly_max_epochs=5, batch_size=32, lr=3e-3,
                        device="cpu", random_state=0).fit(X_tr[:500])
    assert det.decoder_kind_ == "mirror"
    assert _layer_types(det.feedback_decoder_).count("MaxUnpool2d") == 2
    X_adv = fgsm(mnist_victim.module_, X_te, y_te, eps=0.3)
    clean, adv = det.score_samples(X_te), det.score_samples(X_adv)
    assert np.median(adv) < np.median(clean)
    y = np.r_[np.ones(len(clean)), -np.ones(len(adv))]
    assert roc_auc_score(y, np.r_[clean, adv]) > 0.8
    assert np.mean(det.predict(X_te) == -1) < 0.2
    purified = det.transform(X_adv)
    assert purified.shape == X_adv.shape and purified.min() >= 0 and purified.max() <= 1


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, padding=1),
                                dict(kernel_size=(3, 5), padding=(1, 2), dilation=2),
                                dict(kernel_size=4, stride=2, padding=1),
                                dict(kernel_size=3, groups=2)])
def test_transposed_conv_fast_path_is_the_same_map(kw):
    from advdetect.nn.decoders import _transposed_conv
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, **kw)
    x = torch.rand(3, 4, 9, 11, requires_grad=True)
    out = _transposed_conv(layer, x)
    ref = layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Same gradients for the input and the weights, so training is unchanged.
    g, g_ref = (torch.autograd.grad(o.square().sum(), (x, layer.weight, layer.bias))
                for o in (out, ref))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_pooling_indices_recorded_in_the_forward_pass_itself():
    net = MNISTCNN().eval()
    pools = [net.features.pool1, net.features.pool2]
    recorder = PoolingIndexRecorder(pools)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected_out = net(x)
        pre = net.features[:4](x)  # the input of pool1, then of pool2
        expected_idx = [nn.functional.max_pool2d(pre, 2, return_indices=True)[1],
                        nn.functional.max_pool2d(net.features[:9](x), 2,
                                                 return_indices=True)[1]]
        calls = []
        orig = nn.functional.max_pool2d
        with recorder.recording():
            assert all(p.return_indices for p in pools)
            nn.functional.max_pool2d = lambda *a, **k: calls.append(1) or orig(*a, **k)
            try:
                out = net(x)
            finally:
                nn.functional.max_pool2d = orig
        idx = recorder.take()
    assert not any(p.return_indices for p in pools)  # restored
    assert not any(p._forward_hooks for p in pools)  # hooks only for the block
    torch.testing.assert_close(out, expected_out)  # the classifier's output is unchanged
    for a, b in zip(idx, expected_idx):
        torch.testing.assert_close(a, b)
    assert len(calls) == 2  # one pooling per layer, not two
    # Restored on error too, and a layer built to return indices keeps its pair.
    with pytest.raises(RuntimeError, match="boom"), recorder.recording():
        raise RuntimeError("boom")
    assert not any(p.return_indices for p in pools)
    own = nn.MaxPool2d(2, return_indices=True)
    rec = PoolingIndexRecorder([own])
    with rec.recording():
        values, indices = own(torch.rand(1, 1, 4, 4))
    assert own.return_indices and rec.take()[0] is indices


# --------------------------------------------------------------------------- #
# input_range other than [0, 1] (issue 14, item 5)
# --------------------------------------------------------------------------- #
class _Divide255(torch.nn.Module):
    def forward(self, x):
        return x / 255.0


@pytest.mark.parametrize("training", ["plugin", "joint"])
def test_input_range_0_255_trains_the_detector_of_scaled_images(digits_small, small_victim,
                                                                training):
    # The decoder's loss (and its balance with the cross-entropy in joint mode)
    # and the anomaly detector's input are taken on [0, 1]: the scores of 8-bit
    # images are those of the scaled images, times 255.
    import copy

    X, y = digits_small[0][:120], digits_small[1][:120]
    unit = DAFARDetector(copy.deepcopy(small_victim.module_), training=training,
                         **FAST).fit(X, y if training == "joint" else None)
    byte = DAFARDetector(torch.nn.Sequential(_Divide255(), copy.deepcopy(small_victim.module_)),
                         training=training, input_range=(0, 255),
                         feature_layer="1." + unit.feature_layer_,
                         **FAST).fit(X * 255, y if training == "joint" else None)
    np.testing.assert_allclose(byte.score_samples(X * 255) / 255, unit.score_samples(X),
                               rtol=1e-3, atol=1e-4)
