"""Feature Squeezing's squeezers (Xu, Evans & Qi, NDSS 2018), batched in torch.

Each maps a float tensor ``(n, C, H, W)`` with values in [0, 1] to one of the
same shape: colour bit-depth reduction, median smoothing and non-local means,
as in the reference code (GitHub ``mzweilin/EvadeML-Zoo``,
``utils/squeeze.py``). The detector that reads them is
:class:`advdetect.FeatureSqueezingDetector`, which maps other input ranges to
[0, 1] and back.
"""

import numbers

import numpy as np
import torch

__all__ = ["bit_depth", "median_filter", "non_local_means"]


def bit_depth(x, bits):
    """Colour bit-depth reduction to ``bits`` bits.

    ``round(x * (2^b - 1)) / (2^b - 1)`` with round-half-to-even, as the
    reference's ``np.rint``; 1 bit is ``rint(x)``.

    Examples
    --------
    >>> import torch
    >>> bit_depth(torch.tensor([0.2, 0.5, 0.7]), 1)
    tensor([0., 0., 1.])
    """
    levels = float(2 ** int(bits) - 1)
    return torch.round(x * levels) / levels


def _symmetric_index(n, before, after, device):
    """Indices that pad an axis of length n like ``scipy.ndimage``'s ``mode="reflect"``.

    scipy's "reflect" is half-sample symmetric (d c b a | a b c d | d c b a),
    which ``torch.nn.functional.pad`` does not offer ("reflect" there is
    scipy's "mirror").
    """
    idx = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def median_filter(x, size):
    """Median smoothing (local spatial smoothing) of each image and channel.

    The same as ``scipy.ndimage.median_filter(x, size=(1, 1, kh, kw),
    mode="reflect")``, the reference's filter, batched in torch (so it runs on
    the GPU): the window at pixel (i, j) covers rows i - kh//2 .. i - kh//2 + kh - 1
    (so a 2x2 window covers the pixel and its upper-left neighbours), edges
    are padded symmetrically, and for an even window the upper of the two
    middle values is taken (scipy's rank ``kh * kw // 2``), not the mean.

    Parameters
    ----------
    x : torch.Tensor of shape (n, C, H, W)
    size : int or (int, int)
        Window height and width.

    Returns
    -------
    torch.Tensor of shape (n, C, H, W)
    """
    kh, kw = (size, size) if isinstance(size, numbers.Integral) else size
    kh, kw = int(kh), int(kw)
    if kh * kw == 1:
        return x
    _, _, h, w = x.shape
    top, left = kh // 2, kw // 2
    rows = _symmetric_index(h, top, kh - 1 - top, x.device)
    cols = _symmetric_index(w, left, kw - 1 - left, x.device)
    padded = x.index_select(2, rows).index_select(3, cols)
    windows = padded.unfold(2, kh, 1).unfold(3, kw, 1)  # (n, C, H, W, kh, kw)
    windows = windows.reshape(*windows.shape[:4], kh * kw)
    return windows.kthvalue(kh * kw // 2 + 1, dim=-1).values


def non_local_means(x, search_window, patch_size, strength):
    """Non-local means denoising (non-local spatial smoothing) of each image, on the CPU.

    The reference calls OpenCV's ``fastNlMeansDenoising[Colored](img,
    h=strength, templateWindowSize=patch_size, searchWindowSize=search_window)``
    on 8-bit images; here ``skimage.restoration.denoise_nl_means`` (a
    dependency already) with ``patch_size``, ``patch_distance = search_window // 2``
    and ``h = strength / 255`` on the [0, 1] scale. The two implementations
    weigh patches alike but not identically (OpenCV also denoises colour
    images in CIELAB), so results are close, not equal. It runs image by
    image with numpy, so it is the slow squeezer.

    Parameters
    ----------
    x : torch.Tensor of shape (n, C, H, W)
    search_window, patch_size : int
    strength : float
        Filter strength h on the 0-255 scale (the reference's "photo render").

    Returns
    -------
    torch.Tensor of shape (n, C, H, W)
    """
    from skimage.restoration import denoise_nl_means

    arr = x.detach().cpu().numpy()
    out = np.empty_like(arr)
    kwargs = dict(patch_size=int(patch_size), patch_distance=int(search_window) // 2,
                  h=float(strength) / 255.0, fast_mode=True)
    for i, img in enumerate(arr):
        if img.min() == img.max():
            # A constant image is its own denoising (every weight averages equal
            # values); this skips the zero rows that pad a short last batch.
            out[i] = img
        elif img.shape[0] == 1:
            out[i, 0] = denoise_nl_means(img[0], channel_axis=None, **kwargs)
        else:
            out[i] = denoise_nl_means(img, channel_axis=0, **kwargs)
    return torch.as_tensor(out, dtype=x.dtype, device=x.device)
