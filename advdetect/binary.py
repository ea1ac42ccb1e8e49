"""The supervised binary-classifier detector: clean vs adversarial, learned from examples.

Zhitao Gong, Wenlu Wang, Wei-Shinn Ku, *Adversarial and Clean Data Are Not
Twins*, arXiv:1704.04960, 2017 (a binary CNN on the input), and Jan Hendrik
Metzen, Tim Genewein, Volker Fischer, Bastian Bischoff, *On Detecting
Adversarial Perturbations*, ICLR 2017 (a small detector network on a layer's
activations). The DAFAR paper compares with them in Figs. 7-8; the Adversarial
Robustness Toolbox has them as ``BinaryInputDetector`` and
``BinaryActivationDetector``.
"""

import copy
import numbers

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .base import BaseDetector, batched, check_outlier_labels, train_module
from .nn.binary import ActivationDetector, BinaryDecision, BinaryDetectorNet

__all__ = ["BinaryClassifierDetector"]

def _fix_message(name):
    return (f"{name} is a supervised detector: fit(X, y) needs clean and adversarial images, "
            "with y = +1 for clean and -1 for adversarial rows. Build them with "
            "advdetect.model_selection.make_detection_dataset(X_clean, X_adv).")


class BinaryClassifierDetector(BaseDetector):
    """A binary classifier of clean vs adversarial inputs (Gong et al. 2017; Metzen et al. 2017).

    **The one detector in advdetect that needs adversarial training examples**:
    ``fit(X, y)`` takes clean and adversarial images with y = +1 clean, -1
    adversarial (:func:`~advdetect.model_selection.make_detection_dataset`
    builds them) and trains a small network to tell them apart, on the input
    (``on="input"``, Gong et al.) or on the classifier's activations at a
    named layer (``on="features"``, Metzen et al.). It learns the attack it is
    shown; whether it transfers to other attacks is what
    ``benchmarks/bench_transfer.py`` measures.

    ``score_samples`` is the network's logit of "clean" (higher = clean). The
    threshold is the classifier's own decision (logit 0, probability 1/2) by
    default, as in the papers and ART: the network is trained to separate the
    two classes, and a held-out clean split would take training examples from
    it. Give ``fpr`` to threshold at a clean quantile of a held-out split
    instead (``validation_fraction`` of the clean rows).

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, FrozenEstimator or None
        The protected classifier; needed for ``on="features"`` (a frozen deep
        copy is read at ``feature_layer``; the object passed in is never
        modified). Not used for ``on="input"``.
    on : {"input", "features"}, default="input"
    feature_layer : str or None, default=None
        Layer read for ``on="features"``; ``None`` is
        :func:`~advdetect.base.default_feature_layer`'s choice.
    width : int, default=16
        Channels of the first convolution (the second has twice as many).
    hidden : int, default=64
        Units of the hidden dense layer(s).
    fpr : float in [0, 1) or None, default=None
        ``None``: ``offset_ = 0``, the classifier's decision. A number: the
        ``fpr``-quantile of the scores of the held-out clean rows.
    validation_fraction : float in [0, 1), default=0.2
        Fraction of the clean rows held out for the threshold, used only when
        ``fpr`` is given.
    input_shape : tuple, "flat" or None, default=None
    input_range : (float, float) or None, default=(0.0, 1.0)
    max_epochs : int, default=10
    batch_size : int, default=128
    lr : float, default=1e-3
    optimizer : torch optimizer class, default=torch.optim.Adam
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int or None, default=None
    verbose : int, default=0

    Attributes
    ----------
    detector_ : advdetect.nn.binary.ActivationDetector
        The trained detector network (with the frozen classifier copy for
        ``on="features"``).
    classifier_ : HookedClassifier or None
    offset_ : float
    n_clean_, n_adversarial_ : int
        Rows of each class trained on.
    image_shape_ : tuple
    n_features_in_ : int

    Raises
    ------
    ValueError
        From ``fit`` when ``y`` is missing or does not hold both +1 and -1.

    See Also
    --------
    MahalanobisDetector : the strongest detector fitted on clean data alone.
    advdetect.model_selection.make_detection_dataset : builds ``(X, y)``.

    Notes
    -----
    The networks are smaller than the papers' (Gong et al. used a copy of the
    classifier's architecture, Metzen et al. a ResNet-style detector): on MNIST
    they separate FGSM examples from clean images perfectly, and the point of
    the comparison is transfer to other attacks, which a bigger network does not
    buy. Training is through skorch's ``NeuralNetBinaryClassifier`` (binary
    cross-entropy on the logit) with both classes weighted alike
    (``pos_weight = n_adversarial / n_clean``), so that the logit-0 decision does
    not lean towards the larger class (attacks fool only some of the images).

    References
    ----------
    Z. Gong, W. Wang, W.-S. Ku. Adversarial and Clean Data Are Not Twins. 2017.
    J. H. Metzen, T. Genewein, V. Fischer, B. Bischoff. On Detecting Adversarial
    Perturbations. ICLR 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect import BinaryClassifierDetector
    >>> from advdetect.model_selection import make_detection_dataset
    >>> rng = np.random.default_rng(0)
    >>> X_clean = rng.random((64, 1, 8, 8), dtype=np.float32) * 0.5
    >>> X_adv = np.clip(X_clean + 0.3 * rng.choice([-1, 1], X_clean.shape), 0, 1)
    >>> X, y, _ = make_detection_dataset(X_clean, X_adv.astype(np.float32))
    >>> det = BinaryClassifierDetector(max_epochs=2, device="cpu", random_state=0).fit(X, y)
    >>> det.predict(X[:3]).shape, det.n_clean_, det.n_adversarial_
    ((3,), 64, 64)
    """

    _parameter_constraints = {
        **BaseDetector._shared_constraints("classifier", "feature_layer", "validation_fraction",
                                           "input_shape", "input_range", "max_epochs",
                                           "batch_size", "lr", "optimizer", "device",
                                           "random_state", "verbose"),
        "on": [StrOptions({"input", "features"})],
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "hidden": [Interval(numbers.Integral, 1, None, closed="left")],
        "fpr": [Interval(numbers.Real, 0, 1, closed="left"), None],
    }

    def __init__(self, classifier=None, *, on="input", feature_layer=None, width=16, hidden=64,
                 fpr=None, validation_fraction=0.2, input_shape=None, input_range=(0.0, 1.0),
                 max_epochs=10, batch_size=128, lr=1e-3, optimizer=torch.optim.Adam,
                 device="auto", random_state=None, verbose=0):
        self.classifier = classifier
        self.on = on
        self.feature_layer = feature_layer
        self.width = width
        self.hidden = hidden
        self.fpr = fpr
        self.validation_fraction = validation_fraction
        self.input_shape = input_shape
        self.input_range = input_range
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def _fit_uses_class_labels(self):
        return True  # y's -1 rows are the adversarial training examples, not dropped

    _threshold_params = ("fpr",)
    _networks = ("detector_",)
    _fitted_values = ("n_clean_", "n_adversarial_")

    def _check_fit_labels(self, y, n):
        name = type(self).__name__
        return check_outlier_labels(y, n, _fix_message(name), name)

    def _prepare(self, X, y):
        self.classifier_ = self._prepare_classifier(X) if self.on == "features" else None

    def _split(self, X, y, rng):
        """Train on every adversarial row and the clean rows not held out for ``fpr``."""
        clean, adv = np.flatnonzero(y == 1), np.flatnonzero(y == -1)
        cal = np.zeros(0, dtype=np.int64)
        if self.fpr is not None:
            fit_c, cal_c = self._split_calibration(X[clean], rng)
            if len(cal_c) < len(clean):  # a real hold-out (not the training rows again)
                clean, cal = clean[fit_c], clean[cal_c]
        return np.sort(np.r_[clean, adv]), cal

    def _head_shape(self):
        """``(shape of the head's input, flatten)``: the image, or the feature map."""
        if self.on != "features":
            return self.image_shape_, False
        shape = tuple(self.feature_shape_)
        if len(shape) not in (1, 3):
            return (int(np.prod(shape)),), True
        return shape, False

    def _build_head(self):
        shape, _ = self._head_shape()
        return BinaryDetectorNet(input_shape=shape, width=int(self.width),
                                 hidden=int(self.hidden))

    def _build(self):
        self.classifier_ = getattr(self, "classifier_", None)  # None: on="input"
        self.detector_ = ActivationDetector(self.classifier_, self._build_head(),
                                            flatten=self._head_shape()[1]) \
            .to(self.device_).eval()

    def _train(self, X, y, fit_idx, cal_idx, rng):
        shape, flatten = self._head_shape()
        if self.on == "features":
            inputs = batched(lambda xb: self.classifier_(xb)[0], X[fit_idx], self.batch_size,
                             self.device_)
            if flatten:
                inputs = inputs.reshape(len(inputs), -1)
        else:
            inputs = X[fit_idx]
        target = (y[fit_idx] == 1).astype(np.float32)  # 1 = clean: the logit of "clean"
        n_clean, n_adv = int(np.sum(target == 1)), int(np.sum(target == 0))
        from skorch import NeuralNetBinaryClassifier

        # Both classes weigh alike in the loss (pos_weight = n_adversarial / n_clean): an
        # attack fools only some images, and with, say, 8 clean rows per adversarial one
        # an unweighted net's logit-0 decision flagged nothing (bench_transfer).
        pos_weight = torch.tensor([n_adv / max(n_clean, 1)], dtype=torch.float32)
        head = train_module(self._build_head(), np.ascontiguousarray(inputs, dtype=np.float32),
                            target, torch.nn.BCEWithLogitsLoss, desc="Binary detector",
                            detector=self, net_cls=NeuralNetBinaryClassifier,
                            criterion_kwargs=dict(pos_weight=pos_weight))
        self.detector_ = ActivationDetector(self.classifier_, head, flatten=flatten) \
            .to(self.device_).eval()
        self.n_clean_, self.n_adversarial_ = n_clean, n_adv

    def _check_recalibration(self):
        if self.fpr is not None and not len(self.calibration_):
            raise ValueError(
                "BinaryClassifierDetector was fitted with fpr=None, which holds no clean images "
                "out: there is nothing to learn an fpr threshold from. Refit with fpr set.")

    def _set_thresholds(self):
        """``offset_``: the ``fpr``-quantile of the held-out clean scores (0 without)."""
        scores = self.calibration_["score"].to_numpy() if len(self.calibration_) else []
        self.offset_ = float(np.quantile(scores, self.fpr, method="lower")) \
            if len(scores) and self.fpr is not None else 0.0

    def _calibration_metrics(self, X_cal):
        if len(X_cal) == 0:  # batched() has nothing to run on
            return pd.DataFrame({"score": np.zeros(0)})
        return super()._calibration_metrics(X_cal)

    # -------------------------------------------------------------- forward
    def _forward_batch(self, xb, every=False):
        return {"score": self.detector_(xb)}

    def _score(self, metrics):
        """The detector network's logit of "clean" (Metzen et al. 2017)."""
        return metrics["score"]

    def to_torch(self):
        """The decision function as a frozen ``torch.nn.Module``, differentiable in x.

        Returns
        -------
        torch.nn.Module
            ``forward(x)`` maps a float32 batch ``(n, C, H, W)`` on the
            detector's device to ``decision_function`` ``(n,)`` (equal within
            1e-4), in eval mode with frozen parameters.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from advdetect import BinaryClassifierDetector
        >>> rng = np.random.default_rng(0)
        >>> X = rng.random((32, 1, 8, 8), dtype=np.float32)
        >>> y = np.where(np.arange(32) % 2 == 0, 1, -1)
        >>> det = BinaryClassifierDetector(max_epochs=1, device="cpu", random_state=0).fit(X, y)
        >>> out = det.to_torch()(torch.as_tensor(X[:4])).numpy()
        >>> bool(np.allclose(out, det.decision_function(X[:4]), atol=1e-4))
        True
        """
        check_is_fitted(self)
        return BinaryDecision(copy.deepcopy(self.detector_), self.offset_) \
            .to(self.device_).eval().requires_grad_(False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

