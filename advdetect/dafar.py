"""DAFAR: defending against adversaries by feedback-autoencoder reconstruction.

Jiliang Liu, Jiaoyang Yi, Xiaodong Lin, Jiayong Shi, Meikang Qiu, *DAFAR:
Defending against Adversaries by Feedback-Autoencoder Reconstruction*.
Section 4 (Eqs. 3-9) and Tables 1-3.
"""

import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import column_or_1d
from skorch import NeuralNet
from skorch.utils import to_tensor

from .base import (BaseDetector, PurifierMixin, _caller_stacklevel, as_logits, batched,
                   default_feature_layer, invalid_parameter, logit_margin, train_module)
from .nn.decoders import (FeedbackAutoencoder, FeedbackLoss, MirrorError,
                          ReconstructionErrorAutoencoder, plan_mirror_decoder, trace_encoder)
from .nn.reconstructors import choose_design

__all__ = ["DAFARDetector"]


def _spread(margins):
    """Distance from a test's threshold to the clean median (``margins`` = value - threshold,
    oriented higher = cleaner); the standard deviation, or 1, when that is not positive."""
    spread = float(np.median(margins))
    if spread > 0 and np.isfinite(spread):
        return spread
    return float(np.std(margins)) or 1.0


class _FeedbackNet(NeuralNet):
    """skorch net for D(E(.)): the loss of Eq. (7) needs the input images X."""

    def get_loss(self, y_pred, y_true, X=None, training=False):
        X = to_tensor(X, device=self.device)
        y_true = to_tensor(y_true, device=self.device) if self.criterion_.classification \
            else None
        return self.criterion_(y_pred, X, y_true)

    def get_all_learnable_params(self):
        # Plug-in mode: the frozen classifier's weights stay out of the optimizer.
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param


