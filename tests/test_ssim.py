import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from advdetect.nn.ssim import SSIMLoss, ssim, ssim_window_size


def _reference(a, b, win):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1,
                                 channel_axis=0, win_size=win)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 7, 9),
                                   (2, 12, 12), (1, 1, 5), (1, 3, 3)])
@pytest.mark.parametrize("kind", ["random", "near"])
def test_matches_scikit_image(shape, kind):
    rng = np.random.default_rng(sum(shape) * 7 + len(kind))
    a = rng.random((4,) + shape)
    if kind == "near":
        b = np.clip(a + rng.normal(0, 0.01, a.shape), 0, 1)
    else:
        b = rng.random(a.shape)
    win = ssim_window_size(*shape[1:])
    ours = ssim(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    ref = np.array([_reference(a[i], b[i], win) for i in range(len(a))])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_identical_images_score_one_and_batch_independent():
    x = torch.rand(5, 3, 16, 16)
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-6)
    y = torch.rand(5, 3, 16, 16)
    full = ssim(x, y)
    single = torch.cat([ssim(x[i:i + 1], y[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(full, single)


def test_channel_reduction_is_per_channel():
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    per_channel = ssim(x, y, reduction="channel")
    assert per_channel.shape == (2, 3)
    torch.testing.assert_close(per_channel[:, 1], ssim(x[:, 1:2], y[:, 1:2]))
    torch.testing.assert_close(per_channel.mean(1), ssim(x, y))


def test_differentiable():
    x = torch.rand(2, 1, 28, 28)
    y = torch.rand(2, 1, 28, 28, requires_grad=True)
    ssim(y, x).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape|one shape"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 9, 9))
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), win_size=11)


def test_loss_is_l2_plus_one_minus_ssim():
    x = torch.rand(3, 1, 12, 12)
    x_hat = torch.rand(3, 1, 12, 12)
    l2 = ((x_hat - x) ** 2).flatten(1).sum(1)
    expected = (0.3 * l2 + 0.7 * (1 - ssim(x_hat, x))).mean()
    torch.testing.assert_close(SSIMLoss(mu=0.3)(x_hat, x), expected)
    # A perfect reconstruction has zero loss (the paper's "+ SSIM" would give 1 - mu).
    assert SSIMLoss(mu=0.5)(x, x).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- #
# Near-flat images: E[x^2] - E[x]^2 cancels in float32 (issue 14, item 1)
# --------------------------------------------------------------------------- #
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_ssim_of_near_flat_images_stays_at_most_one():
    # The field report: 1.0000662 before the moments were centred.
    x = np.full((1, 1, 11, 11), 0.8, np.float32)
    y = x + np.float32(2e-7)
    ours = ssim(torch.tensor(x), torch.tensor(y)).item()
    assert ours <= 1.0
    assert ours == pytest.approx(_reference(x[0].astype(np.float64), y[0].astype(np.float64),
                                            11), abs=1e-5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 24), w=st.integers(1, 24), c=st.integers(1, 3),
       level=st.floats(0.0, 1.0), block=st.floats(0.0, 1.0),
       noise=st.sampled_from([0.0, 1e-7, 1e-6, 1e-4, 1e-2]),
       gap=st.sampled_from([0.0, 1e-7, 2e-7, 1e-5, 1e-3]), seed=st.integers(0, 2 ** 16))
def test_ssim_stays_in_range_and_matches_scikit_image_on_near_constant_images(
        h, w, c, level, block, noise, gap, seed):
    rng = np.random.default_rng(seed)
    a = np.full((1, c, h, w), level)
    a[..., : max(h // 2, 1), : max(w // 3, 1)] = block  # two flat levels
    a = np.clip(a + rng.normal(0, noise, a.shape), 0, 1).astype(np.float32)
    b = np.clip(a + rng.normal(0, gap, a.shape), 0, 1).astype(np.float32)
    ours = ssim(torch.tensor(a), torch.tensor(b)).item()
    ref = _reference(a[0].astype(np.float64), b[0].astype(np.float64),
                     ssim_window_size(h, w))
    assert -1.0 <= ours <= 1.0
    assert ours == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("noise", [1e-3, 1e-5])
@pytest.mark.parametrize("level", [0.05, 0.8, 0.999])
def test_ssim_gradient_on_near_flat_images_matches_float64(level, noise):
    # SSIM is a training loss: the float32 gradient must be the float64 one
    # (of the same float32 images), also where the moments used to cancel
    # (the old E[x^2] - E[x]^2 was off by 0.6 % here).
    rng = np.random.default_rng(int(level * 1000))
    x = np.clip(level + rng.normal(0, noise, (2, 1, 12, 12)), 0, 1).astype(np.float32)
    t = np.clip(x + rng.normal(0, noise, x.shape), 0, 1).astype(np.float32)
    grads = []
    for dtype in (torch.float32, torch.float64):
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        ssim(xt, torch.tensor(t, dtype=dtype)).sum().backward()
        grads.append(xt.grad.double())
    scale = float(grads[1].abs().max())
    assert scale > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5 * scale, rtol=0)


def test_ssim_gradient_is_exact_in_float64():
    x = torch.rand(1, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    t = (x.detach() + 1e-3 * torch.randn_like(x)).clamp(0, 1)
    assert torch.autograd.gradcheck(lambda v: ssim(v, t), (x,))
