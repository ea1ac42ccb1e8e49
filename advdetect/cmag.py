"""CMAG: the cascade model-aware generative detector.

Keji Han, Yun Li, Bin Xia, *A Cascade Model-Aware Generative Adversarial
Example Detection Method*, Tsinghua Science and Technology 26(6), 2021.
Section 3 (Eqs. 12-14), Algorithm 1 (training) and Algorithm 2 (thresholds).
"""

import numbers

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseDetector, as_logits, batched, logit_margin, train_module
from .nn.reconstructors import (ConvImageDecoder, ImageToImageReconstructor,
                                VectorToImageDecoder, choose_design)
from .nn.ssim import SSIMLoss, ssim

__all__ = ["CMAGDetector"]

_STAGES = ("fmr", "lr", "gr")
_confidence = logit_margin  # log p_max - log(1 - p_max), from the logits


def _l2(a, b):
    """Per-sample L2 distance, CMAG Eq. (3) with p = 2."""
    return (a - b).flatten(1).norm(dim=1)


def _spread(values, threshold):
    """Scale of a test's margins: the distance from its threshold to the median.

    ``values`` are oriented so that higher is cleaner. A margin of 0 sits on the
    threshold and 1 at the typical clean value, whatever the skew of the
    metric's distribution; the standard deviation (or 1) is the fallback for a
    degenerate spread.
    """
    spread = float(np.median(values)) - float(threshold)
    if spread > 0 and np.isfinite(spread):
        return spread
    return float(np.std(values)) or 1.0


