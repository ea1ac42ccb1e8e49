"""Feature Squeezing: compare the classifier's prediction on x and on squeezed x.

Weilin Xu, David Evans, Yanjun Qi, *Feature Squeezing: Detecting Adversarial
Examples in Deep Neural Networks*, NDSS 2018: the squeezers (colour bit-depth
reduction, median smoothing, non-local means) and the detector (the L1
distance between softmax vectors, ``score(x) = ||g(x) - g(squeeze(x))||_1``,
maximised over the squeezers for joint detection), as in the reference code
(GitHub ``mzweilin/EvadeML-Zoo``: ``utils/squeeze.py``,
``detections/feature_squeezing.py``).
"""

import numbers
from functools import partial

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseDetector, as_logits, invalid_parameter, upper_quantile
from .nn.squeezers import bit_depth, median_filter, non_local_means

__all__ = ["FeatureSqueezingDetector", "bit_depth", "median_filter", "non_local_means",
           "SQUEEZER_PRESETS"]

#: The paper's joint-detection configurations per dataset.
SQUEEZER_PRESETS = {
    "mnist": (("bit_depth", 1), ("median", 2)),
    "cifar10": (("bit_depth", 5), ("median", 2), ("nl_means", (13, 3, 2))),
    "imagenet": (("bit_depth", 5), ("median", 2), ("nl_means", (11, 3, 4))),
}


def _numbers(param, counts):
    """``param`` as a tuple of positive numbers of one of the lengths ``counts``."""
    values = (param,) if isinstance(param, numbers.Number) else tuple(param)
    if len(values) not in counts or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 for v in values):
        raise TypeError
    return values


def _integer(value):
    if int(value) != value or value < 1:
        raise TypeError
    return int(value)


def _parse_squeezer(spec):
    """``(name, param)`` -> ``(column name, function of a batch)``; ValueError if invalid."""
    try:
        if isinstance(spec, str):
            raise TypeError
        name, param = spec
    except (TypeError, ValueError):
        raise ValueError(f"each squeezer must be a pair (name, parameter) such as "
                         f"('bit_depth', 1), ('median', 2) or ('nl_means', (13, 3, 2)); "
                         f"got {spec!r}") from None
    try:
        if name == "bit_depth":
            (bits,) = _numbers(param, (1,))
            bits = _integer(bits)
            if bits > 16:
                raise TypeError
            return f"bit_depth_{bits}", partial(bit_depth, bits=bits)
        if name == "median":
            size = tuple(_integer(v) for v in _numbers(param, (1, 2)))
            size = size * 2 if len(size) == 1 else size
            label = "_".join(map(str, size if size[0] != size[1] else size[:1]))
            return f"median_{label}", partial(median_filter, size=size)
        if name == "nl_means":
            search, patch, strength = _numbers(param, (3,))
            search, patch, strength = _integer(search), _integer(patch), float(strength)
            label = f"{search}_{patch}_{strength:g}"
            return f"nl_means_{label}", partial(non_local_means, search_window=search,
                                                 patch_size=patch, strength=strength)
    except (TypeError, ValueError):
        expected = {"bit_depth": "an integer number of bits in [1, 16]",
                    "median": "a window size >= 1 or a pair (height, width)",
                    "nl_means": "a triple (search_window, patch_size, strength h)"}[name]
        raise ValueError(f"squeezer {name!r} needs {expected}; got {param!r}") from None
    raise ValueError(f"unknown squeezer {name!r}: choose from 'bit_depth', 'median', "
                     f"'nl_means' (or a preset name: {sorted(SQUEEZER_PRESETS)})")


class _Counted:
    """An image array whose batches advance a progress bar as they are read."""

    def __init__(self, X, bar):
        self.X, self.bar = X, bar

    def __len__(self):
        return len(self.X)

    def __getitem__(self, key):
        batch = self.X[key]
        self.bar.update(len(batch))
        return batch


