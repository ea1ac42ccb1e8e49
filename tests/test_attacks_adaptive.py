"""Detector-aware (adaptive) attacks: ``generate(..., detector=...)``."""

import os

import numpy as np
import pytest
import torch

from advdetect import DAFARDetector, FeatureSqueezingDetector, MagNetDetector
from advdetect.attacks import adaptive_carlini_wagner_l2, adaptive_pgd, generate

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "generate_reference.npz")


def _reference_setup():
    """The exact setup that wrote tests/data/generate_reference.npz before ``detector=``."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    d = load_digits()
    X = (d.images[:40] / 16.0).astype(np.float32)[:, None]
    with torch.no_grad():
        y = net(torch.from_numpy(X)).argmax(1).numpy()
    y[::5] = (y[::5] + 1) % 10
    return net, X, y


@pytest.mark.parametrize("name, attack, kw", [
    ("fgsm", "fgsm", dict(eps=0.1)), ("pgd", "pgd", dict(eps=0.1, max_iter=10)),
    ("pgd_l2", "pgd", dict(eps=1.0, norm=2, max_iter=10)),
    ("cw", "cw", dict(max_iter=10, binary_search_steps=2))])
def test_non_adaptive_path_unchanged(name, attack, kw):
    net, X, y = _reference_setup()
    res = generate(net, X, y, attack=attack, random_state=0, **kw)
    with np.load(REFERENCE) as ref:
        np.testing.assert_array_equal(res.x_adv, ref[name + "_x_adv"])
        np.testing.assert_array_equal(res.success, ref[name + "_success"])
    assert res.fooled_classifier is None and res.evaded_detector is None


@pytest.fixture(scope="module")
def detectors(digits_small, small_victim):
    X, _ = digits_small
    common = dict(device="cpu", random_state=0)
    dets = {"dafar": DAFARDetector(small_victim, max_epochs=3, anomaly_max_epochs=3, **common),
            "magnet": MagNetDetector(max_epochs=3, **common),
            "squeeze": FeatureSqueezingDetector(small_victim, device="cpu")}
    for det in dets.values():
        det.fit(X[:200]).calibrate(X[200:250], fpr=0.05)
    return dets


def _data(digits_small, small_victim, n=40):
    X, y = digits_small
    X, y = X[250:250 + n], y[250:250 + n]
    return X, y


@pytest.mark.parametrize("name", ["dafar", "magnet", "squeeze"])
@pytest.mark.parametrize("attack, kw", [("pgd", dict(eps=0.3, max_iter=30, restarts=1)),
                                        ("pgd", dict(eps=1.5, norm=2, max_iter=30, restarts=1)),
                                        ("cw", dict(max_iter=30, binary_search_steps=4))])
def test_successes_are_misclassified_and_unflagged(detectors, digits_small, small_victim, name,
                                                   attack, kw):
    det = detectors[name]
    X, y = _data(digits_small, small_victim)
    res = generate(small_victim, X, y, attack=attack, detector=det, random_state=0, **kw)
    assert res.success.any()
    np.testing.assert_array_equal(res.success, res.fooled_classifier & res.evaded_detector)
    # Re-checked through the public predict methods, independently of the attack.
    s = res.success
    assert (small_victim.predict(res.x_adv[s]) != y[s]).all()
    assert (det.predict(res.x_adv[s]) == 1).all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    if attack == "pgd":
        size = res.linf if kw.get("norm") is None else res.l2
        assert (size[res.attacked] <= kw["eps"] + 1e-4).all()
    assert res.params["detector"] == type(det).__name__
    assert res.params["offset"] == pytest.approx(det.offset_)


def _simple_adaptive_pgd(module, decision, x, y, eps, steps=30, lambdas=(0.1, 1.0, 10.0)):
    """An independent detector-aware PGD: CE loss - lambda * decision, fixed lambdas."""
    best = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    for lam in lambdas:
        delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            xa = x + delta
            loss = torch.nn.functional.cross_entropy(module(xa), y, reduction="sum") \
                + lam * decision(xa).clamp(max=0).neg().sum()
            (g,) = torch.autograd.grad(loss, delta)
            delta = ((delta + eps / 10 * g.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
            delta = delta.detach()
        xa = x + delta
        with torch.no_grad():
            ok = (module(xa).argmax(1) != y) & (decision(xa) >= 0)
        best[ok & ~found] = xa[ok & ~found]
        found |= ok
    return best


@pytest.mark.parametrize("name", ["dafar", "magnet"])
def test_at_least_as_strong_as_a_simple_adaptive_pgd(detectors, digits_small, small_victim,
                                                     name):
    det = detectors[name]
    X, y = _data(digits_small, small_victim)
    module = small_victim.module_.eval()
    keep = module(torch.from_numpy(X)).argmax(1).numpy() == y
    X, y = X[keep], y[keep]
    eps = 0.15
    simple = _simple_adaptive_pgd(module, det.to_torch(), torch.from_numpy(X),
                                  torch.from_numpy(y), eps).numpy()
    simple_rate = np.mean((small_victim.predict(simple) != y) & (det.predict(simple) == 1))
    ours = generate(small_victim, X, y, attack="pgd", eps=eps, detector=det, random_state=0,
                    max_iter=30, restarts=1, lambda_steps=3)
    # Non-adaptive PGD at the same budget, for scale.
    plain = generate(small_victim, X, y, attack="pgd", eps=eps, random_state=0)
    plain_rate = np.mean(plain.success & (det.predict(plain.x_adv) == 1))
    assert ours.success_rate >= simple_rate
    assert ours.success_rate >= plain_rate


def test_functions_on_tensors_and_a_plain_module(digits_small, small_victim):
    X, y = _data(digits_small, small_victim, n=16)
    module = small_victim.module_.eval()
    # A "detector" that flags bright images: decision = 0.3 - mean intensity.
    decision = lambda x: 0.3 - x.flatten(1).mean(1)  # noqa: E731
    x, yt = torch.from_numpy(X), torch.from_numpy(y)
    for out in (adaptive_pgd(module, decision, x, yt, eps=0.3, max_iter=20, restarts=1),
                adaptive_carlini_wagner_l2(module, decision, x, yt, max_iter=20,
                                           binary_search_steps=3)):
        ok = (module(out).argmax(1) != yt) & (decision(out) >= 0)
        assert ok.float().mean() > 0.5
    res = generate(small_victim, X, y, attack="pgd", eps=0.3, detector=decision, max_iter=20,
                   restarts=1)
    assert res.success.any()
    assert (decision(torch.from_numpy(res.x_adv[res.success])) >= 0).all()


def test_adaptive_settings_are_validated(detectors, digits_small, small_victim):
    X, y = _data(digits_small, small_victim, n=4)
    det = detectors["magnet"]
    with pytest.raises(ValueError, match="no detector-aware form"):
        generate(small_victim, X, y, attack="fgsm", detector=det)
    with pytest.raises(TypeError, match="unknown parameter"):
        generate(small_victim, X, y, attack="pgd", detector=det, num_random_init=3)
    with pytest.raises(ValueError, match="restarts"):
        generate(small_victim, X, y, attack="pgd", detector=det, restarts=0)
    with pytest.raises(ValueError, match="eps"):
        generate(small_victim, X, y, attack="pgd", eps=-1.0, detector=det)
    with pytest.raises(TypeError, match="detector must be"):
        generate(small_victim, X, y, attack="pgd", detector="magnet")
