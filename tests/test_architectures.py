"""Networks beyond the papers' CNNs: ResNet-18, global pooling, reused modules, large images.

The ResNet-18 is :class:`advdetect.models.ResNet18`, torchvision's layout written
out: ``BasicBlock`` calls one ``self.relu`` twice (in place), ``out += identity``
joins the branches, and the head is ``avgpool`` (global) then ``fc``.
"""

import io
import os
import pickle
import tempfile
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from advdetect import CMAGDetector, DAFARDetector
from advdetect.base import default_feature_layer, seeded
from advdetect.models import CIFARCNN, MNISTCNN, BasicBlock, ResNet18, SmallCNN
from advdetect.nn.decoders import (FeedbackDecoder, MirrorBlock, MirrorError,
                                   plan_mirror_decoder, trace_encoder)
from advdetect.nn.reconstructors import (DENSE_MAX_WEIGHTS, ConvImageDecoder,
                                         VectorToImageDecoder, dense_projection_weights)
from advdetect.nn.tracing import trace_calls

from .conftest import fgsm

FAST = dict(max_epochs=1, batch_size=16, device="cpu", random_state=0)


class GapResNet(nn.Module):
    """A small residual 3-channel CNN with global average pooling and a reused ReLU."""

    def __init__(self, n_classes=10, width=16, in_channels=3, image_size=None):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.block1 = BasicBlock(width, width)
        self.block2 = BasicBlock(width, 2 * width, stride=2, downsample=nn.Sequential(
            nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width)))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.relu(self.stem(x))))
        return self.fc(self.gap(x).flatten(1))


def _params(module):
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith("classifier"))


def _owned(det):
    """Every network the detector owns (not the classifier copy), with its size."""
    nets = {k: v for k, v in vars(det).items()
            if isinstance(v, nn.Module) and k != "classifier_"}
    return {k: _params(v) for k, v in nets.items()}