class FeatureSqueezingDetector(BaseDetector):
    """Feature Squeezing detector of adversarial examples.

    Xu, Evans and Qi (NDSS 2018) "squeeze" an input - reduce its colour bit
    depth, smooth it with a median filter or non-local means - which removes
    much of an adversarial perturbation but barely changes a clean image. The
    classifier's softmax on a clean image hardly moves under squeezing; on an
    adversarial image it does. The score is the L1 distance between the
    softmax vectors on x and on squeeze(x), maximised over the squeezers
    (joint detection), and inputs scoring above the
    ``1 - fpr`` quantile of the clean training scores are flagged.

    Nothing is trained: ``fit`` runs the classifier on the clean images once
    per squeezer and sets the threshold.

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        The protected classifier, returning logits or probabilities. ``fit``
        works on a frozen deep copy; the object passed in is never modified.
    squeezers : sequence of (name, parameter) or str, default=(("bit_depth", 1), ("median", 2))
        The squeezers, each one of

        * ``("bit_depth", b)``: ``round(x (2^b - 1)) / (2^b - 1)``;
        * ``("median", k)`` or ``("median", (kh, kw))``: median filter, as
          ``scipy.ndimage.median_filter(mode="reflect")``;
        * ``("nl_means", (search_window, patch_size, h))``: non-local means with
          the filter strength h on the 0-255 scale (CPU only, slow).

        or a preset name from ``SQUEEZER_PRESETS``: ``"mnist"`` (the default:
        1-bit depth and 2x2 median, the paper's MNIST setting), ``"cifar10"``
        (5-bit depth, 2x2 median, non-local means 13-3-2) or ``"imagenet"``
        (5-bit, 2x2 median, non-local means 11-3-4).
    fpr : float in [0, 1), default=0.05
        Target false-positive rate on the clean training images: the threshold
        is ``sorted(d)[ceil(n (1 - fpr)) - 1]`` over their scores d, the 95th
        percentile by default (the reference's rule and setting).
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input. ``"flat"``
        treats each row of 2-D input as a vector (the classifier then receives
        the rows as they are, and each row is squeezed as a 1 x d image).
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range that input values must lie in. ``None`` accepts any finite values.
        The squeezers are defined on [0, 1] (the paper's): inputs are mapped
        from this range to [0, 1], squeezed and mapped back, so
        ``input_range=(0, 255)`` squeezes 8-bit images as the paper does
        scaled ones. With ``None`` the range of the training images is used
        (``squeeze_range_``).
    batch_size : int, default=256
        Inference batch size.
    device : {"auto", "cpu", "cuda"}, default="auto"
        ``"auto"`` uses CUDA when available. Non-local means always runs on the
        CPU.
    random_state : int or None, default=None
        Unused: feature squeezing is deterministic. Accepted for the API that
        all advdetect detectors share.
    verbose : int, default=0
        0 silent; 1 a progress bar over the images scored in ``fit``.

    Attributes
    ----------
    classifier_ : HookedClassifier
        The frozen copy of the classifier.
    classifier_output_ : {"logits", "proba"}
        What the classifier returns; probabilities are used as they are.
    classifier_digest_ : str
        SHA-256 of the weights of ``classifier`` as passed to ``fit`` (its
        ``state_dict``, sorted by name); :func:`~advdetect.load`
        refuses a classifier with other weights.
    classifier_layout_ : tuple of str
        ``"name: ClassName"`` of every submodule of that classifier, checked
        by ``load`` too (a ReLU swapped for a Tanh has the same weights).
    squeezers_ : list of (str, functools.partial)
        Column name and function of each squeezer (picklable).
    squeeze_range_ : (float, float)
        The range mapped to [0, 1] before squeezing: ``input_range``, or the
        training images' (min, max) when ``input_range`` is None.
    threshold_ : float
        The L1 distance above which an input is flagged.
    offset_ : float
        ``-threshold_``: ``score_samples`` is minus the L1 distance, so
        ``decision_function = threshold_ - distance``.
    image_shape_ : tuple
        (C, H, W) of the training images.
    n_features_in_ : int
        C * H * W.
    n_classes_ : int
        Number of classes of the classifier.

    See Also
    --------
    MagNetDetector : the autoencoder baseline, model-agnostic.
    CMAGDetector : model-aware reconstruction detector.

    Notes
    -----
    The threshold is learned on all the images given to ``fit`` (the
    reference uses the clean training set): nothing is trained on them, so
    there is nothing to hold out. But the *classifier* is usually more
    confident on its own training images, which then score lower than new
    clean images; for an honest false-positive rate, fit on clean images the
    classifier did not train on, or :meth:`calibrate` on them afterwards.

    ``reconstruction_errors`` has one column ``l1_<squeezer>`` per squeezer,
    ``l1_max`` (the paper's score), ``score = -l1_max``, ``decision`` and
    ``is_adversarial``.

    A score costs (1 + number of squeezers) classifier passes (separate
    passes: concatenating the squeezed batches into one was 45 % slower on the
    CPU). Non-local means uses scikit-image instead of OpenCV (see
    :func:`non_local_means`): CIFAR-10 scores are close to, not equal to, the
    reference's.

    :meth:`to_torch` gives the decision function as a torch module for
    adaptive attacks. Its forward pass is exact; its gradient passes through
    the squeezers (bit depth, median filter, non-local means) as the identity,
    the straight-through / BPDA approximation of Athalye, Carlini & Wagner
    (ICML 2018), since rounding has a zero gradient almost everywhere.

    References
    ----------
    W. Xu, D. Evans, Y. Qi. Feature Squeezing: Detecting Adversarial Examples
    in Deep Neural Networks. NDSS 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect.squeeze import FeatureSqueezingDetector
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = FeatureSqueezingDetector(SmallCNN(), device="cpu").fit(X)
    >>> det.predict(X[:3]).shape
    (3,)
    >>> list(det.reconstruction_errors(X[:3]).columns[:3])
    ['l1_bit_depth_1', 'l1_median_2', 'l1_max']
    """

    _parameter_constraints = {
        **BaseDetector._shared_constraints("classifier", "input_shape", "input_range",
                                           "batch_size", "device", "random_state", "verbose"),
        # Its contents, known squeezers without repeats: _check_params.
        "squeezers": [StrOptions(set(SQUEEZER_PRESETS)), "array-like"],
        "fpr": [Interval(numbers.Real, 0, 1, closed="left")],
    }

    def __init__(self, classifier=None, *, squeezers=SQUEEZER_PRESETS["mnist"], fpr=0.05,
                 input_shape=None, input_range=(0.0, 1.0), batch_size=256, device="auto",
                 random_state=None, verbose=0):
        self.classifier = classifier
        self.squeezers = squeezers
        self.fpr = fpr
        self.input_shape = input_shape
        self.input_range = input_range
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------ parameters
    def _parse_squeezers(self):
        """``squeezers`` as ``[(column name, function)]``; InvalidParameterError if invalid.

        The constraint declares a preset name or a sequence; its contents (known
        squeezers with valid parameters, at least one, none repeated) are checked
        here, as no constraint expresses them.
        """
        specs = self.squeezers
        if isinstance(specs, str):
            specs = SQUEEZER_PRESETS[specs]
        try:
            specs = list(specs)
            if not specs:
                raise ValueError("squeezers must hold at least one squeezer")
            parsed = [_parse_squeezer(s) for s in specs]
        except (TypeError, ValueError) as exc:
            raise invalid_parameter(self, "squeezers", "a preset name or a sequence of "
                                    f"(name, parameter) pairs: {exc}") from None
        names = [n for n, _ in parsed]
        if len(set(names)) != len(names):
            raise invalid_parameter(self, "squeezers", "a sequence of squeezers without "
                                    f"repeats (these are repeated: {names})")
        return parsed

    def _check_params(self):
        super()._check_params()
        # The contents of the sequence: no constraint expresses them.
        self._parse_squeezers()

    # ------------------------------------------------------------------ fit
    _threshold_params = ("fpr",)
    _networks = ("classifier_",)
    _fitted_values = ("squeeze_range_",)

    def _prepare(self, X, y):
        # Feature squeezing reads only the classifier's output: the hook goes on the
        # whole module (get_submodule("") is the module itself).
        self.classifier_ = self._prepare_classifier(X, layer="")
        self._build()
        # The squeezers are defined on [0, 1] (bit depth rounds x (2^b - 1), non-local
        # means takes h / 255): they run on the inputs mapped from this range to
        # [0, 1] and back, the declared input_range or, unbounded, the training data's.
        if self._value_range is not None:
            self.squeeze_range_ = self._value_range
        else:
            lo, hi = float(X.min()), float(X.max())
            self.squeeze_range_ = (lo, hi if hi > lo else lo + 1.0)

    def _build(self):
        # No network of its own: the squeezers are functions of the parameters.
        self.squeezers_ = self._parse_squeezers()

    def _calibration_metrics(self, X_cal):
        # Nothing is trained: the threshold is learned on every training image.
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(X_cal), desc="Feature squeezing", unit="img")
        try:
            return super()._calibration_metrics(X_cal if bar is None else _Counted(X_cal, bar))
        finally:
            if bar is not None:
                bar.close()

    def _set_thresholds(self):
        largest = -self._scores_of(self.calibration_)  # the max L1 distance per image
        self._check_threshold_data(len(largest), self.fpr, f"fpr={self.fpr:g}",
                                   held_out=False)
        self.threshold_ = upper_quantile(largest, self.fpr)
        self.offset_ = -self.threshold_

    # -------------------------------------------------------------- forward
    def _softmax(self, scores):
        # softmax(log p) = p for probability outputs.
        return torch.softmax(as_logits(scores, self.classifier_output_), dim=1)

    def _distances(self, xb):
        """L1 distance between softmax(x) and softmax(squeeze(x)), per squeezer."""
        probs = self._softmax(self.classifier_(xb)[1])
        lo, hi = getattr(self, "squeeze_range_", (0.0, 1.0))
        unit = lo == 0.0 and hi == 1.0
        out = {}
        for name, squeeze in self.squeezers_:
            if unit:
                squeezed = squeeze(xb)
            else:
                squeezed = squeeze((xb - lo) / (hi - lo)) * (hi - lo) + lo
            squeezed = self._softmax(self.classifier_(squeezed)[1])
            out[f"l1_{name}"] = (probs - squeezed).abs().sum(dim=1)
        return out

    def _forward_batch(self, xb, every=False):
        out = self._distances(xb)
        if every:
            out["l1_max"] = torch.stack(list(out.values())).max(dim=0).values
        return out

    def _score(self, metrics):
        """Minus the largest L1 distance over the squeezers (Xu et al. 2018, Section 3.2)."""
        return -torch.stack([metrics[f"l1_{name}"] for name, _ in self.squeezers_]) \
            .max(dim=0).values

    def _score_torch(self, x):
        """Differentiable score for :meth:`to_torch`, with BPDA through the squeezers.

        Bit-depth reduction (``round``: zero gradient almost everywhere) and the
        median filter (a gradient on one pixel per window) are applied exactly
        in the forward pass and replaced by the identity in the backward pass,
        the standard Backward Pass Differentiable Approximation (Athalye,
        Carlini & Wagner, ICML 2018), which is how they attacked Feature
        Squeezing. The classifier and the L1 distance are differentiated
        exactly.
        """
        from .nn.differentiable import straight_through

        probs = self._softmax(self.classifier_(x)[1])
        distances = [(probs - self._softmax(self.classifier_(straight_through(squeeze, x))[1]))
                     .abs().sum(dim=1) for _, squeeze in self.squeezers_]
        return -torch.stack(distances).max(dim=0).values

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
