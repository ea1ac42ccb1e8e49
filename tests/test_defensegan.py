"""DefenseGANDetector: the reference WGAN, WGAN-GP training, the latent search, thresholds."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from advdetect import DefenseGANDetector
from advdetect.defensegan import WGANGPNet
from advdetect.models import SmallCNN
from advdetect.nn.gan import WGAN, WGANCritic, WGANGenerator, gradient_penalty, latent_search

from .conftest import fgsm, invalid_parameter

TINY = dict(width=4, latent_dim=4, n_restarts=2, n_steps=5, max_epochs=1, device="cpu",
            random_state=0)


@pytest.fixture(scope="module")
def digits_det(digits_small):
    X, _ = digits_small
    return DefenseGANDetector(fpr=0.1, validation_fraction=0.25, **TINY).fit(X)


def test_mnist_networks_are_the_references():
    g = WGANGenerator((1, 28, 28), latent_dim=128, width=64)
    kinds = [type(m).__name__ for m in g.body]
    assert kinds == ["Linear", "ReLU", "Unflatten", "ConvTranspose2d", "CropTo", "ReLU",
                     "ConvTranspose2d", "CropTo", "ReLU", "ConvTranspose2d", "CropTo"]
    convs = [m for m in g.body if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 128), (128, 64), (64, 1)]
    assert g.body[0].out_features == 4 * 4 * 256
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    # 4 -> 8 cropped to 7 -> 14 -> 28, as the reference's output[:, :7, :7].
    assert [m.size for m in g.body if type(m).__name__ == "CropTo"] == [(7, 7), (14, 14), (28, 28)]
    out = g(torch.randn(3, 128))
    assert out.shape == (3, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    d = WGANCritic((1, 28, 28), width=64)
    convs = [m for m in d.body if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 64), (64, 128), (128, 256)]
    assert d.body[-1].in_features == 4 * 4 * 256
    assert d(torch.rand(3, 1, 28, 28)).shape == (3,)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8), (1, 7, 9), (2, 5, 4), (1, 3, 3),
                                   (1, 1, 6)])
def test_networks_are_sized_from_the_shape(shape):
    g, d = WGANGenerator(shape, 6, 4), WGANCritic(shape, 4)
    assert g(torch.randn(2, 6)).shape == (2, *shape)
    assert d(torch.rand(2, *shape)).shape == (2,)
    # No range: a linear output, values outside [0, 1] possible.
    assert WGANGenerator(shape, 6, 4, value_range=None).output.value_range is None


def test_gradient_penalty_is_the_unit_gradient_norm_penalty():
    real, fake = torch.rand(8, 1, 3, 3), torch.rand(8, 1, 3, 3)
    for scale, expected in ((1.0, 0.0), (2.0, 1.0), (3.0, 4.0)):
        w = torch.randn(9)
        w = scale * w / w.norm()
        critic = lambda x, w=w: x.flatten(1) @ w  # noqa: E731 - gradient norm = |w|
        assert float(gradient_penalty(critic, real, fake)) == pytest.approx(expected, abs=1e-5)


def test_wgan_gp_net_steps_the_generator_every_critic_iters_batches():
    X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)

    def run(critic_iters):
        torch.manual_seed(0)
        net = WGANGPNet(WGAN, module__image_shape=(1, 8, 8), module__latent_dim=4,
                        module__width=4, criterion=nn.MSELoss, max_epochs=1, batch_size=16,
                        train_split=None, critic_iters=critic_iters, lr=1e-2, device="cpu")
        net.initialize()
        g0 = [p.detach().clone() for p in net.module_.generator.parameters()]
        c0 = [p.detach().clone() for p in net.module_.critic.parameters()]
        net.partial_fit(X)
        moved = lambda ps, p0: any(not torch.equal(a, b) for a, b in zip(ps, p0))  # noqa: E731
        return (moved(net.module_.generator.parameters(), g0),
                moved(net.module_.critic.parameters(), c0), net)

    # 4 batches: one critic step each; the generator steps after every 4th (or 5th).
    g_moved, c_moved, net = run(5)
    assert c_moved and not g_moved and net.critic_steps_ == 4
    g_moved, c_moved, net = run(4)
    assert c_moved and g_moved
    assert len(net.history[-1, "batches"]) == 4


class _Linear(nn.Module):
    def __init__(self, latent_dim, d):
        super().__init__()
        self.latent_dim = latent_dim
        self.map = nn.Linear(latent_dim, d)

    def forward(self, z):
        return self.map(z).view(-1, 1, 1, self.map.out_features)


def test_latent_search_descends_and_keeps_the_best_restart():
    torch.manual_seed(0)
    g = _Linear(3, 12).requires_grad_(False)
    x = g(torch.randn(5, 3))  # in the generator's range: error can reach 0
    z0 = torch.randn(4, 3)

    def err(rec):
        return (rec - x).pow(2).flatten(1).sum(1)

    start = err(latent_search(g, x, z0, 0, 1.0)[0])
    found, z = latent_search(g, x, z0, 100, 1.0)
    assert (err(found) < 0.01 * start).all() and float(err(found).max()) < 1e-4
    torch.testing.assert_close(g(z), found)
    # The best of L restarts is at least as good as each restart alone.
    for j in range(4):
        alone = err(latent_search(g, x, z0[j:j + 1], 3, 1.0)[0])
        assert (err(latent_search(g, x, z0, 3, 1.0)[0]) <= alone + 1e-7).all()
    # Under no_grad (as in scoring) the search still descends.
    with torch.no_grad():
        again = latent_search(g, x, z0, 100, 1.0)[0]
    torch.testing.assert_close(again, found)


def test_fitted_attributes_and_threshold(digits_det, digits_small):
    X, _ = digits_small
    det = digits_det
    errors = det.calibration_["reconstruction_error"].to_numpy()
    assert det.n_calibration_ == 75 and errors.shape == (75,)
    assert not det.generator_.training
    assert not any(p.requires_grad for p in det.generator_.parameters())
    # offset_: the fpr-quantile of the clean held-out scores.
    scores = -errors
    assert det.offset_ == np.quantile(scores, 0.1, method="lower")
    assert np.mean(scores < det.offset_) <= 0.1
    f = det.reconstruction_errors(X)
    np.testing.assert_array_equal(f["score"], -f["reconstruction_error"])
    np.testing.assert_array_equal(det.predict(X) == -1, f["reconstruction_error"] > -det.offset_)
    # The error is ||G(z*) - x||^2 of the reconstruction transform returns.
    rec = det.transform(X[:10])
    np.testing.assert_allclose(f["reconstruction_error"][:10],
                               ((X[:10] - rec) ** 2).reshape(10, -1).sum(1), rtol=1e-5)


def test_recalibrate_moves_the_threshold_to_the_new_fpr(digits_det):
    det = clone(digits_det).set_params(fpr=0.3)
    det.__dict__.update({k: v for k, v in vars(digits_det).items() if k.endswith("_")})
    det.recalibrate()
    errors = det.calibration_["reconstruction_error"].to_numpy()
    assert det.offset_ == np.quantile(-errors, 0.3, method="lower")
    assert det.offset_ > digits_det.offset_


def test_transform_shape_and_range(digits_det, digits_small):
    X, _ = digits_small
    out = digits_det.transform(X[:6])
    assert out.shape == (6, 1, 8, 8) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert digits_det.transform(X[:6, 0]).shape == (6, 8, 8)
    np.testing.assert_array_equal(digits_det.transform(X[:6, 0]), out[:, 0])
    flat = DefenseGANDetector(input_shape=(1, 8, 8), **TINY).fit(X.reshape(len(X), -1))
    assert flat.transform(X[:6].reshape(6, -1)).shape == (6, 64)


def test_scores_do_not_depend_on_the_batch(digits_det, digits_small):
    X, _ = digits_small
    full = digits_det.score_samples(X[:40])
    np.testing.assert_array_equal(digits_det.score_samples(X[7:19]), full[7:19])


def test_fit_uses_only_clean_rows(digits_small):
    X, _ = digits_small
    junk = np.random.default_rng(0).random((50, 1, 8, 8), dtype=np.float32)
    a = DefenseGANDetector(**TINY).fit(X).score_samples(X[:10])
    b = DefenseGANDetector(**TINY).fit(np.r_[X, junk], np.r_[np.ones(len(X)), -np.ones(50)])
    np.testing.assert_array_equal(b.score_samples(X[:10]), a)


def test_same_seed_same_scores_other_seed_differs(digits_small):
    X, _ = digits_small
    s1 = DefenseGANDetector(**TINY).fit(X).score_samples(X[:20])
    s2 = DefenseGANDetector(**TINY).fit(X).score_samples(X[:20])
    np.testing.assert_array_equal(s1, s2)
    s3 = DefenseGANDetector(**dict(TINY, random_state=1)).fit(X).score_samples(X[:20])
    assert not np.allclose(s1, s3)


def test_pickle_round_trip(digits_det, digits_small):
    X, _ = digits_small
    again = pickle.loads(pickle.dumps(digits_det))
    np.testing.assert_array_equal(again.score_samples(X[:10]), digits_det.score_samples(X[:10]))
    np.testing.assert_array_equal(again.transform(X[:5]), digits_det.transform(X[:5]))


def test_defensegan_takes_no_classifier():
    """Model-agnostic: no classifier parameter to be silently ignored (issue 17)."""
    assert "classifier" not in DefenseGANDetector().get_params()
    with pytest.raises(TypeError):
        DefenseGANDetector(SmallCNN())
    with pytest.raises(TypeError):
        DefenseGANDetector.paper(SmallCNN())
    with pytest.raises(TypeError, match="model-agnostic and takes no classifier"):
        DefenseGANDetector.paper(classifier=SmallCNN())
    assert DefenseGANDetector.paper(max_epochs=3).n_steps == 200


def test_paper_recipe():
    det = DefenseGANDetector.paper(max_epochs=3)
    assert (det.n_restarts, det.n_steps, det.search_lr, det.search_momentum) == (10, 200, 10.0,
                                                                                  0.7)
    assert (det.latent_dim, det.width, det.critic_iters, det.gradient_penalty) == (128, 64, 5,
                                                                                  10.0)
    assert (det.lr, det.batch_size, det.max_epochs) == (1e-4, 50, 3)


@pytest.mark.parametrize("param, value", [
    ("n_restarts", 0), ("n_steps", -1), ("latent_dim", 0), ("width", 1.5), ("critic_iters", 0),
    ("search_lr", -1.0), ("gradient_penalty", -1.0), ("search_momentum", 1.0), ("fpr", 1.0),
    ("validation_fraction", 1.0), ("max_epochs", 0),
    # bool is an int, but never a count here (checked as code: Interval admits it).
    ("n_restarts", True), ("n_steps", False), ("width", True),
])
def test_invalid_parameters(digits_small, param, value):
    X, _ = digits_small
    with pytest.raises(InvalidParameterError, match=invalid_parameter(param, value)):
        DefenseGANDetector(**TINY).set_params(**{param: value}).fit(X[:20])


def test_mnist_fgsm_is_detected(mnist_small, mnist_victim):
    """Fit on 1,000 clean MNIST images; FGSM eps=0.3 examples reconstruct worse.

    A GAN needs some hundreds of critic steps before its range looks like
    digits (before that, noisy FGSM images sit closer to its grey output than
    clean ones): 12 epochs of 62 batches, on a tiny network (AUC 0.89 measured).
    """
    X_tr, _, X_te, y_te = mnist_small
    det = DefenseGANDetector(width=8, latent_dim=16, n_restarts=2, n_steps=20, max_epochs=12,
                             batch_size=16, lr=2e-3, device="cpu", random_state=0).fit(X_tr)
    X_adv = fgsm(mnist_victim.module_, X_te[:100], y_te[:100], eps=0.3)
    clean, adv = det.score_samples(X_te[:100]), det.score_samples(X_adv)
    y = np.r_[np.ones(100), -np.ones(100)]
    assert roc_auc_score(y, np.r_[clean, adv]) > 0.75
    assert np.mean(det.predict(X_adv) == -1) > np.mean(det.predict(X_te[:100]) == -1) + 0.1


def test_to_torch_is_the_decision_function_and_differentiable(digits_det, digits_small):
    X, _ = digits_small
    module = digits_det.to_torch()
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    x = torch.as_tensor(X[:12]).requires_grad_(True)
    out = module(x)
    assert out.shape == (12,)
    np.testing.assert_allclose(out.detach().numpy(), digits_det.decision_function(X[:12]),
                               rtol=1e-4, atol=1e-4)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # z* held fixed: the gradient is that of -||G(z*) - x||^2, i.e. 2 (G(z*) - x).
    rec = torch.as_tensor(digits_det.transform(X[:12]))
    torch.testing.assert_close(grad, 2 * (rec - x.detach()), rtol=1e-3, atol=1e-4)
    with torch.no_grad():  # the search still runs
        np.testing.assert_allclose(module(x).numpy(), out.detach().numpy(), rtol=1e-5)
    # The detector's generator is not shared (nor changed) by the module.
    assert module.generator is not digits_det.generator_