class CMAGDetector(BaseDetector):
    """Cascade model-aware generative detector of adversarial examples (CMAG).

    Two first-order reconstructors read the protected classifier: the
    feature-map reconstructor (FMR) rebuilds the input from the output of its
    last feature-extraction layer f_fm(x), the logit reconstructor (LR) from
    its tempered softmax ``softmax(f(x) / T)``. The second-order global
    reconstructor (GR) rebuilds the input from their Hadamard product
    ``h(x) = FMR(f_fm(x)) * LR(softmax(f(x) / T))``. The paper flags an input
    whose GR reconstruction x' has too low an SSIM or too high an L2 distance
    to it (Algorithm 2).

    All three reconstructors are always trained (Algorithm 1), and every stage
    can be scored. The defaults are not the paper's; they were chosen on the
    worst-case ROC-AUC over {MNIST, Fashion-MNIST} x {well, briefly trained
    victim} x {FGSM 0.1/0.3, PGD 0.3, CW-L2 9, DeepFool}
    (``benchmarks/bench_defaults.py``, user guide "How the defaults were
    chosen"): FMR's SSIM **and** L2 tests plus a two-sided test of the
    classifier's confidence, their margins summed (worst case 0.81, against
    0.70 for the former default, FMR's SSIM and a one-sided confidence test
    with the smallest margin, which is ``confidence_test=True,
    combine_tests="min", criterion="ssim"``). :meth:`paper` builds the
    paper's recipe (GR, both tests, strict min/max thresholds, no hold-out).

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        The protected classifier. ``fit`` works on a frozen deep copy; the
        object passed in is never modified.
    feature_layer : str or None, default=None
        Dotted name of the layer whose output is f_fm(x). ``None``: chosen from
        one traced forward pass on the first training images, the layer whose
        output is the classifier's last feature map with spatial extent (the
        last 4-D output with H x W > 1, which the head's flatten, global
        pooling or first fully connected layer reads; never a 1 x 1 pooled
        output); a block whose ReLU is called twice is named as the block
        (``"layer4.1"`` on a ResNet-18 at 224 x 224). On the package's own
        victims that is the output of the last convolutional block
        (``"features.pool2"`` for MNISTCNN). A classifier with no such output
        (fully connected layers, flat input) gets the layer feeding its first
        fully connected layer (:func:`~advdetect.base.default_feature_layer`).
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input. ``"flat"``
        treats each row of 2-D input as a vector (the classifier then receives
        the rows as they are).
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range that input values must lie in; also the reconstructions' range
        and the SSIM data range. ``None`` accepts any finite values (for
        tabular data), with reconstructions unbounded and SSIM data range 1.
    temperature : float, default=1.0
        Distillation temperature T of the LR input (paper Eq. 5).
    combine : {"hadamard", "mean"}, default="hadamard"
        How GR's input combines FMR's and LR's outputs: the paper's Hadamard
        product ("attention"), or its 0.5/0.5 weighted-average ablation (Fig. 4).
    mu_fmr, mu_lr, mu_gr : float in [0, 1], default=0.5
        Weights of the squared L2 term in the losses of Eqs. (12)-(14); the SSIM
        term has weight 1 - mu.
    criterion : {"both", "ssim", "l2"}, default="both"
        Algorithm 2 flags an input whose SSIM is below the SSIM threshold **or**
        whose L2 error is above the L2 threshold (``"both"``, the paper's rule),
        or uses one test.
    stage : {"fmr", "lr", "gr", "all"}, default="fmr"
        Reconstruction that is scored: the paper scores GR; ``"all"`` flags an
        input that fails the test of any of the three stages. Scoring computes
        only the reconstructions the stage needs (FMR alone for ``"fmr"``).
    confidence_test : {True, False, "lower", "two-sided"}, default="two-sided"
        Also test the classifier's confidence, the logit margin
        ``log p_max - log(1 - p_max)``. ``True`` (or ``"lower"``) flags an
        input on which the classifier is less confident than clean data: the
        margin below the ``threshold_quantile`` quantile of the clean
        calibration margins. ``"two-sided"`` also flags one on which it is
        more confident than clean data (above the ``1 - threshold_quantile``
        quantile): PGD and high-confidence CW-L2 raise the confidence of a
        less well-trained classifier. ``False`` leaves the test out. Not in
        the paper; it catches minimal-perturbation attacks (CW-L2 at
        confidence 0, DeepFool) that leave the input's reconstruction intact.
    combine_tests : {"min", "sum"}, default="sum"
        How the tests' margins (each the distance to its threshold in units
        of its clean spread, see Notes) make the score. ``"min"``: the
        smallest margin, so an input is flagged when any test fails, as in
        Algorithm 2 (each test then flags about a fraction
        ``threshold_quantile`` of clean data). ``"sum"``: their sum, so that
        one test's strong evidence can outweigh another's; the score is then
        thresholded at its own ``threshold_quantile`` quantile on the clean
        calibration images (``offset_``).
    threshold_rule : {"per-test", "joint"}, default="per-test"
        Where ``combine_tests="min"`` cuts: ``"per-test"`` flags an input that
        fails any test (each at its ``threshold_quantile`` quantile, so with
        several tests more than that fraction of clean data is flagged);
        ``"joint"`` thresholds the combined score at its own
        ``threshold_quantile`` quantile on the clean calibration images, so
        about that fraction of clean data is flagged whatever the number of
        tests. ``combine_tests="sum"`` always cuts jointly.
    threshold_quantile : float in [0, 0.5), default=0.01
        Relaxation of Algorithm 2. The SSIM threshold is this quantile of the
        clean calibration SSIMs, the L2 threshold the (1 - q) quantile of
        the clean L2 errors (and the confidence threshold the q quantile of the
        clean margins); each test flags about a fraction q of clean data.
        ``0`` is the paper's rule (minimum SSIM, maximum L2), which single
        outliers set: a measurement (DESIGN.md) gave 0 %
        clean false positives but at most 63 % detection on FGSM 0.3, against
        about 1 % false positives and >= 98 % detection at 0.01.
    validation_fraction : float in [0, 1), default=0.2
        Fraction of the clean data held out of training to learn the
        thresholds on, because reconstructors score their own training images
        better than new clean images. ``0`` learns them on the training set, as
        the paper does.
    width : int, default=32
        Channels of the reconstructors.
    reconstructor : {"auto", "dense", "conv"}, default="auto"
        Design of FMR and LR. ``"dense"``: a dense projection of the flattened
        input to a quarter-resolution grid, then two stride-2 transposed
        convolutions (:class:`~advdetect.nn.reconstructors.VectorToImageDecoder`);
        its projection grows with the feature size times the pixel count.
        ``"conv"``: convolutional from the feature map's own grid with stride-2
        upsampling stages (LR: a small dense start to a seed grid of at most
        7 x 7) (:class:`~advdetect.nn.reconstructors.ConvImageDecoder`);
        its size grows with the channels only. ``"auto"``: ``"dense"`` where
        the projection has at most 2**22 (4.2 M) weights
        (:data:`~advdetect.nn.reconstructors.DENSE_MAX_WEIGHTS`), as on the
        package's own victims at their default layers, ``"conv"`` above (a
        ResNet-18 at 224 x 224: 1.4 M weights instead of 2.5 billion). GR
        is convolutional in every case.
    max_epochs : int, default=30
        Training epochs of each of FMR, LR and GR.
    batch_size : int, default=128
        Training and inference batch size (paper: 2000 for training).
    lr : float, default=1e-3
        Learning rate (paper: Adam, 1e-3).
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
        The frozen copy of the classifier, returning (f_fm(x), class scores).
    feature_layer_ : str
        The layer read for FMR: ``feature_layer``, or the one chosen by the
        traced forward pass described there.
    classifier_digest_ : str
        SHA-256 of the weights of ``classifier`` as passed to ``fit`` (its
        ``state_dict``, sorted by name); :func:`~advdetect.load`
        refuses a classifier with other weights.
    classifier_layout_ : tuple of str
        ``"name: ClassName"`` of every submodule of that classifier, checked
        by ``load`` too (a ReLU swapped for a Tanh has the same weights).
    feature_map_reconstructor_, logit_reconstructor_, global_reconstructor_ : torch.nn.Module
        The trained reconstructors.
    calibration_ : pandas.DataFrame
        SSIM and L2 of every stage on the held-out clean calibration images.
    thresholds_ : pandas.DataFrame
        Per stage (rows) the SSIM and L2 thresholds and the spread of the
        calibration scores used to put the two tests on one scale.
    threshold_ssim_, threshold_l2_ : float
        Thresholds of the scored stage (NaN for ``"all"``).
    confidence_threshold_, confidence_scale_ : float
        Threshold of the confidence test and the spread of the clean margins
        (learned even when ``confidence_test=False``).
    confidence_upper_threshold_, confidence_upper_scale_ : float
        The upper threshold (the ``1 - threshold_quantile`` quantile of the clean
        margins) and its spread, used by ``confidence_test="two-sided"``.
    offset_ : float
        ``decision_function = score_samples - offset_``; 0 after ``fit`` with
        ``combine_tests="min"``, the ``threshold_quantile`` quantile of the clean
        calibration scores with ``"sum"``.
    image_shape_ : tuple
        (C, H, W) of the training images.
    n_features_in_ : int
        C * H * W.

    See Also
    --------
    DAFARDetector : reconstruction from the classifier's encoder with an
        anomaly autoencoder.

    Notes
    -----
    The paper's losses print ``+ (1 - mu) SSIM``; the SSIM term of a loss to
    minimise is ``1 - SSIM`` (:class:`advdetect.nn.ssim.SSIMLoss`). FMR and LR
    are trained first, then GR on their frozen outputs (Algorithm 1); the
    classifier is frozen, so its features are computed once and cached.

    ``score_samples`` puts the tests on one scale: for each test it takes the
    margin to its threshold (``ssim - Thr_SSIM``, ``Thr_L2 - l2`` or
    ``confidence - Thr_conf``) divided by that test's clean spread (median of
    the clean calibration values minus the threshold, a scale that the skewed
    SSIM distribution does not distort), and returns their sum (the default,
    cut at its ``threshold_quantile`` quantile on the calibration images) or,
    with ``combine_tests="min"``, the smallest margin: an input is then
    flagged exactly when one test fails, as in Algorithm 2. Either way the
    score ranks inputs for ROC curves.

    Changing ``stage``, ``criterion``, ``threshold_quantile``,
    ``confidence_test``, ``combine_tests`` or ``threshold_rule`` after ``fit``
    and calling :meth:`recalibrate` re-learns the thresholds from the kept
    calibration metrics, without retraining.

    References
    ----------
    K. Han, Y. Li, B. Xia. A Cascade Model-Aware Generative Adversarial
    Example Detection Method. Tsinghua Science and Technology 26(6):800-812, 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect import CMAGDetector
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = CMAGDetector(SmallCNN(), max_epochs=1, device="cpu", random_state=0).fit(X)
    >>> det.predict(X[:3]).shape, det.reconstruct(X[:3], stage="fmr").shape
    ((3,), (3, 1, 8, 8))
    """

    _parameter_constraints = {
        **BaseDetector._shared_constraints("classifier", "feature_layer", "input_shape",
                                           "input_range", "validation_fraction", "max_epochs",
                                           "batch_size", "lr", "optimizer", "device",
                                           "random_state", "verbose"),
        # (0, inf]: any positive number, as before the constraints.
        "temperature": [Interval(numbers.Real, 0, None, closed="right")],
        "combine": [StrOptions({"hadamard", "mean"})],
        "mu_fmr": [Interval(numbers.Real, 0, 1, closed="both")],
        "mu_lr": [Interval(numbers.Real, 0, 1, closed="both")],
        "mu_gr": [Interval(numbers.Real, 0, 1, closed="both")],
        "criterion": [StrOptions({"both", "ssim", "l2"})],
        "stage": [StrOptions({*_STAGES, "all"})],
        "confidence_test": ["boolean", StrOptions({"lower", "two-sided"})],
        "combine_tests": [StrOptions({"min", "sum"})],
        "threshold_rule": [StrOptions({"per-test", "joint"})],
        "threshold_quantile": [Interval(numbers.Real, 0, 0.5, closed="left")],
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "reconstructor": [StrOptions({"auto", "dense", "conv"})],
    }

    def __init__(self, classifier=None, *, feature_layer=None, input_shape=None,
                 input_range=(0.0, 1.0), temperature=1.0, combine="hadamard", mu_fmr=0.5,
                 mu_lr=0.5, mu_gr=0.5, criterion="both", stage="fmr",
                 confidence_test="two-sided", combine_tests="sum", threshold_rule="per-test",
                 threshold_quantile=0.01, validation_fraction=0.2, width=32, reconstructor="auto",
                 max_epochs=30, batch_size=128, lr=1e-3,
                 optimizer=torch.optim.Adam, device="auto", random_state=None, verbose=0):
        self.classifier = classifier
        self.feature_layer = feature_layer
        self.input_shape = input_shape
        self.input_range = input_range
        self.temperature = temperature
        self.combine = combine
        self.mu_fmr = mu_fmr
        self.mu_lr = mu_lr
        self.mu_gr = mu_gr
        self.criterion = criterion
        self.stage = stage
        self.confidence_test = confidence_test
        self.combine_tests = combine_tests
        self.threshold_rule = threshold_rule
        self.threshold_quantile = threshold_quantile
        self.validation_fraction = validation_fraction
        self.width = width
        self.reconstructor = reconstructor
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    #: The paper's recipe (Section 3, Algorithms 1-2), as parameters.
    PAPER_PARAMS = dict(stage="gr", criterion="both", confidence_test=False, combine_tests="min",
                        threshold_rule="per-test",
                        threshold_quantile=0.0, validation_fraction=0.0, combine="hadamard",
                        mu_fmr=0.5, mu_lr=0.5, mu_gr=0.5, lr=1e-3, optimizer=torch.optim.Adam)

    @classmethod
    def paper(cls, classifier=None, **params):
        """A detector with the paper's recipe: GR scored, both tests, strict thresholds.

        Algorithm 2 exactly (SSIM threshold = minimum, L2 threshold = maximum of
        the clean training scores, no held-out calibration split), μ = 0.5 for
        every loss, Adam with learning rate 1e-3, no confidence test.
        ``params`` override any of these or set the others. The paper trains
        with batches of 2000; we keep ``batch_size=128``, which trains better
        in the same number of epochs on a few thousand images.

        Parameters
        ----------
        classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        **params
            Any other constructor parameter.

        Returns
        -------
        CMAGDetector
            Unfitted.

        Examples
        --------
        >>> from advdetect import CMAGDetector
        >>> det = CMAGDetector.paper(max_epochs=5)
        >>> det.stage, det.criterion, det.threshold_quantile, det.max_epochs
        ('gr', 'both', 0.0, 5)
        """
        return super().paper(classifier, **params)

    # ------------------------------------------------------------------ fit
    _threshold_params = ("stage", "criterion", "threshold_quantile", "confidence_test",
                         "combine_tests", "threshold_rule")
    _networks = ("classifier_", "feature_map_reconstructor_", "logit_reconstructor_",
                 "global_reconstructor_")

    def _first_order(self, in_features, in_shape):
        """FMR or LR, untrained: the dense design where it is small (the package's own
        victims), the convolutional one where its projection would grow with H x W."""
        common = dict(width=self.width, value_range=self._value_range,
                      image_shape=self.image_shape_)
        if choose_design(self.reconstructor, in_features, self.image_shape_,
                         self.width) == "dense":
            return VectorToImageDecoder(in_features=in_features, **common)
        return ConvImageDecoder(in_shape=in_shape, **common)

    def _build_fmr(self):
        return self._first_order(int(np.prod(self.feature_shape_)), self.feature_shape_)

    def _build_lr(self):
        return self._first_order(self.n_classes_, (self.n_classes_,))

    def _build_gr(self):
        return ImageToImageReconstructor(width=self.width, value_range=self._value_range,
                                         image_shape=self.image_shape_)

    def _build(self):
        self.feature_map_reconstructor_ = self._build_fmr()
        self.logit_reconstructor_ = self._build_lr()
        self.global_reconstructor_ = self._build_gr()

    def _train(self, X, y, fit_idx, cal_idx, rng):
        """Algorithm 1: the first-order reconstructors, then GR on their frozen outputs.

        Each network is built just before it is trained, so that a seeded fit
        draws its initial weights in the order it always did.
        """
        feats, soft = batched(lambda xb: self._classifier_views(xb)[:2], X, self.batch_size,
                              self.device_)

        def fit_stage(desc, module, inputs, mu):
            return train_module(module, inputs[fit_idx], X[fit_idx], SSIMLoss, desc=desc,
                                detector=self,
                                criterion_kwargs=dict(mu=mu, data_range=self._data_range))

        self.feature_map_reconstructor_ = fit_stage("CMAG FMR", self._build_fmr(), feats,
                                                    self.mu_fmr)
        self.logit_reconstructor_ = fit_stage("CMAG LR", self._build_lr(), soft, self.mu_lr)
        h = batched(lambda f, s: self._combine(self.feature_map_reconstructor_(f),
                                               self.logit_reconstructor_(s)), (feats, soft),
                    self.batch_size, self.device_)
        self.global_reconstructor_ = fit_stage("CMAG GR", self._build_gr(), h, self.mu_gr)

    def _calibration_metrics(self, X_cal):
        # Every stage's SSIM and L2 and the confidence (Algorithm 2's inputs), so
        # that recalibrate() can switch the scored stage or tests.
        metrics = self._forward(X_cal, every=True, validate=False)
        return pd.DataFrame({k: v for k, v in metrics.items() if k not in ("ssim", "l2")})

    def _set_thresholds(self):
        """Algorithm 2 on the kept calibration metrics, for the current parameters.

        Needs no retraining: changing ``stage``, ``criterion``,
        ``threshold_quantile`` or ``confidence_test`` on a fitted detector and
        calling this gives the thresholds that a refit would learn.
        """
        q = self.threshold_quantile
        self._check_threshold_data(
            len(self.calibration_), q,
            f"threshold_quantile={q:g}" if q > 0 else
            "Algorithm 2's strict min/max threshold (threshold_quantile=0)")
        self.thresholds_ = self._learn_thresholds(self.calibration_)
        single = self.stage != "all"
        self.threshold_ssim_ = float(self.thresholds_.loc[self.stage, "ssim"]) if single \
            else float("nan")
        self.threshold_l2_ = float(self.thresholds_.loc[self.stage, "l2"]) if single \
            else float("nan")
        conf = self.calibration_["confidence"].to_numpy()
        self.confidence_threshold_ = float(np.quantile(conf, self.threshold_quantile,
                                                       method="lower"))
        self.confidence_scale_ = _spread(conf, self.confidence_threshold_)
        self.confidence_upper_threshold_ = float(np.quantile(
            conf, 1 - self.threshold_quantile, method="higher"))
        self.confidence_upper_scale_ = _spread(-conf, -self.confidence_upper_threshold_)
        self.offset_ = 0.0
        if self.combine_tests == "sum" or self.threshold_rule == "joint":
            # The sum has no per-test cut: threshold it at its own clean quantile.
            scores = self._scores_of(self.calibration_)
            self.offset_ = float(np.quantile(scores, self.threshold_quantile, method="lower"))

    def _confidence_mode(self):
        """"off", "lower" or "two-sided" for the current ``confidence_test``."""
        if isinstance(self.confidence_test, str):
            return self.confidence_test
        return "lower" if self.confidence_test else "off"

    def _learn_thresholds(self, cal):
        q = self.threshold_quantile
        rows = {}
        for s in _STAGES:
            ssim_vals, l2_vals = cal[f"ssim_{s}"].to_numpy(), cal[f"l2_{s}"].to_numpy()
            # q = 0 is Algorithm 2 exactly: Thr_SSIM = min, Thr_L2 = max.
            thr_ssim = float(np.quantile(ssim_vals, q, method="lower"))
            thr_l2 = float(np.quantile(l2_vals, 1 - q, method="higher"))
            rows[s] = {"ssim": thr_ssim, "l2": thr_l2,
                       "ssim_scale": _spread(ssim_vals, thr_ssim),
                       "l2_scale": _spread(-l2_vals, -thr_l2)}
        return pd.DataFrame.from_dict(rows, orient="index")

    # -------------------------------------------------------------- forward
    def _classifier_views(self, xb):
        """f_fm(x) flattened, softmax(f(x) / T) and the confidence, for one batch."""
        feats, scores = self.classifier_(xb)
        logits = as_logits(scores, self.classifier_output_)
        return (feats.flatten(1), torch.softmax(logits / self.temperature, dim=1),
                _confidence(logits))

    def _combine(self, r_fmr, r_lr):
        if self.combine == "hadamard":
            # The paper's product of two [0, 1] images; another input_range is
            # mapped to [0, 1] first and the product back, so that GR's input
            # keeps the scale of an image (not its square).
            vr = self._value_range
            if vr is None or vr == (0.0, 1.0):
                return r_fmr * r_lr
            lo, span = vr[0], vr[1] - vr[0]
            return lo + span * ((r_fmr - lo) / span) * ((r_lr - lo) / span)
        return 0.5 * r_fmr + 0.5 * r_lr

    def _reconstructions(self, feats, soft, stages=_STAGES):
        """The reconstructions of ``stages`` (GR needs FMR's and LR's)."""
        recs = {}
        if "fmr" in stages or "gr" in stages:
            recs["fmr"] = self.feature_map_reconstructor_(feats)
        if "lr" in stages or "gr" in stages:
            recs["lr"] = self.logit_reconstructor_(soft)
        if "gr" in stages:
            recs["gr"] = self.global_reconstructor_(self._combine(recs["fmr"], recs["lr"]))
        return recs

    def _stage_metrics(self, xb, feats, soft, stages=_STAGES):
        """``{"ssim_<stage>": ..., "l2_<stage>": ...}`` per sample, Eqs. (10) and (3)."""
        recs = self._reconstructions(feats, soft, stages)
        out = {}
        for s in stages:
            out[f"ssim_{s}"] = ssim(recs[s], xb, data_range=self._data_range)
            out[f"l2_{s}"] = _l2(recs[s], xb)
        return out

    def _scored_stages(self):
        return _STAGES if self.stage == "all" else (self.stage,)

    def _score(self, metrics):
        """The smallest (or summed) margin to a threshold, in units of that test's clean spread.

        With ``combine_tests="min"``, negative exactly when a test fails
        (Algorithm 2 flags an input that fails any test), and a ranking for ROC
        curves; with ``"sum"`` the sum of the margins.
        """
        tests = ("ssim", "l2") if self.criterion == "both" else (self.criterion,)
        margins = []
        for s in self._scored_stages():
            thr = self.thresholds_.loc[s]
            if "ssim" in tests:
                margins.append((metrics[f"ssim_{s}"] - thr["ssim"]) / thr["ssim_scale"])
            if "l2" in tests:
                margins.append((thr["l2"] - metrics[f"l2_{s}"]) / thr["l2_scale"])
        mode = self._confidence_mode()
        if mode != "off":
            conf = metrics["confidence"]
            margin = (conf - self.confidence_threshold_) / self.confidence_scale_
            if mode == "two-sided":
                margin = torch.minimum(margin, (self.confidence_upper_threshold_ - conf)
                                       / self.confidence_upper_scale_)
            margins.append(margin)
        margins = torch.stack(margins)
        if self.combine_tests == "sum":
            return margins.sum(dim=0)
        return margins.min(dim=0).values

    def _forward_batch(self, xb, every=False):
        """SSIM and L2 of the scored stages (every stage with ``every``), and the confidence.

        Only the reconstructions the score needs: with ``stage="fmr"`` that is FMR alone.
        """
        feats, soft, conf = self._classifier_views(xb)
        metrics = self._stage_metrics(xb, feats, soft,
                                      _STAGES if every else self._scored_stages())
        metrics["confidence"] = conf
        if not every:
            return metrics
        main = "gr" if self.stage == "all" else self.stage
        return {"ssim": metrics[f"ssim_{main}"], "l2": metrics[f"l2_{main}"], **metrics}

    # --------------------------------------------------------------- extras
    def reconstruct(self, X, stage=None):
        """Reconstructions of ``X`` by one stage, as images.

        GR's output shows what the classifier "sees" (the paper's
        interpretability claim, Figs. 3 and 5): for an adversarial input it
        tends to look like the class the classifier was fooled into.

        Parameters
        ----------
        X : array-like of images
        stage : {"fmr", "lr", "gr"} or None, default=None
            ``None``: the stage the detector scores (its ``stage`` parameter,
            ``"fmr"`` by default), so that what is shown is what is judged.
            With ``stage="all"`` (every stage scored) ``None`` gives GR, the
            cascade's output; ask for the others by name.

        Returns
        -------
        ndarray of shape (n_samples, C, H, W), float32

        Raises
        ------
        ValueError
            ``stage`` is not one of the above.
        """
        if stage is None:
            stage = "gr" if self.stage == "all" else self.stage
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES} or None (the scored stage), "
                             f"got {stage!r}")
        return self._map_batches(X, lambda xb: self._reconstructions(
            *self._classifier_views(xb)[:2], stages=(stage,))[stage])
