"""Structural similarity (SSIM) in torch: batched, differentiable, per channel.

Implements the Gaussian-window SSIM of Wang, Bovik, Sheikh and Simoncelli,
*Image quality assessment: from error visibility to structural similarity*,
IEEE TIP 13(4), 2004 (CMAG paper Eqs. 6-10 with alpha = beta = gamma = 1), and
reproduces ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0)`` to 1e-5.

Why not pytorch-msssim: it filters with zero padding-free "valid" convolution
only, so it cannot score images smaller than its 11-tap window (8x8 digits, the
flat vectors of scikit-learn's common checks), and its per-image mean does not
match scikit-image's cropped mean for those. The whole computation is five
separable filters, which we run as two batched matrix products (five times
faster on the CPU than single-channel convolutions); tested against scikit-image.
"""

import functools

import numpy as np
import torch

__all__ = ["ssim", "ssim_window_size", "SSIMLoss"]


def ssim_window_size(height, width, preferred=11):
    """Largest odd window <= ``preferred`` that fits a ``height`` x ``width`` image.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    preferred : int, default=11
        The window of Wang et al. (2004).

    Returns
    -------
    int
        An odd window size, at least 1.

    Examples
    --------
    >>> ssim_window_size(28, 28), ssim_window_size(8, 8), ssim_window_size(1, 5)
    (11, 7, 1)
    """
    win = min(preferred, height, width)
    if win % 2 == 0:
        win -= 1
    return max(win, 1)


@functools.lru_cache(maxsize=64)
def _filter_matrix(n, sigma, truncate, crop):
    """(n_out, n) matrix of a 1-D Gaussian filter with scipy's "reflect" edges and the crop.

    Filtering an axis is then one matrix product. As scipy.ndimage.gaussian_filter
    (which scikit-image uses): taps exp(-t^2 / 2 sigma^2) normalised, radius
    int(truncate * sigma + 0.5), edges extended symmetrically (d c b a | a b c d);
    the ``crop`` pixels on each side are dropped, as scikit-image does before
    averaging the SSIM map.
    """
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    # Source index of every padded position, mode "reflect" (numpy "symmetric").
    period = 2 * n
    matrix = np.zeros((n - 2 * crop, n))
    for o in range(n - 2 * crop):
        centre = o + crop
        src = np.mod(np.arange(centre - radius, centre + radius + 1), period)
        src = np.where(src >= n, period - 1 - src, src)
        np.add.at(matrix[o], src, taps)
    return matrix


def _filter(x, sigma, crop):
    """Separable Gaussian filter of (N, C, H, W) as two batched matrix products."""
    h, w = x.shape[-2:]
    mh = torch.as_tensor(_filter_matrix(h, sigma, 3.5, crop), dtype=x.dtype, device=x.device)
    mw = torch.as_tensor(_filter_matrix(w, sigma, 3.5, crop), dtype=x.dtype, device=x.device)
    return mh @ x @ mw.T