@pytest.fixture(scope="module")
def rgb_digits():
    """Digits replicated to 3 channels and upsampled to 16x16: 400 images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.as_tensor(d.images[:400] / 16.0, dtype=torch.float32)[:, None]
    X = nn.functional.interpolate(X, size=(16, 16), mode="bilinear", align_corners=False)
    return X.repeat(1, 3, 1, 1).clamp(0, 1).numpy(), d.target[:400].astype(np.int64)


@pytest.fixture(scope="module")
def gap_victim(rgb_digits):
    from advdetect.models import train_classifier

    X, y = rgb_digits
    torch.manual_seed(0)
    return train_classifier(X[:300], y[:300], arch=GapResNet, max_epochs=6, batch_size=32,
                            device="cpu", random_state=0).module_.eval()


# --------------------------------------------------------------------------- default layer
def test_default_layer_is_unchanged_on_the_packages_own_victims():
    cases = [(MNISTCNN(), (1, 28, 28), "features.pool2"),
             (CIFARCNN(), (3, 32, 32), "head.relu9"),
             (SmallCNN(), (1, 8, 8), "features.pool1")]
    for net, shape, expected in cases:
        net.eval()
        assert default_feature_layer(net) == expected  # the registration-order rule
        assert default_feature_layer(net, torch.rand(2, *shape)) == expected


def test_default_layer_is_the_last_spatial_output_never_a_pooled_one(gap_victim):
    net = ResNet18(n_classes=100, width=8).eval()
    # Registration order alone names the global pooling, whose output is 1x1.
    assert default_feature_layer(net) == "avgpool"
    # Traced: the last residual block whose output still has H x W > 1. Its ReLU is
    # called twice, so the block is named, not the ReLU.
    assert default_feature_layer(net, torch.rand(2, 3, 224, 224)) == "layer4.1"
    # At 32 x 32 the ImageNet stem leaves layer4 at 1x1: the last spatial output is layer3's.
    assert default_feature_layer(net, torch.rand(2, 3, 32, 32)) == "layer3.1"
    assert default_feature_layer(gap_victim, torch.rand(2, 3, 16, 16)) == "block2"
    # A functional ReLU after the last block, and a Dropout (transparent in eval mode).
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout2d(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()
    assert default_feature_layer(seq, torch.rand(2, 3, 8, 8)) == "1"
    # Flat networks keep the registration-order rule.
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 2))
    assert default_feature_layer(mlp, torch.rand(2, 4)) == "1"


def test_trace_records_calls_not_modules():
    net = ResNet18(width=4).eval()
    root, calls, counts = trace_calls(net, torch.rand(1, 3, 32, 32))
    assert counts["layer1.0.relu"] == 2 and counts["layer1.0"] == 1
    block = next(c for c in calls if c.name == "layer2.0")
    assert [c.name for c in block.children] == [
        "layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu", "layer2.0.conv2", "layer2.0.bn2",
        "layer2.0.downsample", "layer2.0.relu"]
    assert block.in_shape == (4, 8, 8) and block.out_shape == (8, 4, 4)


# --------------------------------------------------------------------------- mirror
def test_resnet_is_mirrored_block_by_block():
    net = ResNet18(width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    calls, later = trace_encoder(net, "layer3.1", x)
    assert [c["name"] for c in calls if c["unit"]] == [
        "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    steps, pools = plan_mirror_decoder(calls, later, (3, 32, 32))
    assert [s["op"] for s in steps] == ["block"] * 6 + ["unpool", "conv"]
    assert pools == ["maxpool"]
    # layer3.0 doubles the channels and halves the resolution: its mirror undoes both.
    mirror = steps[1]
    assert (mirror["in_channels"], mirror["out_channels"], mirror["stride"]) == (32, 16, (2, 2))
    decoder = FeedbackDecoder(steps, (3, 32, 32))
    assert sum(isinstance(m, MirrorBlock) for m in decoder.modules()) == 6
    feats = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
    idx = [torch.zeros(2, 8, 8, 8, dtype=torch.long)]
    assert decoder(feats, idx).shape == (2, 3, 32, 32)


def test_a_reused_relu_is_mirrored_once_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2)
            self.relu, self.fc = nn.ReLU(), nn.Linear(8 * 7 * 7, 4)

        def forward(self, x):
            return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).flatten(1))

    net = Shared().eval()
    calls, later = trace_encoder(net, "conv2", torch.rand(2, 3, 16, 16))
    assert [c["name"] for c in calls] == ["conv1", "relu", "conv2"]
    steps, _ = plan_mirror_decoder(calls, later, (3, 16, 16))
    assert [s["op"] for s in steps] == ["conv", "conv"]
    # The reused ReLU itself cannot be the cut: the hook would read its last call.
    with pytest.raises(MirrorError, match="called 2 times"):
        trace_encoder(net, "relu", torch.rand(2, 3, 16, 16))


def test_dafar_mirrors_a_gap_residual_cnn_and_detects_fgsm(gap_victim, rgb_digits):
    X, y = rgb_digits
    X_fit, X_test, y_test = X[:300], X[300:], y[300:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        # (the threshold's sample-size warning is expected on 60 held-out images)
        warnings.filterwarnings("ignore", message=".*needs at least")
        det = DAFARDetector(gap_victim, max_epochs=10, anomaly_max_epochs=5, batch_size=32,
                            device="cpu", random_state=0).fit(X_fit)
    assert det.feature_layer_ == "block2" and det.decoder_kind_ == "mirror"
    assert det.feature_shape_ == (32, 8, 8)
    assert sum(isinstance(m, MirrorBlock) for m in det.feedback_decoder_.modules()) == 2
    X_adv = fgsm(gap_victim, X_test, y_test, 0.3)
    scores = det.score_samples(np.concatenate([X_test, X_adv]))
    assert np.isfinite(scores).all()
    auc = roc_auc_score(np.r_[np.ones(len(X_test)), np.zeros(len(X_adv))], scores)
    assert auc > 0.6
    cmag = CMAGDetector(gap_victim, max_epochs=2, batch_size=32, device="cpu",
                        random_state=0).fit(X_fit)
    assert cmag.feature_layer_ == "block2"
    scores = cmag.score_samples(np.concatenate([X_test, X_adv]))
    assert np.isfinite(scores).all()
    assert roc_auc_score(np.r_[np.ones(len(X_test)), np.zeros(len(X_adv))], scores) > 0.6


def test_fallback_names_the_module_and_the_call_and_what_to_pass():
    X = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    net = ResNet18(width=4)
    with pytest.warns(UserWarning) as record:
        det = DAFARDetector(net, feature_layer="fc", anomaly_max_epochs=1, **FAST).fit(X)
    messages = [str(w.message) for w in record if "mirror" in str(w.message)]
    assert len(messages) == 1  # once per fit
    (msg,) = messages
    assert "'fc' (Linear, module call" in msg and "feature_layer='layer3.1'" in msg
    assert "decoder='dense'" in msg and det.decoder_kind_ == "dense"


# --------------------------------------------------------------------------- sizes
def _build(cls, net, shape, n=2, **params):
    """Build a detector's networks from fit's shapes, untrained (cheap at any size).

    fit's first stages (validation, then ``_prepare``: the classifier copy, the
    feature layer and its shape), then ``_build()``, what ``load`` fills with
    saved weights; seeded, so equal designs get equal initial weights.
    """
    X = np.random.default_rng(0).random((n,) + shape, dtype=np.float32)
    det = cls(net, batch_size=n, device="cpu", random_state=0, **params)
    with seeded(0), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.device_ = "cpu"
        X = det._validate_images(X, reset=True)
        det._prepare(X, None)
        det._build()
    return det


def test_own_victims_keep_the_dense_reconstructors():
    # The networks built before the convolutional design existed, weight for weight.
    for net, shape, fmr in [(MNISTCNN(), (1, 28, 28), 1_624_129),
                            (CIFARCNN(), (3, 32, 32), 1_330_723)]:
        auto = _build(CMAGDetector, net, shape)
        dense = _build(CMAGDetector, net, shape, reconstructor="dense")
        assert type(auto.feature_map_reconstructor_) is VectorToImageDecoder
        assert type(auto.logit_reconstructor_) is VectorToImageDecoder
        assert _params(auto.feature_map_reconstructor_) == fmr
        for a, b in zip(auto.feature_map_reconstructor_.state_dict().values(),
                        dense.feature_map_reconstructor_.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        feats = int(np.prod(auto.feature_shape_))
        assert dense_projection_weights(feats, shape) <= DENSE_MAX_WEIGHTS
        dafar = _build(DAFARDetector, net, shape, decoder="dense")
        assert dafar.decoder_kind_ == "dense"
    conv = _build(CMAGDetector, MNISTCNN(), (1, 28, 28), reconstructor="conv")
    assert type(conv.feature_map_reconstructor_) is ConvImageDecoder
    assert _params(conv.feature_map_reconstructor_) < 200_000


def test_resnet18_at_224_every_owned_network_under_20m_parameters():
    """Full width, ImageNet stem, 100 classes: built (not trained) at 3 x 224 x 224."""
    net = ResNet18(n_classes=100)
    shape = (3, 224, 224)
    cmag = _build(CMAGDetector, net, shape)
    assert cmag.feature_layer_ == "layer4.1" and cmag.feature_shape_ == (512, 7, 7)
    assert type(cmag.feature_map_reconstructor_) is ConvImageDecoder
    assert type(cmag.logit_reconstructor_) is ConvImageDecoder
    mirror = _build(DAFARDetector, net, shape)
    assert mirror.decoder_kind_ == "mirror"
    # The fallback from a layer that cannot be mirrored: convolutional, not 2.5 G weights.
    fallback = _build(DAFARDetector, net, shape, decoder="conv")
    assert fallback.decoder_kind_ == "conv"
    for det in (cmag, mirror, fallback):
        sizes = _owned(det)
        assert sizes and max(sizes.values()) < 20_000_000, sizes
    assert dense_projection_weights(512 * 7 * 7, shape) > 2_000_000_000  # what it was


def test_resnet18_at_224_fits_and_scores_quickly():
    X = np.random.default_rng(0).random((4, 3, 224, 224), dtype=np.float32)
    net = ResNet18(n_classes=10, width=8)
    params = dict(max_epochs=1, batch_size=4, device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*needs at least")
        dafar = DAFARDetector(net, anomaly_max_epochs=1, **params).fit(X)
    cmag = CMAGDetector(net, validation_fraction=0.5, **params).fit(X)
    assert dafar.decoder_kind_ == "mirror" and dafar.feature_layer_ == "layer4.1"
    assert type(cmag.feature_map_reconstructor_) is ConvImageDecoder
    for det in (dafar, cmag):
        assert np.isfinite(det.score_samples(X)).all()
    assert cmag.reconstruct(X[:2], stage="gr").shape == (2, 3, 224, 224)


def test_new_networks_survive_save_load_and_pickle(gap_victim, rgb_digits):
    X = rgb_digits[0][:64]
    net = ResNet18(width=4)
    x32 = np.random.default_rng(0).random((32, 3, 32, 32), dtype=np.float32)
    dets = [(DAFARDetector(gap_victim, anomaly_max_epochs=1, **FAST).fit(X), gap_victim, X),
            (CMAGDetector(net, reconstructor="conv", **FAST).fit(x32), net, x32),
            (DAFARDetector(net, decoder="conv", anomaly_max_epochs=1, **FAST).fit(x32), net,
             x32)]
    for det, victim, data in dets:
        expected = det.score_samples(data)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "det.safetensors")
            det.save(path)
            again = type(det).load(path, victim)
        np.testing.assert_array_equal(again.score_samples(data), expected)
        buf = io.BytesIO()
        pickle.dump(det, buf)
        np.testing.assert_array_equal(pickle.loads(buf.getvalue()).score_samples(data),
                                      expected)