class DAFARDetector(PurifierMixin, BaseDetector):
    """Feedback-autoencoder reconstruction detector of adversarial examples (DAFAR).

    The protected classifier's feature-extraction layers are the encoder E; a
    feedback decoder D, built to mirror E, reconstructs the input from E(x)
    (paper Table 2). Clean inputs are reconstructed well; an adversarial
    perturbation disturbs E(x) and hence the reconstruction (Eq. 3). A small
    fully connected autoencoder C (Table 3), trained on the clean
    reconstruction errors delta = x - D(E(x)) (Eq. 8), gives the anomaly score
    ``||delta - C(delta)||_2``, and an input whose score exceeds
    alpha = mean + z * std of the clean scores is flagged (Eq. 9).
    ``transform`` returns the purified reconstruction D(E(x)) (Section 4.3),
    so the detector can stand in a Pipeline in front of a classifier; see
    :class:`~advdetect.DetectAndPurify` for the paper's hybrid defence.

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        The protected (victim) classifier F(E(.)). ``fit`` works on a deep copy;
        the object passed in is never modified.
    feature_layer : str or None, default=None
        Dotted name of the last layer of the encoder E (the "feedback
        position", Section 5.1: any cut works). ``None``: chosen from one
        traced forward pass on the first training images, the layer whose
        output is the classifier's last feature map with spatial extent (the
        last 4-D output with H x W > 1, which the head's flatten, global
        pooling or first fully connected layer reads; never a 1 x 1 pooled
        output); a block whose ReLU is called twice is named as the block
        (``"layer4.1"`` on a ResNet-18 at 224 x 224). On the package's own
        victims that is the layer feeding the first fully connected layer: for
        :class:`~advdetect.models.CIFARCNN` ``"head.relu9"``; the paper's E_C
        ends at ``"features.pool2"``. A classifier with no such output (fully
        connected layers, flat input) gets the layer feeding its first fully
        connected layer (:func:`~advdetect.base.default_feature_layer`).
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input. ``"flat"``
        feeds the rows of 2-D input to the classifier as they are.
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range that input values must lie in, and of the reconstructions.
        ``None`` accepts any finite values, with unbounded reconstructions.
    training : {"plugin", "joint"}, default="plugin"
        ``"plugin"``: the classifier is frozen and only D is trained on the
        reconstruction term of Eq. (7). ``"joint"``: a copy of the classifier
        and D are trained together on Eq. (7), reconstruction plus
        cross-entropy; ``fit`` then needs the class labels ``y`` (integers in
        ``range(n_classes)``), and ``classifier_`` is the jointly trained copy.
    decoder : {"mirror", "dense", "conv"}, default="mirror"
        ``"mirror"``: D mirrors E call by call, following one traced forward
        pass (Conv2d -> ConvTranspose2d, MaxPool2d -> max-unpooling,
        activations/dropout/normalisation skipped, a module called twice
        mirrored twice, a residual block -> a residual decoder block with its
        channel change and stride inverted,
        :class:`~advdetect.nn.decoders.MirrorBlock`). Encoders that cannot be
        mirrored (fully connected layers, flat input, unknown shape-changing
        layers) fall back, with one warning per fit that names the module and
        its call and what to pass instead, to ``"dense"`` where its projection
        has at most 2**22 weights
        (:data:`~advdetect.nn.reconstructors.DENSE_MAX_WEIGHTS`), else to
        ``"conv"``. ``"dense"``: a dense projection to a quarter-resolution
        grid and transposed convolutions (a perceptron for inputs under 4 px a
        side); its size grows with the feature size times the pixel count.
        ``"conv"``: convolutional from the feature map's own grid with stride-2
        upsampling stages
        (:class:`~advdetect.nn.decoders.ConvFeedbackDecoder`); its size grows
        with the channels only.
    unpool : {"indices", "upsample"}, default="indices"
        How D inverts max-pooling: the paper's max-unpooling at the encoder's
        own argmax positions, or nearest-neighbour upsampling.
    use_anomaly_detector : bool, default=True
        Score with C (``||delta - C(delta)||_2``). ``False`` scores ``||delta||_2``
        directly (the paper's lighter variant, Section 4.4.3).
    anomaly_hidden : (int, int) or None, default=None
        Hidden sizes ``(h, b)`` of C. ``None``: Table 3's (256, 32) for 784 input
        values and (512, 64) for 3072, interpolated for other sizes
        (:func:`~advdetect.nn.decoders.anomaly_hidden_sizes`). Errors of more
        than 4,096 values (images larger than CIFAR-10's) are read by C
        average-pooled over k x k patches to at most 4,096 values, and C's
        output is upsampled back (:func:`~advdetect.nn.decoders.anomaly_pool_factor`:
        k = 7 at 3 x 224 x 224, where an unpooled C would hold 308 M weights).
    z : float, default=3.0
        Threshold alpha = mean + z * std of the clean calibration scores
        (paper: 3 for MNIST, 2 for CIFAR-10).
    confidence_test : {False, True, "lower", "two-sided"}, default=False
        Also test the classifier's confidence, the logit margin
        ``log p_max - log(1 - p_max)``, as :class:`~advdetect.CMAGDetector`
        does. ``True`` (or ``"lower"``) flags a margin below the
        ``confidence_quantile`` quantile of the clean calibration margins,
        ``"two-sided"`` one above the ``1 - confidence_quantile`` quantile too.
        Not in the paper; minimal-perturbation attacks (DeepFool, CW-L2 at low
        confidence) leave the reconstruction error of clean data but not the
        classifier's confidence.
    confidence_quantile : float in (0, 0.5), default=0.01
        Quantile of the confidence test's thresholds (and, with
        ``combine_tests="sum"``, of the summed score's threshold).
    combine_tests : {"min", "sum"}, default="min"
        With a confidence test, how the anomaly test (margin
        ``(alpha - anomaly score) / (alpha - median clean score)``) and the
        confidence test (margin to its threshold over the clean median's
        distance to it) make the score: ``"min"``, the smaller margin (an
        input is flagged when either test fails, ``offset_ = 0``), or
        ``"sum"``, their sum, thresholded at its ``confidence_quantile``
        quantile on the clean calibration images. Without a confidence test
        the score is minus the anomaly score, as in the paper.
    validation_fraction : float in [0, 1), default=0.2
        Fraction of the clean data held out of training to learn alpha on. D
        and C reconstruct their own training data better than new clean data,
        so alpha learned on it underestimates the false-positive rate (a
        measurement found 0.8-2.6 % against 0.13 % nominal). ``0`` learns alpha
        on the training set, as the paper does.
    reconstruction_loss : {"l2", "squared"}, default="l2"
        Reconstruction term of Eq. (7): the per-sample L2 norm, averaged over
        the batch (paper), or its square. In joint mode the L2 norm keeps the
        two terms of Eq. (7) on comparable scales.
    max_epochs : int, default=20
        Training epochs of the feedback decoder (and, in joint mode, of the
        classifier). On MNIST the decoder was still improving at 8 epochs of
        1,000 images; 20 epochs of 4,000 images (500 Adam steps) fit within
        about a minute on two CPU cores.
    anomaly_max_epochs : int, default=30
        Training epochs of the anomaly detector C (a small network: cheap).
    batch_size : int, default=128
        Training and inference batch size.
    lr : float, default=1e-3
        Learning rate (Adam in the paper's setting).
    optimizer : torch optimizer class, default=torch.optim.Adam
    device : {"auto", "cpu", "cuda"}, default="auto"
        ``"auto"`` uses CUDA when available.
    random_state : int or None, default=None
        Seeds torch and numpy inside ``fit``; two fits with one seed give the
        same scores on the CPU.
    verbose : int, default=0
        0 silent; 1 a progress bar per training stage; 2 skorch's epoch log too.

    Attributes
    ----------
    classifier_ : HookedClassifier
        The frozen copy of the classifier (in joint mode, the jointly trained
        copy), returning ``(E(x), F(E(x)))``; ``classifier_.module`` is the
        plain classifier.
    classifier_digest_ : str
        SHA-256 of the weights of ``classifier`` as passed to ``fit`` (its
        ``state_dict``, sorted by name); :func:`~advdetect.load`
        refuses a classifier with other weights.
    classifier_layout_ : tuple of str
        ``"name: ClassName"`` of every submodule of that classifier, checked
        by ``load`` too (a ReLU swapped for a Tanh has the same weights).
    feedback_autoencoder_ : FeedbackAutoencoder
        D(E(.)), returning ``(reconstruction, class scores)``.
    feedback_decoder_ : torch.nn.Module
        The trained decoder D.
    decoder_kind_ : {"mirror", "dense", "conv"}
        The decoder actually built.
    anomaly_detector_ : ReconstructionErrorAutoencoder or None
        The trained C; None when ``use_anomaly_detector=False``.
    threshold_ : float
        alpha, in anomaly-score units.
    offset_ : float
        ``-threshold_``: ``decision_function = threshold_ - anomaly score``
        (without a confidence test; with one, see ``combine_tests``).
    calibration_ : pandas.DataFrame
        The raw metrics of the held-out clean images, one row each, indexed by
        their positions in the ``X`` given to ``fit``: ``l2`` (``||delta||_2``),
        ``confidence`` (the classifier's logit margin) and, with C,
        ``anomaly_score`` (``||delta - C(delta)||_2``). The thresholds are
        learned from them, and :meth:`recalibrate` learns them again.
    confidence_threshold_, confidence_upper_threshold_ : float
        The ``confidence_quantile`` and ``1 - confidence_quantile`` quantiles of
        ``calibration_["confidence"]`` (learned even when ``confidence_test=False``).
    test_scales_ : dict
        The spreads that divide the tests' margins (``"anomaly"``, ``"low"``,
        ``"high"``): the distance from each threshold to the clean median.
    scores_with_tests_ : tuple of str
        ``(confidence test, combine_tests)`` as at the last ``fit`` or
        :meth:`recalibrate`: the scorer that ``offset_`` was learned for.
    calibration_scores_ : ndarray of shape (``n_calibration_``,)
        Scores of the held-out clean images alpha was learned on: the anomaly
        scores with C, ``||delta||_2`` without.
    scores_with_anomaly_detector_ : bool
        Whether scores use C: ``use_anomaly_detector`` as it was at the last
        ``fit`` or :meth:`recalibrate` (a later ``set_params`` alone does not
        change the scorer, so scores and alpha always match).
    n_calibration_ : int
    feature_layer_ : str
        The last layer of the encoder: ``feature_layer``, or the one chosen by
        the traced forward pass described there.
    feature_shape_ : tuple
        Shape of E(x) for one image.
    n_classes_ : int
        Number of the classifier's outputs.
    image_shape_ : tuple
        (C, H, W) of the training images.
    n_features_in_ : int
        C * H * W.

    See Also
    --------
    CMAGDetector : cascade of reconstructors from the classifier's features and
        logits, with SSIM and L2 thresholds.
    DetectAndPurify : the hybrid defence: reject flagged inputs, classify the
        reconstruction of the rest.

    Notes
    -----
    The paper's Eq. (9) prints ``alpha = mean + z * sigma / n``: a misprint, as
    its text sets alpha at "the 99.7 % confidence interval's right edge" of
    the normal scores (z = 3), which is ``mean + z * sigma``. The standard
    deviation is the sample one (``ddof=1``).

    Scores follow scikit-learn's outlier convention: ``score_samples`` is minus
    the anomaly score (higher = clean), ``offset_ = -alpha``, so
    ``decision_function(X) = alpha - anomaly score`` is negative for flagged
    inputs.

    Training. The decoder's training forward runs the frozen encoder on each
    batch instead of caching E(x): D needs the max-pooling indices too, which
    take 14 times the memory of the images for the MNIST CNN (5,632 int64 per
    image) and grow with data set and model size, while the encoder forward
    costs about a fifth of a training step of D. Joint mode needs that forward anyway, so one path
    serves both. C is trained on the cached clean errors delta, which are the
    size of the images. Decoder and C train through skorch.

    Scoring takes one classifier forward (with the hook), one decoder pass and
    one pass of C, batched under ``torch.no_grad``.

    References
    ----------
    J. Liu, J. Yi, X. Lin, J. Shi, M. Qiu. DAFAR: Defending against
    Adversaries by Feedback-Autoencoder Reconstruction.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect.dafar import DAFARDetector
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = DAFARDetector(SmallCNN(), max_epochs=1, anomaly_max_epochs=1, device="cpu",
    ...                     random_state=0).fit(X)
    >>> det.decoder_kind_, det.predict(X[:3]).shape, det.transform(X[:3]).shape
    ('mirror', (3,), (3, 1, 8, 8))
    >>> bool(det.threshold_ == -det.offset_)
    True
    """

    _metric_names = ("l2", "anomaly_score", "confidence", "score")

    _parameter_constraints = {
        **BaseDetector._shared_constraints("classifier", "feature_layer", "input_shape",
                                           "input_range", "validation_fraction", "max_epochs",
                                           "batch_size", "lr", "optimizer", "device",
                                           "random_state", "verbose"),
        "training": [StrOptions({"plugin", "joint"})],
        "decoder": [StrOptions({"mirror", "dense", "conv"})],
        "unpool": [StrOptions({"indices", "upsample"})],
        "use_anomaly_detector": ["boolean"],
        # Its contents, two positive integers: _check_params.
        "anomaly_hidden": [tuple, list, None],
        "z": [Interval(numbers.Real, None, None, closed="neither")],
        "confidence_test": ["boolean", StrOptions({"lower", "two-sided"})],
        "confidence_quantile": [Interval(numbers.Real, 0, 0.5, closed="neither")],
        "combine_tests": [StrOptions({"min", "sum"})],
        "reconstruction_loss": [StrOptions({"l2", "squared"})],
        "anomaly_max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(self, classifier=None, *, feature_layer=None, input_shape=None,
                 input_range=(0.0, 1.0), training="plugin", decoder="mirror",
                 unpool="indices", use_anomaly_detector=True, anomaly_hidden=None, z=3.0,
                 confidence_test=False, confidence_quantile=0.01, combine_tests="min",
                 validation_fraction=0.2, reconstruction_loss="l2", max_epochs=20,
                 anomaly_max_epochs=30, batch_size=128, lr=1e-3, optimizer=torch.optim.Adam,
                 device="auto", random_state=None, verbose=0):
        self.classifier = classifier
        self.feature_layer = feature_layer
        self.input_shape = input_shape
        self.input_range = input_range
        self.training = training
        self.decoder = decoder
        self.unpool = unpool
        self.use_anomaly_detector = use_anomaly_detector
        self.anomaly_hidden = anomaly_hidden
        self.z = z
        self.confidence_test = confidence_test
        self.confidence_quantile = confidence_quantile
        self.combine_tests = combine_tests
        self.validation_fraction = validation_fraction
        self.reconstruction_loss = reconstruction_loss
        self.max_epochs = max_epochs
        self.anomaly_max_epochs = anomaly_max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    #: The paper's recipe (Sections 4-5), as parameters.
    PAPER_PARAMS = dict(decoder="mirror", unpool="indices", use_anomaly_detector=True, z=3.0,
                        confidence_test=False, combine_tests="min",
                        validation_fraction=0.0, reconstruction_loss="l2", lr=1e-3,
                        optimizer=torch.optim.Adam)

    @classmethod
    def paper(cls, classifier=None, **params):
        """A detector with the paper's recipe: mirrored decoder, C, alpha on the training set.

        Table 2's decoder (max-unpooling at the encoder's indices), Table 3's
        anomaly detector, the L2 reconstruction loss of Eq. (7), Adam, and
        alpha = mean + 3 sigma of the clean training scores (Eq. 9; pass
        ``z=2`` for CIFAR-10, as the paper does). ``training`` stays
        ``"plugin"``; pass ``training="joint"`` (and labels to ``fit``) for the
        paper's jointly trained victim.

        Parameters
        ----------
        classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        **params
            Any other constructor parameter.

        Returns
        -------
        DAFARDetector
            Unfitted.

        Examples
        --------
        >>> from advdetect import DAFARDetector
        >>> det = DAFARDetector.paper(z=2.0)
        >>> det.validation_fraction, det.z, det.use_anomaly_detector
        (0.0, 2.0, True)
        """
        return super().paper(classifier, **params)

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        super()._check_params()
        # The contents of the pair: no constraint expresses them.
        h = self.anomaly_hidden
        if h is not None and (len(h) != 2 or not all(
                isinstance(v, numbers.Integral) and v >= 1 for v in h)):
            raise invalid_parameter(self, "anomaly_hidden", "None or two positive integers")

    def _check_labels(self, y, n):
        if y is None:
            raise ValueError("training='joint' trains the classifier on Eq. (7), which needs "
                             "the class labels: call fit(X, y).")
        y = column_or_1d(y, warn=True)
        if len(y) != n:
            raise ValueError(f"y has {len(y)} labels for {n} images")
        if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and
                                             np.all(np.mod(y, 1) == 0)):
            raise ValueError("y must hold integer class labels in range(n_classes) for "
                             "training='joint'")
        y = y.astype(np.int64)
        if np.any(y == -1) or np.unique(y).size == 1:
            # +1/-1 are the outlier convention's clean/adversarial labels
            # (CleanTrainSplit hands fit an all-+1 y): joint training would take
            # them for classes and wreck the classifier copy.
            raise ValueError(
                "training='joint' reads y as class labels (range(n_classes)), and this y "
                f"holds {'-1' if np.any(y == -1) else 'a single class'}: outlier labels "
                "(+1 clean, -1 adversarial) cannot be used here. Fit on clean images with "
                "their class labels, or use training='plugin'.")
        if y.min() < 0 or y.max() >= self.n_classes_:
            raise ValueError(f"y must hold class labels in range({self.n_classes_}) (the "
                             f"classifier's outputs); got labels in [{y.min()}, {y.max()}]")
        return y

    # ------------------------------------------------------------------ fit
    _threshold_params = ("z", "use_anomaly_detector", "confidence_test", "combine_tests",
                         "confidence_quantile")
    # The classifier copy is a part of the feedback autoencoder (its encoder E),
    # saved with it: in joint mode its weights are trained too.
    _networks = ("feedback_autoencoder_", "anomaly_detector_")
    _fitted_values = ("decoder_kind_",)

    def _fit_uses_class_labels(self):
        return self.training == "joint"

    def _check_fit_labels(self, y, n):
        if self.training != "joint":
            return None
        if y is None:
            self._check_labels(None, n)
        return y

    def _prepare(self, X, y):
        super()._prepare(X, y)
        self._decoder_plan = self._plan_decoder(self.classifier_)

    def _build_feedback_autoencoder(self, plan):
        spec, pool_layers = plan
        return FeedbackAutoencoder(classifier=self.classifier_, decoder=spec,
                                   pool_layers=pool_layers,
                                   train_classifier=self.training == "joint")

    def _build_anomaly_detector(self):
        lo_hi = self._value_range
        return ReconstructionErrorAutoencoder(
            n_features=int(np.prod(self.image_shape_)), hidden=self.anomaly_hidden,
            scale=None if lo_hi is None else lo_hi[1] - lo_hi[0], image_shape=self.image_shape_)

    def _build(self):
        self.feedback_autoencoder_ = self._build_feedback_autoencoder(
            self._plan_decoder(self.classifier_, self.decoder_kind_)).to(self.device_).eval()
        self.feedback_decoder_ = self.feedback_autoencoder_.decoder
        # Built whatever use_anomaly_detector says now: load sets it to None when the
        # file holds none (fitted without C).
        self.anomaly_detector_ = self._build_anomaly_detector().to(self.device_).eval()

    def _train(self, X, y, fit_idx, cal_idx, rng):
        joint = self.training == "joint"
        hooked = self.classifier_
        if joint:
            y = self._check_labels(y, len(X))
            hooked.module.requires_grad_(True)
        # The feedback autoencoder D(E(.)) (Eq. 7), plug-in or joint.
        plan, self._decoder_plan = self._decoder_plan, None
        self.feedback_autoencoder_ = train_module(
            self._build_feedback_autoencoder(plan), X[fit_idx],
            y[fit_idx] if joint else None, FeedbackLoss,
            desc="DAFAR feedback decoder" + (" + classifier" if joint else ""), detector=self,
            net_cls=_FeedbackNet,
            criterion_kwargs=dict(reconstruction=self.reconstruction_loss, classification=joint,
                                  output_kind=self.classifier_output_,
                                  data_range=self._data_range))
        hooked.module.requires_grad_(False)
        hooked.eval()
        self.feedback_decoder_ = self.feedback_autoencoder_.decoder
        vars(self).pop("_decoder_plan", None)

        # The anomaly detector C on the clean reconstruction errors (Eq. 8).
        self.anomaly_detector_ = None
        if self.use_anomaly_detector:
            delta = batched(lambda xb: (xb - self.feedback_autoencoder_(xb)[0]).flatten(1), X,
                            self.batch_size, self.device_)
            self.anomaly_detector_ = train_module(
                self._build_anomaly_detector(), delta[fit_idx], delta[fit_idx],
                torch.nn.MSELoss, desc="DAFAR anomaly detector", detector=self,
                max_epochs=self.anomaly_max_epochs)

    def _set_thresholds(self):
        """Eq. (9) on the kept calibration scores, for the current ``z`` and scorer.

        The paper prints ``alpha = mean + z * sigma / n``, a misprint for the right
        edge of the z-sigma interval that its text describes (Section 4.4.3).
        """
        if self.use_anomaly_detector and self.anomaly_detector_ is None:
            raise ValueError("use_anomaly_detector=True, but this detector was fitted without "
                             "the anomaly detector C: refit it to score with C.")
        cal = self.calibration_
        self.n_calibration_ = len(cal)
        # Both scores of the held-out clean images are kept, so that alpha can be
        # re-learned for another z, or without C, with no retraining.
        scores = cal["anomaly_score" if self.use_anomaly_detector else "l2"].to_numpy()
        # mean + z sigma claims the clean flag rate of a normal tail beyond z sigma.
        rate = 0.5 * math.erfc(float(self.z) / math.sqrt(2.0))
        self._check_threshold_data(
            len(scores), rate, f"alpha = mean + z*sigma with z={self.z:g} (Eq. 9, the normal "
            "tail beyond z sigma)")
        sigma = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
        self.threshold_ = float(np.mean(scores) + self.z * sigma)
        self.offset_ = -self.threshold_
        self.calibration_scores_ = scores
        self.scores_with_anomaly_detector_ = bool(self.use_anomaly_detector)
        # The confidence test (not in the paper), learned whether or not it is used.
        conf, q = cal["confidence"].to_numpy(), self.confidence_quantile
        self.confidence_threshold_ = float(np.quantile(conf, q, method="lower"))
        self.confidence_upper_threshold_ = float(np.quantile(conf, 1 - q, method="higher"))
        self.test_scales_ = dict(anomaly=_spread(self.threshold_ - scores),
                                 low=_spread(conf - self.confidence_threshold_),
                                 high=_spread(self.confidence_upper_threshold_ - conf))
        self.scores_with_tests_ = (self._confidence_mode(), self.combine_tests)
        if self.scores_with_tests_[0] != "off":
            combined = self._scores_of(cal)
            self.offset_ = 0.0 if self.combine_tests == "min" else \
                float(np.quantile(combined, q, method="lower"))

    def _confidence_mode(self):
        if isinstance(self.confidence_test, str):
            return self.confidence_test
        return "lower" if self.confidence_test else "off"

    def _combined(self, anomaly, conf):
        """The score (higher = clean) from the anomaly scores and the logit margins."""
        mode, combine = self.scores_with_tests_
        if mode == "off":
            return -anomaly
        margins = [(self.threshold_ - anomaly) / self.test_scales_["anomaly"],
                   (conf - self.confidence_threshold_) / self.test_scales_["low"]]
        if mode == "two-sided":
            margins[1] = torch.minimum(margins[1], (self.confidence_upper_threshold_ - conf)
                                       / self.test_scales_["high"])
        margins = torch.stack(margins)
        return margins.min(dim=0).values if combine == "min" else margins.sum(dim=0)

    def _plan_decoder(self, hooked, kind=None):
        """Decoder spec and the pooling layers it reads, from the shapes only.

        ``kind``: the design found at fit (``decoder_kind_``), for load, which
        rebuilds it without tracing again; ``None`` at fit.
        """
        value_range = self._value_range
        n_features = int(np.prod(self.feature_shape_))
        fallback = choose_design("auto", n_features, self.image_shape_)
        if self.decoder != "mirror":
            fallback = choose_design(self.decoder, n_features, self.image_shape_)
        spec = dict(kind=fallback, feature_shape=self.feature_shape_,
                    image_shape=self.image_shape_, value_range=value_range)
        self.decoder_kind_ = fallback
        if self.decoder != "mirror" or kind not in (None, "mirror"):
            return spec, []
        # The encoder is traced on blank images: the plan depends on shapes only.
        probe = torch.zeros((2,) + tuple(self.image_shape_), device=self.device_)
        probe = probe.flatten(1) if self.flat_input_ else probe
        model = hooked.module
        try:
            steps, pool_names = plan_mirror_decoder(
                *trace_encoder(model, self.feature_layer_, probe), self.image_shape_,
                unpool=self.unpool)
        except MirrorError as exc:
            warnings.warn(
                f"decoder='mirror': cannot mirror the encoder ending at "
                f"{self.feature_layer_!r}: {exc}. Using the {fallback} decoder instead; "
                f"{self._mirror_advice(model, probe, fallback)}", UserWarning,
                stacklevel=_caller_stacklevel())
            return spec, []
        self.decoder_kind_ = "mirror"
        spec = dict(kind="mirror", steps=steps, image_shape=self.image_shape_,
                    value_range=value_range)
        return spec, [model.get_submodule(n) for n in pool_names]

    def _mirror_advice(self, model, probe, fallback):
        """What to pass instead of an unmirrorable ``feature_layer``."""
        advice = f"pass decoder={fallback!r} to choose it without this warning"
        try:
            layer = default_feature_layer(model, probe)
            plan_mirror_decoder(*trace_encoder(model, layer, probe), self.image_shape_,
                                unpool=self.unpool)
        except (ValueError, RuntimeError):  # MirrorError is a ValueError
            return advice + "."
        if layer == self.feature_layer_:
            return advice + "."
        return f"pass feature_layer={layer!r} (the last feature map, which can be " \
            f"mirrored) for a mirrored decoder, or {advice}."

    # -------------------------------------------------------------- forward
    def _anomaly_score(self, delta, use_c=None):
        """||delta - C(delta)||_2, or ||delta||_2 without C (delta flattened)."""
        # The scorer that the thresholds were learned for, not a later set_params.
        use_c = self.scores_with_anomaly_detector_ if use_c is None else use_c
        if not use_c or self.anomaly_detector_ is None:
            return delta.norm(dim=1)
        return (delta - self.anomaly_detector_(delta)).norm(dim=1)

    def _pass(self, xb):
        """``(D(E(x)), metrics)`` of one batch: the reconstruction and the raw scores."""
        recon, scores = self.feedback_autoencoder_(xb)
        delta = (xb - recon).flatten(1)
        metrics = {"l2": delta.norm(dim=1),
                   "confidence": logit_margin(as_logits(scores, self.classifier_output_))}
        if self.anomaly_detector_ is not None:
            metrics["anomaly_score"] = self._anomaly_score(delta, use_c=True)
        return recon, metrics

    def _forward_batch(self, xb, every=False):
        metrics = self._pass(xb)[1]
        if every and "anomaly_score" not in metrics:
            metrics["anomaly_score"] = metrics["l2"]
        return metrics

    def _score(self, metrics):
        """Minus the anomaly score (Eq. 8), or the combined tests' margins."""
        use_c = self.scores_with_anomaly_detector_ and "anomaly_score" in metrics
        return self._combined(metrics["anomaly_score" if use_c else "l2"],
                              metrics["confidence"])

    def reconstruct(self, X):
        """The feedback reconstructions D(E(X)), as images.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples, C, H, W), float32
        """
        return self._map_batches(X, lambda xb: self.feedback_autoencoder_(xb)[0])

    def predict_classes(self, X):
        """Class indices from the detector's classifier copy (argmax of its scores).

        In joint mode this is the jointly trained classifier.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples,), int
        """
        return self._map_batches(X, lambda xb: self.classifier_(xb)[1]).argmax(axis=1)

    def _detect_and_purify(self, X):
        """``(decision_function(X), transform(X))`` from one pass."""
        keys = []

        def fn(xb):
            recon, metrics = self._pass(xb)
            keys[:] = list(metrics)
            return (recon,) + tuple(metrics.values())

        recon, *values = self._map_batches(X, fn)
        return self._scores_of(dict(zip(keys, values))) - self.offset_, recon

    def calibrate(self, X, fpr=0.01):
        """Move the threshold to a target false-positive rate on clean images.

        The networks are not retrained: alpha becomes the ``(1 - fpr)``-quantile
        of the anomaly scores of ``X`` (``threshold_`` and ``offset_`` move
        together). Use clean data the detector did not train on.

        Parameters
        ----------
        X : array-like of clean images
        fpr : float in [0, 1), default=0.01

        Returns
        -------
        self

        Raises
        ------
        ValueError
            When ``fpr`` is outside [0, 1) or ``X`` holds fewer than 2 images.

        Warns
        -----
        UserWarning
            When ``X`` holds fewer than ``ceil(1 / fpr)`` images.
        """
        return super().calibrate(X, fpr)

    def _offset_moved(self):
        if self.scores_with_tests_[0] == "off":
            self.threshold_ = -self.offset_

