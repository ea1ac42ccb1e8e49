"""Input checks: image layouts and ranges, outlier labels, the sizes thresholds need.

The messages name the problem and the fix (a single image, channels last, a
-1 row in ``y``); every detector, the attacks and the harness use these.
"""

import os
import sys

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import _fit_context

__all__ = ["layout_hint", "upper_quantile", "check_outlier_labels", "check_value_range"]


# Values a hair outside [0, 1] (float rounding in a user's scaling) are accepted.
RANGE_TOLERANCE = 1e-5


# A threshold at a strict minimum or maximum of n clean scores is passed by about
# 1 / (n + 1) of new clean images: below this many, over 1 %.
MIN_EXTREME_SAMPLES = 100


# No threshold can be learned from fewer clean images than this.
MIN_THRESHOLD_SAMPLES = 2


def upper_quantile(values, rate):
    """``sorted(values)[ceil(n (1 - rate)) - 1]``: at most a fraction ``rate`` lies above.

    Values strictly above it are flagged: ``floor(n * rate)`` of them without
    ties, the validation images MagNet's reference drops (it flags errors at or
    above the ``int(n * rate)``-th largest); Feature Squeezing's reference
    uses the same rule.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    k = int(np.ceil(len(values) * (1.0 - rate)))
    return float(values[min(max(k, 1), len(values)) - 1])


_EXPECTED_INPUT = ("a detector needs images of shape (n, C, H, W), (n, H, W) or flat "
                   "(n, C*H*W) holding real pixel intensities")


def _as_numeric_array(X):
    """``X`` as a numpy array (or a DataFrame, kept for its column names).

    Rejects, with a message that names the problem, what ``check_array`` would
    reject obscurely or accept by accident: sparse matrices, complex numbers
    (numpy would print the whole array), strings (numpy would parse ``"0.5"``),
    ragged nested lists, and object arrays holding anything but real numbers.
    Torch tensors are detached and moved to the CPU, bfloat16 (which numpy
    lacks) widened to float32.
    """
    if sp.issparse(X):
        raise ValueError(
            "sparse input is not supported: a detector of adversarial images needs a "
            "dense array of images of shape (n, C, H, W), (n, H, W) or (n, C*H*W).")
    if torch.is_tensor(X):
        X = X.detach().cpu().resolve_conj().resolve_neg()
        if X.is_complex():
            raise ValueError(f"Complex data not supported: X is a complex tensor ({X.dtype}); "
                             f"{_EXPECTED_INPUT}.")
        if X.dtype == torch.bfloat16:
            X = X.float()
        X = X.numpy()
    elif isinstance(X, (list, tuple)):
        try:
            X = np.asarray(X)
        except ValueError as exc:
            raise ValueError(f"X is not a regular array (nested lists of different lengths?); "
                             f"{_EXPECTED_INPUT}. numpy: {exc}") from None
    if not isinstance(X, np.ndarray):
        return X  # DataFrames and other array-likes: check_array converts them
    kind = X.dtype.kind
    if kind in "US":
        raise ValueError(f"X holds strings (dtype {X.dtype}); {_EXPECTED_INPUT}. Convert "
                         "text to numbers before calling the detector.")
    if kind == "c":
        raise ValueError(f"Complex data not supported: X has dtype {X.dtype}; "
                         f"{_EXPECTED_INPUT}.")
    if kind == "O":
        if any(isinstance(v, (str, bytes)) for v in X.flat):
            raise ValueError(f"X holds strings (an object array); {_EXPECTED_INPUT}.")
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            # TypeError stays a TypeError (what numpy and scikit-learn raise for it).
            raise type(exc)(f"X is an object array that does not hold only real numbers "
                            f"({exc}); {_EXPECTED_INPUT}.") from None
    elif kind not in "biuf":  # datetimes, timedeltas, structured records
        raise ValueError(f"X has dtype {X.dtype}; {_EXPECTED_INPUT}.")
    return X


def layout_hint(shape, image_shape=None):
    """A sentence telling how to fix an image array of a likely wrong layout, or ``""``.

    Detectors and attacks take channels-first batches ``(n, C, H, W)``. Two
    mistakes are common and otherwise surface as misleading errors (a single
    ``(3, 32, 32)`` image read as three grey images; torch's "expected 3
    channels, but got 32" for a channels-last batch): a single image passed
    without its batch axis, and a channels-last batch ``(n, H, W, C)``.

    Parameters
    ----------
    shape : tuple of int
        The shape of the array as the user passed it.
    image_shape : tuple of int, optional
        ``(C, H, W)`` the images should have (a fitted detector's
        ``image_shape_``); without it the hint goes by the shape alone.

    Returns
    -------
    str
        Empty when the layout looks right; else one sentence with the fix.

    Examples
    --------
    >>> layout_hint((8, 32, 32, 3))
    ' X looks channels-last (n, H, W, C) = (8, 32, 32, 3): pass channels-first images, np.moveaxis(X, -1, 1) (torch: X.permute(0, 3, 1, 2)).'
    >>> layout_hint((3, 32, 32), image_shape=(3, 32, 32))
    ' X looks like a single image of shape (3, 32, 32): pass a batch of one, X[None].'
    >>> layout_hint((100, 1, 28, 28))
    ''
    """
    shape = tuple(int(s) for s in shape)
    channels = (1, 3, 4)
    if image_shape is not None:
        c, h, w = (int(s) for s in image_shape)
        if shape == (c, h, w) and c > 1 or (c == 1 and shape == (h, w)):
            return (f" X looks like a single image of shape {shape}: pass a batch of one, "
                    "X[None].")
        if shape == (h, w, c) and c > 1:
            return (f" X looks like a single channels-last image of shape {shape}: pass "
                    "np.moveaxis(X, -1, 0)[None].")
        if len(shape) == 4 and shape[1:] == (h, w, c) and c > 1:
            return (f" X looks channels-last (n, H, W, C) = {shape}: pass channels-first "
                    "images, np.moveaxis(X, -1, 1) (torch: X.permute(0, 3, 1, 2)).")
        return ""
    if len(shape) == 4 and shape[-1] in channels and shape[1] not in channels:
        return (f" X looks channels-last (n, H, W, C) = {shape}: pass channels-first "
                "images, np.moveaxis(X, -1, 1) (torch: X.permute(0, 3, 1, 2)).")
    if len(shape) == 3 and shape[0] in (3, 4) and min(shape[1:]) > 4:
        return (f" X may be a single image of shape {shape} (C, H, W), which is read as "
                f"{shape[0]} greyscale images: pass a batch of one, X[None].")
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:
        return (f" X may be a single channels-last image of shape {shape}: pass "
                "np.moveaxis(X, -1, 0)[None].")
    return ""


def _clean_rows(y, n_samples):
    """Indices of the clean rows (``y == +1``) when ``y`` holds a -1, else ``None``.

    -1 cannot be a class of a torch classifier (its targets are
    ``range(n_classes)``), so a numeric ``y`` holding -1 is read as outlier
    labels, which must then be +1 or -1 only; any other ``y`` is not.
    """
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iuf" or not np.any(y == -1):
        return None
    if len(y) != n_samples:
        raise ValueError(f"y has {len(y)} labels for {n_samples} samples.")
    other = np.unique(y[(y != 1) & (y != -1)])
    if other.size:
        raise ValueError(
            f"y holds -1 (adversarial, in the outlier convention: +1 clean, -1 adversarial) "
            f"and also the value(s) {other[:5].tolist()}: outlier labels must be +1 or -1 "
            "only, and -1 is never a class label of a torch classifier.")
    keep = np.flatnonzero(y == 1)
    if keep.size == 0:
        raise ValueError("y marks every sample as adversarial (-1): fit needs clean images "
                         "(y == +1) to train on.")
    return keep


# The code of scikit-learn's _fit_context wrapper, a frame between a detector's fit
# and its caller: a warning's stacklevel skips it as it skips advdetect's frames.
_FIT_CONTEXT_CODE = _fit_context(prefer_skip_nested_validation=True)(lambda self: None).__code__


def _caller_stacklevel():
    """``stacklevel`` for a warning raised here that points at the first frame outside advdetect.

    The frames of advdetect and of scikit-learn's ``_fit_context`` wrapper
    around ``fit`` are skipped.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and (
            frame.f_code is _FIT_CONTEXT_CODE
            or os.path.abspath(frame.f_code.co_filename).startswith(package)):
        frame, level = frame.f_back, level + 1
    return level


def _check_enough_images(X, where):
    """ValueError when fewer than ``MIN_THRESHOLD_SAMPLES`` images reach a threshold."""
    n = len(X)
    if n < MIN_THRESHOLD_SAMPLES:
        raise ValueError(
            f"{where} got {n} sample{'s' if n != 1 else ''}: a detector learns its threshold "
            f"from the spread of the scores of clean images and needs at least "
            f"{MIN_THRESHOLD_SAMPLES} of them (and about 1/rate for a threshold that flags a "
            f"fraction rate of clean images).")


def check_outlier_labels(y, n, fix, name):
    """``y`` as int64 outlier labels (+1 clean, -1 adversarial, both present), or a ValueError.

    The one check of the detectors that train on adversarial examples
    (:class:`~advdetect.BinaryClassifierDetector`, the logistic ensemble of
    :class:`~advdetect.MahalanobisDetector`).

    Parameters
    ----------
    y : array-like of shape (n,) or (n, 1), or None
    n : int
        The number of images ``y`` labels.
    fix : str
        What the user should do, appended to every message.
    name : str
        The estimator's class name (scikit-learn's message for a missing y).

    Returns
    -------
    ndarray of shape (n,), int64

    Raises
    ------
    ValueError
        When ``y`` is None, has another shape or length, or holds anything
        but +1 and -1, or not both.
    """
    if y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None. " + fix)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must have shape ({n},), one label per image; got {y.shape}. "
                         + fix)
    if y.dtype.kind not in "iuf" or not np.all(np.isin(y, (1, -1))) \
            or not (np.any(y == 1) and np.any(y == -1)):
        raise ValueError(f"y holds {np.unique(y)[:5].tolist()}; it must hold both +1 "
                         "(clean) and -1 (adversarial) and nothing else. " + fix)
    return y.astype(np.int64)


def check_value_range(images, value_range, advice):
    """``images`` with values in ``value_range``, or a ValueError that says how to scale them.

    The one range check of the detectors and the attacks. Values within
    :data:`RANGE_TOLERANCE` outside the range (float rounding in a user's
    scaling) are clipped, on a copy only then.

    Parameters
    ----------
    images : ndarray, float
    value_range : (float, float)
        ``(low, high)``.
    advice : str
        What to do when the range is wrong (for ``[0, 1]``: divide 8-bit
        images by 255), the end of the message.

    Returns
    -------
    ndarray, the same dtype

    Raises
    ------
    ValueError
        When a value lies more than ``RANGE_TOLERANCE`` outside ``value_range``.
    """
    lo, hi = value_range
    xmin, xmax = float(images.min()), float(images.max())
    if xmin < lo - RANGE_TOLERANCE or xmax > hi + RANGE_TOLERANCE:
        raise ValueError(f"X has values in [{xmin:.4g}, {xmax:.4g}], outside [{lo}, {hi}]: "
                         + advice)
    if xmin < lo or xmax > hi:  # within the tolerance: clip (a copy only then)
        images = np.clip(images, lo, hi)
    return images
