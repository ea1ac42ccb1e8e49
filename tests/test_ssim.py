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
