"""Maximum softmax probability: the protected classifier's own confidence as a detector.

Dan Hendrycks, Kevin Gimpel, *A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks*, ICLR 2017: the score of an
input is the largest of the classifier's softmax probabilities,
``max_c softmax(f(x))_c``, high on the data the classifier was trained on and
lower on inputs it is unsure of. The floor every detector of adversarial
examples should beat.
"""

import numbers

import numpy as np
import torch

from sklearn.utils._param_validation import Interval

from .base import BaseDetector, as_logits, invalid_parameter

__all__ = ["MaxSoftmaxDetector"]


class MaxSoftmaxDetector(BaseDetector):
    """Maximum-softmax-probability detector (Hendrycks & Gimpel, ICLR 2017).

    The score is the classifier's confidence in its own prediction,
    ``max_c softmax(f(x) / T)_c`` (higher = more like clean data), and inputs
    scoring below the ``fpr``-quantile of the clean calibration scores are
    flagged. Nothing is trained: ``fit`` runs the classifier once on the clean
    images and sets the threshold.

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        The protected classifier, returning logits or probabilities. ``fit``
        works on a frozen deep copy; the object passed in is never modified.
    temperature : float > 0, default=1.0
        T in ``softmax(f(x) / T)``. 1 is the paper's baseline; T > 1 is the
        temperature scaling of ODIN (Liang, Li, Srikant, ICLR 2018), without
        ODIN's input pre-processing. For a classifier that returns
        probabilities p, f(x) is ``log p``.
    fpr : float in [0, 1), default=0.05
        Target false-positive rate: ``offset_`` is the ``fpr``-quantile of the
        clean calibration scores (``numpy.quantile(..., method="lower")``, as
        :meth:`calibrate`), so at most a fraction ``fpr`` of them is flagged.
    validation_fraction : float in [0, 1), default=0.0
        Fraction of the clean images the threshold is learned on. Nothing is
        fitted on the others, so the default 0 uses every image; a fraction
        holds out the same split as the other detectors given the same
        ``random_state``. The classifier is usually more confident on its own
        training images: for an honest false-positive rate, fit on clean
        images it did not train on, or :meth:`calibrate` on them afterwards.
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input. ``"flat"``
        hands each row of 2-D input to the classifier as it is.
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range that input values must lie in. ``None`` accepts any finite values.
    batch_size : int, default=256
        Inference batch size.
    device : {"auto", "cpu", "cuda"}, default="auto"
        ``"auto"`` uses CUDA when available.
    random_state : int or None, default=None
        Seeds the calibration split (with ``validation_fraction > 0``).
    verbose : int, default=0
        Unused (there is no training to report); accepted for the API that all
        advdetect detectors share.

    Attributes
    ----------
    classifier_ : HookedClassifier
        The frozen copy of the classifier.
    classifier_output_ : {"logits", "proba"}
        What the classifier returns.
    classifier_digest_, classifier_layout_ : str, tuple of str
        The weights' SHA-256 and the layers of ``classifier``, checked by
        :func:`~advdetect.load`.
    temperature_ : float
        The temperature the scores are computed with.
    calibration_ : pandas.DataFrame
        ``max_softmax`` of the clean calibration images (every training image
        with ``validation_fraction=0``), kept for :meth:`recalibrate`, which
        re-learns the threshold for a new ``fpr`` (the temperature is the
        fitted ``temperature_``).
    offset_ : float
        The threshold: ``decision_function = score_samples - offset_``.
    image_shape_ : tuple
        (C, H, W) of the training images.
    n_features_in_ : int
        C * H * W.
    n_classes_ : int
        Number of classes of the classifier.

    See Also
    --------
    FeatureSqueezingDetector : the classifier's softmax on x and on squeezed x.
    MahalanobisDetector : Gaussians on the classifier's features.

    Notes
    -----
    ``score_samples`` is a probability in [1 / n_classes, 1] (float64 of a
    float32 softmax, so it saturates at 1 for confident predictions).
    :meth:`to_torch` is exact and differentiable.

    References
    ----------
    D. Hendrycks, K. Gimpel. A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks. ICLR 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect import MaxSoftmaxDetector
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = MaxSoftmaxDetector(SmallCNN(), device="cpu").fit(X)
    >>> scores = det.score_samples(X)
    >>> bool(np.all((scores >= 0.1) & (scores <= 1))), det.predict(X[:3]).shape
    (True, (3,))
    >>> bool(np.mean(scores < det.offset_) <= 0.05)
    True
    """

    _parameter_constraints = {
        **BaseDetector._shared_constraints("classifier", "validation_fraction", "input_shape",
                                           "input_range", "batch_size", "device",
                                           "random_state", "verbose"),
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "fpr": [Interval(numbers.Real, 0, 1, closed="left")],
    }

    def __init__(self, classifier=None, *, temperature=1.0, fpr=0.05, validation_fraction=0.0,
                 input_shape=None, input_range=(0.0, 1.0), batch_size=256, device="auto",
                 random_state=None, verbose=0):
        self.classifier = classifier
        self.temperature = temperature
        self.fpr = fpr
        self.validation_fraction = validation_fraction
        self.input_shape = input_shape
        self.input_range = input_range
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        super()._check_params()
        # Finite (softmax(f(x) / inf) is uniform whatever x) and not a bool: no
        # declared constraint refuses these.
        if isinstance(self.temperature, (bool, np.bool_)) or not np.isfinite(self.temperature):
            raise invalid_parameter(self, "temperature", "a finite float in the range (0, inf)")

    # ------------------------------------------------------------------ fit
    _threshold_params = ("fpr",)
    _networks = ("classifier_",)
    _fitted_values = ("temperature_",)

    def _prepare(self, X, y):
        # Only the classifier's output is read: the hook goes on the whole module.
        self.classifier_ = self._prepare_classifier(X, layer="")
        self.temperature_ = float(self.temperature)

    def _set_thresholds(self):
        """``offset_``: the ``fpr``-quantile of the kept clean calibration scores."""
        scores = self.calibration_["max_softmax"].to_numpy()
        self._check_threshold_data(len(scores), self.fpr, f"fpr={self.fpr:g}")
        self.offset_ = float(np.quantile(scores, self.fpr, method="lower"))

    # -------------------------------------------------------------- forward
    def _forward_batch(self, xb, every=False):
        logits = as_logits(self.classifier_(xb)[1], self.classifier_output_)
        return {"max_softmax":
                torch.softmax(logits / self.temperature_, dim=1).max(dim=1).values}

    def _score(self, metrics):
        """The maximum softmax probability (Hendrycks & Gimpel 2017, Section 2)."""
        return metrics["max_softmax"]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if not self.validation_fraction:  # no split: nothing random
            tags.non_deterministic = False
        return tags
