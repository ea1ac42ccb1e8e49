"""The Mahalanobis detector: class-conditional Gaussians on the classifier's features.

Kimin Lee, Kibok Lee, Honglak Lee, Jinwoo Shin, *A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks*, NeurIPS 2018:
Eq. (1) (class means and a tied covariance), Eq. (2) (the confidence score
M(x) = max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)), Eq. (4) (input
pre-processing) and Algorithm 1 (feature ensemble over layers), as in the
reference code (GitHub ``pokaxpoka/deep_Mahalanobis_detector``:
``lib_generation.py``'s ``sample_estimator`` and ``get_Mahalanobis_score``).
"""

import numbers

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseDetector, batched, check_outlier_labels, invalid_parameter
from .nn.mahalanobis import (ClassConditionalGaussian, LayerFeatures, MahalanobisDecision,
                             mahalanobis_layer_scores, spatial_mean)

__all__ = ["MahalanobisDetector"]

_COVARIANCES = {"empirical": EmpiricalCovariance, "ledoit_wolf": LedoitWolf}
# Leaf modules whose output ends a block: activations and pooling (see _block_layers).
_BLOCK_END_MODULES = (torch.nn.modules.activation.ReLU, torch.nn.modules.activation.ELU,
                      torch.nn.modules.activation.LeakyReLU, torch.nn.modules.activation.GELU,
                      torch.nn.modules.activation.SiLU, torch.nn.modules.activation.Tanh,
                      torch.nn.modules.activation.Sigmoid,
                      torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd,
                      torch.nn.modules.pooling._AdaptiveAvgPoolNd,
                      torch.nn.modules.pooling._AdaptiveMaxPoolNd)


def _block_layers(module, x):
    """Leaf activation and pooling layers that the forward pass calls, in call order.

    A generic reading of the paper's "end of every block" for networks that name
    no blocks: the output of every nonlinearity and pooling layer. A ReLU module
    called more than once is taken at its last call (as the hooks do).
    """
    order = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=name: order.append(n))
               for name, m in module.named_modules()
               if name and not list(m.children()) and isinstance(m, _BLOCK_END_MODULES)]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    names = list(dict.fromkeys(reversed(order)))[::-1]  # last call of each, in order
    if not names:
        raise ValueError("feature_layer='blocks' found no activation or pooling layer in the "
                         "classifier: name the layers to read with feature_layer=[...]")
    return names