def ssim(x, y, data_range=1.0, win_size=None, sigma=1.5, k1=0.01, k2=0.03,
         reduction="mean"):
    """SSIM between two batches of images.

    Parameters
    ----------
    x, y : torch.Tensor of shape (N, C, H, W)
        Images to compare, on the same device and with the same dtype.
    data_range : float, default=1.0
        Dynamic range of the pixel values (1 for images scaled to [0, 1]).
    win_size : int or None, default=None
        Odd side of the window over which the SSIM map is averaged (the crop of
        scikit-image). ``None`` takes 11, or the largest odd size that fits
        an image under 11 px (:func:`ssim_window_size`).
    sigma : float, default=1.5
        Standard deviation of the Gaussian weights (truncated at 3.5 sigma).
    k1, k2 : float, default=0.01, 0.03
        Stabilising constants; C1 = (k1 * data_range)^2, C2 = (k2 * data_range)^2.
    reduction : {"mean", "none", "channel"}, default="mean"
        ``"mean"``: one value per image, the mean over channels of the
        per-channel SSIM (scikit-image's ``channel_axis`` behaviour).
        ``"channel"``: shape (N, C). ``"none"``: the cropped SSIM map.

    Returns
    -------
    torch.Tensor
        Shape (N,) for ``"mean"``.

    Examples
    --------
    >>> import torch
    >>> a = torch.rand(2, 1, 28, 28)
    >>> ssim(a, a)
    tensor([1., 1.])
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"ssim expects two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}")
    h, w = x.shape[-2:]
    if win_size is None:
        win_size = ssim_window_size(h, w)
    if win_size % 2 == 0 or win_size < 1 or win_size > min(h, w):
        raise ValueError(f"win_size must be odd and at most {min(h, w)}, got {win_size}")
    crop = (win_size - 1) // 2

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # The local (co)variances are E[x^2] - E[x]^2, which cancels catastrophically
    # in float32 where an image is near-flat at a bright level (0.8^2 has an ulp
    # of 6e-8, a thousandth of C2): SSIM then left [-1, 1] (1.0000662 for a flat
    # 0.8 patch and the same + 2e-7). Two rearrangements, exact in real numbers,
    # keep float32 within 1e-6 of scikit-image's float64:
    # * the moments are shift-invariant, so each image and channel is centred
    #   on its own mean first (detached: the value does not depend on the shift,
    #   so neither does the true gradient); the luminance gets the mean back;
    # * each factor is written as 1 - (a small, accurately computed term):
    #   2 mu_x mu_y + C1 = (mu_x^2 + mu_y^2 + C1) - (mu_x - mu_y)^2 and
    #   2 cov + C2 = (var_x + var_y + C2) - var(x - y), so near-identical images
    #   do not subtract two numbers close to 1.
    shift_x = x.detach().mean(dim=(2, 3), keepdim=True)
    shift_y = y.detach().mean(dim=(2, 3), keepdim=True)
    xc, yc = x - shift_x, y - shift_y
    dc = xc - yc
    # One filter call for the five moments keeps this a single batched op.
    stacked = torch.cat([xc, yc, xc * xc, yc * yc, dc * dc], dim=1)
    mc_x, mc_y, m_xx, m_yy, m_dd = _filter(stacked, float(sigma), crop).chunk(5, dim=1)
    var_x = m_xx - mc_x * mc_x
    var_y = m_yy - mc_y * mc_y
    mc_d = mc_x - mc_y
    var_d = m_dd - mc_d * mc_d                      # var_x + var_y - 2 cov
    mu_x, mu_y = mc_x + shift_x, mc_y + shift_y
    mu_d = mc_d + (shift_x - shift_y)               # mu_x - mu_y
    luminance = 1 - mu_d * mu_d / (mu_x * mu_x + mu_y * mu_y + c1)
    contrast_structure = 1 - var_d / (var_x + var_y + c2)
    smap = luminance * contrast_structure
    # What rounding is left (a variance of -1e-9 where the true one is 0) can
    # still put a pixel a hair outside [-1, 1], where SSIM lies by construction.
    smap = smap.clamp(-1.0, 1.0)
    if reduction == "none":
        return smap
    per_channel = smap.mean(dim=(2, 3))
    if reduction == "channel":
        return per_channel
    if reduction == "mean":
        return per_channel.mean(dim=1)
    raise ValueError(f"reduction must be 'mean', 'channel' or 'none', got {reduction!r}")


class SSIMLoss(torch.nn.Module):
    """CMAG's reconstruction loss, Eqs. (12)-(14) with the misprint corrected.

    ``mu * ||x_hat - x||_2^2 + (1 - mu) * (1 - SSIM(x_hat, x))``, averaged over
    the batch. The paper prints ``+ (1 - mu) * SSIM``; minimising a similarity
    would push reconstructions *away* from the input, so the SSIM term of the
    loss is ``1 - SSIM`` (as in Zhao et al. 2017, the paper's ref. [35]).

    Parameters
    ----------
    mu : float, default=0.5
        Weight of the squared L2 term (paper: 0.5 for FMR, LR and GR).
    data_range : float, default=1.0
        Passed to :func:`ssim`; the L2 term is measured in units of it too,
        ``||(x_hat - x) / data_range||^2``, so ``mu`` weighs the two terms
        alike whatever the scale of the images (the paper's images are in
        [0, 1]).

    Notes
    -----
    ``forward(x_hat, x)`` takes the reconstructions and the targets (``x`` is
    reshaped to ``x_hat``'s ``(N, C, H, W)``) and returns a scalar tensor.
    With ``mu=1`` the SSIM term is skipped (and not computed).

    Examples
    --------
    >>> import torch
    >>> from advdetect.nn.ssim import SSIMLoss
    >>> x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> loss = SSIMLoss(mu=0.5)
    >>> float(loss(x, x))                        # a perfect reconstruction
    0.0
    >>> x_hat = torch.full_like(x, 0.5, requires_grad=True)
    >>> value = loss(x_hat, x)
    >>> value.backward()                         # differentiable, as training needs
    >>> bool(value > 0), x_hat.grad.shape
    (True, torch.Size([4, 1, 16, 16]))
    """

    def __init__(self, mu=0.5, data_range=1.0):
        super().__init__()
        self.mu = mu
        self.data_range = data_range

    def forward(self, x_hat, x):
        x = x.reshape(x_hat.shape)
        diff = x_hat - x if self.data_range == 1 else (x_hat - x) / self.data_range
        l2 = (diff ** 2).flatten(1).sum(dim=1)
        loss = self.mu * l2
        if self.mu < 1:
            loss = loss + (1 - self.mu) * (1 - ssim(x_hat, x, data_range=self.data_range))
        return loss.mean()

