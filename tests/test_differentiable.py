"""``to_torch()``: every detector's decision function as a differentiable torch module."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from advdetect import CMAGDetector, DAFARDetector, FeatureSqueezingDetector, MagNetDetector
from advdetect.models import SmallCNN
from advdetect.nn.differentiable import DetectorDecision, straight_through

ATOL = 1e-4


def _make(name, victim, **kw):
    common = dict(device="cpu", random_state=0, batch_size=64)
    if name == "cmag":
        return CMAGDetector(victim, max_epochs=1, threshold_quantile=0.01, **common, **kw)
    if name == "dafar":
        return DAFARDetector(victim, max_epochs=1, anomaly_max_epochs=1, **common, **kw)
    if name == "magnet":
        return MagNetDetector(max_epochs=1, **common, **kw)
    return FeatureSqueezingDetector(victim, **common, **kw)


NAMES = ["cmag", "dafar", "magnet", "squeeze"]


@pytest.fixture(scope="module")
def fitted(digits_small, small_victim):
    X, _ = digits_small
    return {name: _make(name, small_victim).fit(X[:200]) for name in NAMES}


def _check_equal(det, X):
    module = det.to_torch()
    got = module(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(got, det.decision_function(X), atol=ATOL, rtol=0)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_to_torch_equals_decision_function(fitted, digits_small, name):
    X, _ = digits_small
    det = fitted[name]
    # Clean held-out images and noisy ones (many of them flagged).
    noisy = np.clip(X[200:260] + np.random.default_rng(0).normal(0, 0.3, X[200:260].shape),
                    0, 1).astype(np.float32)
    module = _check_equal(det, np.concatenate([X[200:260], noisy]))
    assert isinstance(module, DetectorDecision) and isinstance(module, torch.nn.Module)
    assert not module.training
    assert all(not p.requires_grad for p in module.parameters())
    assert len(list(module.parameters())) > 0
    # train() cannot switch it out of eval mode (dropout would change the decision).
    assert not module.train().training


@pytest.mark.parametrize("name", NAMES)
def test_to_torch_after_calibrate_and_survives_refit(fitted, digits_small, name):
    X, _ = digits_small
    det = pickle.loads(pickle.dumps(fitted[name]))
    before = det.to_torch()
    det.calibrate(X[200:], fpr=0.1)
    after = _check_equal(det, X[200:])
    assert after.offset == pytest.approx(det.offset_)
    reference = before(torch.from_numpy(X[200:230])).detach().numpy()
    # Refitting (other data, other seed) leaves an earlier module unchanged.
    det.set_params(random_state=1).fit(X[100:200])
    np.testing.assert_array_equal(before(torch.from_numpy(X[200:230])).detach().numpy(),
                                  reference)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_finite_and_nonzero(fitted, digits_small, name):
    X, _ = digits_small
    module = fitted[name].to_torch()
    x = torch.from_numpy(X[200:216].copy()).requires_grad_(True)
    module(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    # A step along the gradient raises the decision (it is the decision's gradient).
    if name != "squeeze":  # BPDA's gradient is an approximation
        x2 = (x + 1e-3 * x.grad / x.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).detach()
        assert (module(x2) - module(x.detach())).mean() > 0


@pytest.mark.filterwarnings("ignore:decoder='mirror'")
@pytest.mark.parametrize("name", NAMES)
def test_flat_inputs(digits_small, name):
    X, y = digits_small
    Xf = X.reshape(len(X), -1)
    torch.manual_seed(0)
    victim = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)),
                                 torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(64, 10))
    det = _make(name, victim, input_shape="flat").fit(Xf[:150])
    module = det.to_torch()
    got = module(torch.from_numpy(Xf[150:200])).detach().numpy()
    np.testing.assert_allclose(got, det.decision_function(Xf[150:200]), atol=ATOL, rtol=0)
    # A detector fitted on (C, H, W) rows accepts images and flat rows alike.
    det2 = _make(name, SmallCNN(), input_shape=(1, 8, 8)).fit(Xf[:150])
    m2 = det2.to_torch()
    a = m2(torch.from_numpy(Xf[150:180])).detach().numpy()
    b = m2(torch.from_numpy(X[150:180])).detach().numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, det2.decision_function(Xf[150:180]), atol=ATOL, rtol=0)


def test_wrong_shape_and_unfitted(fitted):
    module = fitted["magnet"].to_torch()
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\) or \(n, 64\)"):
        module(torch.zeros(2, 1, 9, 9))
    with pytest.raises(NotFittedError):
        MagNetDetector().to_torch()


def test_user_classifier_not_copied_or_changed(fitted, small_victim):
    det = fitted["cmag"]
    flags = [p.requires_grad for p in small_victim.module_.parameters()]
    module = det.to_torch()
    assert module.scorer.classifier is det.classifier
    assert [p.requires_grad for p in small_victim.module_.parameters()] == flags


def test_straight_through_forward_exact_backward_identity():
    x = torch.tensor([0.2, 0.6, 0.9], requires_grad=True)
    y = straight_through(lambda t: torch.round(t * 3) / 3, x)
    assert torch.equal(y, torch.round(x.detach() * 3) / 3)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]