class MahalanobisDetector(BaseDetector):
    """Mahalanobis-distance detector of adversarial examples (Lee et al., NeurIPS 2018).

    The classifier's features at a named layer (feature maps averaged over
    their spatial positions) are modelled, per class, as Gaussians with class
    means mu_c and one covariance Sigma shared by all classes (Eq. 1). The
    confidence score of an input is the Mahalanobis distance to the closest
    class mean, negated (Eq. 2)::

        M(x) = max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)

    which is higher for clean inputs, so it is ``score_samples`` directly.
    The means and covariance are fitted on clean images only; the class of each
    image is the classifier's **predicted** label (the paper and its reference
    code use the training set's true labels, but a detector's ``fit`` receives
    clean images only; on a 97 %-accurate victim the two differ on 3 % of the
    images). Nothing is trained by gradient descent: ``fit`` costs one
    classifier pass over the images and a covariance estimate.

    It is the strongest published model-aware detector trained on clean data
    alone (the feature-ensemble with a logistic regression, the paper's full
    recipe, needs adversarial examples: ``combine="logistic"``).

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        The protected classifier, returning logits or probabilities. ``fit``
        works on a frozen deep copy; the object passed in is never modified.
    feature_layer : str, list of str, "blocks" or None, default=None
        Layer(s) whose output is modelled, by their names in
        ``classifier.named_modules()``. ``None``: the default layer of every
        advdetect detector (:func:`~advdetect.base.default_feature_layer`, the
        output of the feature-extraction layers). A list: several layers,
        combined as ``combine`` says. ``"blocks"``: the output of every
        activation and pooling layer the forward pass calls (a generic reading
        of the paper's "end of every block"; for residual networks name the
        blocks' outputs instead).
    combine : {"sum", "logistic"}, default="sum"
        How several layers' scores M_l make one. ``"sum"``: the sum of the
        scores standardised by the mean and standard deviation of the clean
        calibration scores (clean data only). ``"logistic"``: the paper's
        feature ensemble, a logistic regression on the layer scores, which
        **needs adversarial examples**: ``fit(X, y)`` with y = +1 clean, -1
        adversarial (see :func:`~advdetect.model_selection.make_detection_dataset`);
        the Gaussians are fitted on the clean rows, the regression on the clean
        calibration rows and the adversarial rows. With one layer and
        ``"sum"`` the score is M(x) itself.
    covariance : {"empirical", "ledoit_wolf"}, default="empirical"
        Estimator of the tied covariance of the class-centred features:
        scikit-learn's ``EmpiricalCovariance`` (the reference code's; its
        precision is a pseudo-inverse, so it is defined when there are more
        features than samples) or ``LedoitWolf`` (shrinkage, better conditioned
        on few samples).
    noise_magnitude : float >= 0, default=0.0
        Input pre-processing (Eq. 4): each layer scores
        ``x - eps * sign(grad_x D(x))``, D the squared distance to the closest
        class mean, which moves clean inputs closer to their class more than
        adversarial ones. 0 turns it off. The paper's grid:
        {0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01} (chosen on validation
        data). It costs a backward and a second forward pass per layer.
    fpr : float in [0, 1), default=0.01
        Target false-positive rate: ``offset_`` is the ``fpr``-quantile of the
        scores of the held-out clean calibration images.
    validation_fraction : float in [0, 1), default=0.2
        Fraction of the clean images held out from the Gaussians for the
        threshold (and the standardisation of ``combine="sum"``). 0 uses the
        Gaussians' own images (the Gaussians then fit them best, and the
        false-positive rate is underestimated).
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input.
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range that input values must lie in. ``None`` accepts any finite values.
    batch_size : int, default=256
        Inference batch size.
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int or None, default=None
        Seeds the calibration split.
    verbose : int, default=0
        Unused (nothing is trained); accepted for the shared API.

    Attributes
    ----------
    classifier_ : advdetect.nn.mahalanobis.LayerFeatures
        The frozen copy of the classifier, hooked at the feature layers.
    feature_layers_ : list of str
        The layers modelled.
    gaussians_ : torch.nn.ModuleList of ClassConditionalGaussian
        Per layer: class means (n_classes, d), the precision Sigma^-1 (d, d)
        and which classes had training images.
    covariance_shrinkage_ : list of float
        Per layer, LedoitWolf's shrinkage (0.0 for ``"empirical"``).
    noise_magnitude_ : float
        The pre-processing step the calibration scores were computed with.
    calibration_ : pandas.DataFrame
        M_l of the held-out clean images, one column ``mahalanobis_<layer>``
        per layer, indexed by their positions among fit's images.
    combine_weights_ : ndarray of shape (n_layers,)
    combine_bias_ : float
        ``score = layer_scores @ combine_weights_ + combine_bias_``.
    offset_ : float
    n_classes_ : int
    image_shape_ : tuple
    n_features_in_ : int

    See Also
    --------
    BinaryClassifierDetector : supervised, trained on adversarial examples.
    CMAGDetector, DAFARDetector : model-aware reconstruction detectors.

    Notes
    -----
    Spatial averaging is the reference code's (``torch.mean(out.view(n, C, -1), 2)``);
    a fully connected layer's output is used as it is. The reference also
    divides the pre-processing gradient by the per-channel standard deviation
    of its input normalisation; advdetect's inputs are unnormalised [0, 1]
    intensities, so the step is ``eps`` in those units. The reference's scores
    are ``-0.5`` times the squared distance; the factor changes no ranking.

    ``reconstruction_errors`` reports one column ``mahalanobis_<layer>`` per
    layer (M_l), ``score``, ``decision`` and ``is_adversarial``.

    References
    ----------
    K. Lee, K. Lee, H. Lee, J. Shin. A Simple Unified Framework for Detecting
    Out-of-Distribution Samples and Adversarial Attacks. NeurIPS 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect import MahalanobisDetector
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = MahalanobisDetector(SmallCNN(), device="cpu", random_state=0).fit(X)
    >>> det.feature_layers_, det.predict(X[:3]).shape
    (['features.pool1'], (3,))
    >>> bool(np.mean(det.predict(X) == -1) < 0.1)
    True
    """

    _parameter_constraints = {
        **BaseDetector._shared_constraints("classifier", "validation_fraction", "input_shape",
                                           "input_range", "batch_size", "device",
                                           "random_state", "verbose"),
        # A name, "blocks" or a list of names (its contents, distinct layer names:
        # _check_params).
        "feature_layer": [str, "array-like", None],
        "combine": [StrOptions({"sum", "logistic"})],
        "covariance": [StrOptions(set(_COVARIANCES))],
        "noise_magnitude": [Interval(numbers.Real, 0, None, closed="left")],
        "fpr": [Interval(numbers.Real, 0, 1, closed="left")],
    }

    def __init__(self, classifier=None, *, feature_layer=None, combine="sum",
                 covariance="empirical", noise_magnitude=0.0, fpr=0.01,
                 validation_fraction=0.2, input_shape=None, input_range=(0.0, 1.0),
                 batch_size=256, device="auto", random_state=None, verbose=0):
        self.classifier = classifier
        self.feature_layer = feature_layer
        self.combine = combine
        self.covariance = covariance
        self.noise_magnitude = noise_magnitude
        self.fpr = fpr
        self.validation_fraction = validation_fraction
        self.input_shape = input_shape
        self.input_range = input_range
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    #: The paper's recipe (Algorithm 1, Section 3.2), as parameters.
    PAPER_PARAMS = dict(feature_layer="blocks", combine="logistic", covariance="empirical")

    @classmethod
    def paper(cls, classifier=None, **params):
        """A detector with the paper's recipe: every block, a logistic-regression ensemble.

        The paper scores the end of every block (ResNet: every residual stage;
        here ``feature_layer="blocks"``, every activation and pooling layer, or
        the names you pass) with the empirical tied covariance, and combines
        the layers by a logistic regression fitted on clean and adversarial
        validation examples; it picks ``noise_magnitude`` from
        {0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01} on the same data (tune
        it with GridSearchCV). So the paper's recipe needs ``fit(X, y)`` with
        adversarial rows. ``paper(combine="sum")`` is the same detector trained
        on clean data alone: the layers' standardised scores are summed
        instead of weighted by the regression.

        Parameters
        ----------
        classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        **params
            Any other constructor parameter.

        Returns
        -------
        MahalanobisDetector
            Unfitted.

        Examples
        --------
        >>> from advdetect import MahalanobisDetector
        >>> det = MahalanobisDetector.paper(noise_magnitude=0.001)
        >>> det.feature_layer, det.combine, det.noise_magnitude
        ('blocks', 'logistic', 0.001)
        """
        return super().paper(classifier, **params)

    # ------------------------------------------------------------ parameters
    def _layer_spec(self):
        layer = self.feature_layer
        if layer is None or isinstance(layer, str):
            return layer
        try:
            layers = list(layer)
        except TypeError:
            layers = None
        if not layers or not all(isinstance(n, str) for n in layers) \
                or len(set(layers)) != len(layers):
            raise invalid_parameter(self, "feature_layer", "None, a layer name, 'blocks' or a "
                                    "list of distinct layer names")
        return layers

    def _check_params(self):
        super()._check_params()
        # The contents of a list of layers: no constraint expresses them.
        self._layer_spec()

    # ------------------------------------------------------------------ fit
    _threshold_params = ("fpr", "combine")
    _networks = ("classifier_", "gaussians_")
    _fitted_values = ("feature_layers_", "covariance_shrinkage_", "noise_magnitude_",
                      "logistic_coef_", "logistic_intercept_")

    def _fit_uses_class_labels(self):
        # With the logistic ensemble, fit reads the adversarial rows itself.
        return self.combine == "logistic"

    def _check_fit_labels(self, y, n):
        if self.combine != "logistic":
            return None
        return check_outlier_labels(
            y, n, "combine='logistic' fits the paper's logistic regression over layers, which "
            "needs adversarial examples: call fit(X, y) with y = +1 for clean and -1 for "
            "adversarial images (advdetect.model_selection.make_detection_dataset builds "
            "them), or use combine='sum', which needs clean images only.", type(self).__name__)

    def _prepare_features(self, X):
        """The hooked classifier copy and the feature dimension of each layer."""
        layers = self._layer_spec()
        first = layers[0] if isinstance(layers, list) else \
            None if layers == "blocks" else layers
        # The base deep-copies, sizes lazy layers, freezes and checks the classifier
        # on one layer; the Mahalanobis detector then hooks all of its layers.
        hooked = self._prepare_classifier(X, layer=first)
        probe = torch.as_tensor(X[: min(len(X), 8)], device=self.device_)
        if layers is None:
            names = [hooked.feature_layer]  # default_feature_layer's choice
        elif layers == "blocks":
            names = _block_layers(hooked.module, probe.flatten(1) if self.flat_input_ else probe)
        elif isinstance(layers, str):
            names = [layers]
        else:
            names = layers
        features = LayerFeatures(hooked.module, names, flat_input=self.flat_input_)
        with torch.no_grad():
            try:
                feats, _ = features(probe)
            except RuntimeError as exc:
                raise ValueError(str(exc)) from exc
        bad = [n for n, f in zip(names, feats) if not torch.is_tensor(f) or f.ndim < 2]
        if bad:
            raise ValueError(f"feature_layer {bad[0]!r} does not return a (n, ...) tensor; "
                             "choose a layer that outputs one tensor per batch.")
        self.feature_layers_ = names
        return features, [int(spatial_mean(f).shape[1]) for f in feats]

    def _prepare(self, X, y):
        if self.combine == "logistic":
            X = X[y == 1]
        self.classifier_, _ = self._prepare_features(X)

    def _split(self, X, y, rng):
        if y is None:
            return super()._split(X, y, rng)
        # The Gaussians and the threshold are learned on the clean rows only.
        clean = np.flatnonzero(y == 1)
        fit_idx, cal_idx = super()._split(X[clean], None, rng)
        return clean[fit_idx], clean[cal_idx]

    def _wrap_classifier(self, module):
        return LayerFeatures(module, self.feature_layers_, flat_input=self.flat_input_)

    def _layer_dims(self):
        probe = torch.zeros((1,) + tuple(self.image_shape_), device=self.device_)
        with torch.no_grad():
            feats, _ = self.classifier_(probe.flatten(1) if self.flat_input_ else probe)
        return [int(spatial_mean(f).shape[1]) for f in feats]

    def _build(self):
        self.gaussians_ = torch.nn.ModuleList(
            ClassConditionalGaussian(self.n_classes_, d) for d in self._layer_dims()) \
            .to(self.device_).eval()

    def _train(self, X, y, fit_idx, cal_idx, rng):
        # Eq. (1): class means and the tied covariance, on the predicted classes.
        dims = self._layer_dims()
        *feats, labels = batched(self._features_and_labels, X[fit_idx], self.batch_size,
                                 self.device_)
        gaussians, shrinkage = [], []
        for f, d in zip(feats, dims):
            g, s = self._fit_gaussian(np.asarray(f, dtype=np.float64), labels, d)
            gaussians.append(g)
            shrinkage.append(s)
        self.gaussians_ = torch.nn.ModuleList(gaussians).to(self.device_).eval()
        self.covariance_shrinkage_ = shrinkage
        self.noise_magnitude_ = float(self.noise_magnitude)
        if self.combine == "logistic":
            from sklearn.linear_model import LogisticRegression

            # The paper's regression, on held-out clean and the adversarial rows.
            Z = np.r_[self._layer_scores(X[cal_idx]), self._layer_scores(X[y == -1])]
            t = np.r_[np.ones(len(cal_idx)), -np.ones(int(np.sum(y == -1)))]
            lr = LogisticRegression(max_iter=1000).fit(Z, t)
            self.logistic_coef_ = np.asarray(lr.coef_[0], dtype=np.float64)
            self.logistic_intercept_ = float(lr.intercept_[0])

    def _fit_gaussian(self, f, labels, d):
        k = self.n_classes_
        means = np.zeros((k, d))
        observed = np.zeros(k, dtype=bool)
        for c in np.unique(labels):
            means[c] = f[labels == c].mean(axis=0)
            observed[c] = True
        centred = f - means[labels]
        if len(f) < 2:
            precision, shrink = np.eye(d), 0.0
        else:
            est = _COVARIANCES[self.covariance](assume_centered=True).fit(centred)
            precision = est.precision_
            shrink = float(getattr(est, "shrinkage_", 0.0))
        g = ClassConditionalGaussian(k, d)
        g.means.copy_(torch.as_tensor(means, dtype=torch.float32))
        g.precision.copy_(torch.as_tensor(precision, dtype=torch.float32))
        g.observed.copy_(torch.as_tensor(observed))
        return g, shrink

    def _features_and_labels(self, xb):
        feats, scores = self.classifier_(xb)
        return tuple(spatial_mean(f) for f in feats) + (scores.argmax(dim=1),)

    def _layer_scores(self, X):
        if len(X) == 0:
            return np.zeros((0, len(self.feature_layers_)))
        scores = batched(lambda xb: mahalanobis_layer_scores(
            self.classifier_, self.gaussians_, xb, self.noise_magnitude_), X, self.batch_size,
            self.device_)
        return np.asarray(scores, dtype=np.float64)

    def _set_thresholds(self):
        """Combination weights and ``offset_`` from the kept clean calibration scores."""
        self._check_params()
        scores = self.calibration_[self._columns()].to_numpy()
        self.n_calibration_ = len(scores)
        n_layers = scores.shape[1]
        if self.combine == "logistic":
            if not hasattr(self, "logistic_coef_"):
                raise ValueError("combine='logistic', but this detector was fitted without "
                                 "the logistic regression: refit it with fit(X, y).")
            weights, bias = self.logistic_coef_, self.logistic_intercept_
        elif n_layers == 1:
            weights, bias = np.ones(1), 0.0
        else:
            mean = scores.mean(axis=0)
            std = scores.std(axis=0)
            std = np.where(std > 0, std, 1.0)
            weights, bias = 1.0 / std, float(-(mean / std).sum())
        self.combine_weights_ = np.asarray(weights, dtype=np.float64)
        self.combine_bias_ = float(bias)
        combined = scores @ self.combine_weights_ + self.combine_bias_
        self._check_threshold_data(len(combined), self.fpr, f"fpr={self.fpr:g}")
        self.offset_ = float(np.quantile(combined, self.fpr, method="lower")) \
            if len(combined) else 0.0

    # -------------------------------------------------------------- forward
    def _columns(self):
        return [f"mahalanobis_{name}" for name in self.feature_layers_]

    def _forward_batch(self, xb, every=False):
        """The Mahalanobis score of each layer (Eq. 2, after the input pre-processing)."""
        layer_scores = mahalanobis_layer_scores(self.classifier_, self.gaussians_, xb,
                                                self.noise_magnitude_)
        return dict(zip(self._columns(), layer_scores.unbind(dim=1)))

    def _score(self, metrics):
        layer_scores = torch.stack([metrics[c] for c in self._columns()], dim=1)
        w = torch.as_tensor(self.combine_weights_, dtype=layer_scores.dtype,
                            device=layer_scores.device)
        return layer_scores @ w + self.combine_bias_

    def to_torch(self):
        """The decision function as a frozen ``torch.nn.Module``, differentiable in x.

        Returns
        -------
        torch.nn.Module
            ``forward(x)`` maps a float32 batch ``(n, C, H, W)`` (or flat rows
            ``(n, C*H*W)``) on the detector's device to ``decision_function``
            ``(n,)`` (equal within 1e-4), in eval mode with frozen parameters;
            ``train()`` leaves it in eval mode. With
            ``noise_magnitude_ > 0`` the pre-processing step's sign is held
            constant in the gradient (straight through).

        Examples
        --------
        >>> import numpy as np, torch
        >>> from advdetect import MahalanobisDetector
        >>> from advdetect.models import SmallCNN
        >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
        >>> det = MahalanobisDetector(SmallCNN(), device="cpu", random_state=0).fit(X)
        >>> module = det.to_torch()
        >>> out = module(torch.as_tensor(X[:4])).detach().numpy()
        >>> bool(np.allclose(out, det.decision_function(X[:4]), atol=1e-4))
        True
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        import copy

        module = MahalanobisDecision(copy.deepcopy(self.classifier_),
                                     copy.deepcopy(self.gaussians_), self.combine_weights_,
                                     self.combine_bias_, self.offset_, self.noise_magnitude_,
                                     image_shape=self.image_shape_)
        module = module.to(self.device_).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module
