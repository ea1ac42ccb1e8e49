"""The victims: DAFAR Table 1 architectures, the trainer and its augmentation."""

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from advdetect.models import CIFARCNN, MNISTCNN, RandomShift, SmallCNN, train_classifier


def test_mnist_cnn_is_table_1():
    net = MNISTCNN()
    names = [n for n, _ in net.named_modules()]
    for layer in ("features.conv1", "features.conv4", "features.pool2", "head.fc1", "head.fc3"):
        assert layer in names
    assert sum(p.numel() for p in net.parameters()) == 312_202
    x = torch.rand(2, 1, 28, 28)
    assert net.features(x).shape == (2, 64, 4, 4)
    assert net(x).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 16 px"):
        MNISTCNN(image_size=12)


def test_cifar_cnn_keeps_8x8_maps_and_any_class_count():
    net = CIFARCNN(n_classes=7)
    x = torch.rand(2, 3, 32, 32)
    assert net.features(x).shape == (2, 192, 8, 8)
    assert net(x).shape == (2, 7)


def test_train_classifier_learns_and_picks_architecture(digits_small):
    X, y = digits_small
    net = train_classifier(X[:240], y[:240], max_epochs=10, batch_size=32, lr=3e-3,
                           device="cpu", random_state=0)
    assert isinstance(net, NeuralNetClassifier) and isinstance(net.module_, SmallCNN)
    assert not net.module_.training
    assert np.mean(net.predict(X[240:]) == y[240:]) > 0.7
    proba = net.predict_proba(X[240:])
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    mnist_like = np.zeros((4, 1, 28, 28), dtype=np.float32)
    assert isinstance(train_classifier(mnist_like, [0, 1, 0, 1], max_epochs=0,
                                       device="cpu").module_, MNISTCNN)


def test_train_classifier_same_seed_same_weights(digits_small):
    X, y = digits_small
    kw = dict(max_epochs=2, device="cpu", lr_schedule="cosine", max_shift=1)
    a, b = (train_classifier(X, y, random_state=0, **kw) for _ in range(2))
    c = train_classifier(X, y, random_state=1, **kw)
    for (name, pa), pb, pc in zip(a.module_.state_dict().items(), b.module_.state_dict().values(),
                                  c.module_.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert not torch.equal(a.module_.head.fc2.weight, c.module_.head.fc2.weight)


def test_cosine_schedule_anneals_to_zero(digits_small):
    X, y = digits_small
    const = train_classifier(X, y, max_epochs=3, lr=1e-3, device="cpu")
    cosine = train_classifier(X, y, max_epochs=3, lr=1e-3, lr_schedule="cosine", device="cpu")
    assert const.optimizer_.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert cosine.optimizer_.param_groups[0]["lr"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="resnet"), "arch must be"),
    (dict(lr_schedule="step"), "lr_schedule must be"),
    (dict(max_shift=2, iterator_train__collate_fn=lambda b: b), "one or the other"),
])
def test_train_classifier_rejects_bad_settings(digits_small, kwargs, match):
    X, y = digits_small
    with pytest.raises(ValueError, match=match):
        train_classifier(X, y, max_epochs=0, device="cpu", **kwargs)


@pytest.mark.parametrize("X, y, match", [
    (np.zeros((4, 8, 8, 1, 1), np.float32), [0, 1, 0, 1], r"\(n, C, H, W\)"),
    (np.zeros((4, 1, 8, 8), np.float32), [0, 1, 0], "one label per image"),
    (np.zeros((4, 1, 8, 8), np.float32), [0.5, 1, 0, 1], "integer class labels"),
    (np.zeros((4, 1, 8, 6), np.float32), [0, 1, 0, 1], "square images"),
])
def test_train_classifier_rejects_bad_data(X, y, match):
    with pytest.raises(ValueError, match=match):
        train_classifier(X, y, max_epochs=0, device="cpu")


def test_random_shift_translates_each_image_within_bounds():
    n, s = 200, 2
    images = torch.zeros(n, 1, 9, 9)
    images[:, 0, 4, 4] = 1.0                       # one bright pixel in the middle
    torch.manual_seed(0)
    X, y = RandomShift(max_shift=s)([(img, i) for i, img in enumerate(images)])
    assert X.shape == images.shape and y.tolist() == list(range(n))
    assert torch.all(X.sum(dim=(1, 2, 3)) == 1)   # nothing lost: the pixel moved, whole
    rows, cols = X[:, 0].flatten(1).argmax(1).div(9, rounding_mode="floor"), \
        X[:, 0].flatten(1).argmax(1) % 9
    assert rows.sub(4).abs().max() <= s and cols.sub(4).abs().max() <= s
    # every offset in [-s, s]^2 occurs, independently per image
    assert len(set(zip(rows.tolist(), cols.tolist()))) == (2 * s + 1) ** 2
    torch.manual_seed(0)
    again, _ = RandomShift(max_shift=s)([(img, i) for i, img in enumerate(images)])
    torch.testing.assert_close(X, again)


def test_random_shift_zero_is_identity_and_validates():
    images = torch.rand(3, 2, 5, 5)
    X, _ = RandomShift(0)([(img, 0) for img in images])
    torch.testing.assert_close(X, images)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="non-negative integer"):
            RandomShift(bad)
