"""The shared detector base: input validation, hooks, batching, training, thresholds.

The data path is one way (STYLE.md): validate -> classifier forward with hooks
-> reconstruct -> metrics -> score -> threshold. :class:`BaseDetector` is a
template: its ``fit`` and ``score_samples`` call named hooks that each detector
implements (see :class:`BaseDetector` and the contributor page of the docs),
and the scikit-learn outlier API, calibration, recalibration, the
differentiable decision and the saved state are the base's, written once.
"""

import copy
import io
import numbers
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _streaming
# The building blocks detectors use, importable from here as they always were.
from ._training import EpochProgressBar, seeded, train_module, unwrap_classifier  # noqa: F401
from ._validation import (_EXPECTED_INPUT, MIN_EXTREME_SAMPLES,  # noqa: F401
                          MIN_THRESHOLD_SAMPLES, RANGE_TOLERANCE, _as_numeric_array,
                          _caller_stacklevel, _check_enough_images, _clean_rows,
                          check_outlier_labels, check_value_range, layout_hint,
                          upper_quantile)
from .nn.hooks import (HookedClassifier, _probe, as_logits, batched,  # noqa: F401
                       default_feature_layer, eval_mode, infer_output_kind, logit_margin,
                       resolve_device, writable)

__all__ = [
    "BaseDetector",
    "PurifierMixin",
    "HookedClassifier",
    "resolve_device",
    "unwrap_classifier",
    "default_feature_layer",
    "batched",
    "layout_hint",
]


# Key of the packed state of a detector pickled with CUDA tensors (see __getstate__).
_CUDA_STATE = "_advdetect_cuda_state"


def _holds_cuda(state):
    """Whether a detector's ``__dict__`` holds CUDA tensors (fitted on CUDA, or a CUDA module)."""
    if str(state.get("device_", "cpu")).startswith("cuda"):
        return True
    module = state.get("classifier")
    return isinstance(module, torch.nn.Module) and any(
        t.is_cuda for t in list(module.parameters()) + list(module.buffers()))


# _prepare_classifier's default: the feature_layer parameter (None would be the default
# layer; Mahalanobis's feature_layer="blocks" hooks the default layer and then its own).
_FEATURE_LAYER_PARAMETER = object()
# Set from X by fit; restored when fit's X turns out to be invalid.
_INPUT_ATTRIBUTES = ("n_features_in_", "feature_names_in_", "image_shape_", "flat_input_")
# Set by _prepare_classifier: what the saved state records of the classifier.
_CLASSIFIER_VALUES = ("feature_layer_", "classifier_output_", "n_classes_", "feature_shape_",
                      "classifier_digest_", "classifier_layout_")
# Every detector class by name (BaseDetector.__init_subclass__), for load.
_REGISTRY = {}
# Parameters that change how a fitted detector runs, not what it learned: free to
# change after fit (recalibrate and save take them as they are).
_RUNTIME_PARAMS = ("batch_size", "device", "verbose", "random_state")


# --------------------------------------------------------------------------- #
# The estimator base
# --------------------------------------------------------------------------- #
def invalid_parameter(estimator, name, requirement):
    """scikit-learn's ``InvalidParameterError``, in its wording, for a check written as code.

    For the conditions a declared constraint cannot express (the contents of a
    sequence, for instance): the message names the parameter, what it must be
    and its value, as the declared constraints' messages do. Returned, not
    raised: ``raise invalid_parameter(self, "squeezers", "...")``.
    """
    return InvalidParameterError(
        f"The {name!r} parameter of {type(estimator).__name__} must be {requirement}. "
        f"Got {getattr(estimator, name)!r} instead.")


class BaseDetector(OutlierMixin, BaseEstimator):
    """Base class of advdetect's detectors (scikit-learn outlier conventions), a template.

    ``fit`` runs these stages in order, each a hook a detector implements; no
    stage calls an earlier one::

        X, y = validate(X, y)                  # the base: images, layouts, ranges
        y = self._check_fit_labels(y, n)       # detectors that read y
        self._prepare(X, y)                    # classifier copy, hooks, shapes
        fit, cal = self._split(X, y, rng)      # the held-out clean split
        self._train(X, y, fit, cal, rng)       # build (_build_* helpers) and train
        self.calibration_ = metrics of X[cal]  # _forward_batch on the clean split
        self._set_thresholds()                 # thresholds, scales and offset_

    and scoring is one way too: ``_forward_batch(xb, every)`` maps a torch
    batch to raw per-sample metrics (no fitted threshold is read there), and
    ``_score(metrics)`` turns them into the score, once, on float64 tensors
    of all samples (and, in :meth:`to_torch`, on the batch with autograd).

    ``_build()`` makes every network from the fitted shapes, untrained: the
    saved state (:meth:`save`) is loaded into what it builds. Detectors
    declare their networks (``_networks``) and the plain fitted values that
    are neither networks nor derived from the calibration (``_fitted_values``);
    everything ``_set_thresholds`` derives is rebuilt on load, not stored.

    Parameters are declared as scikit-learn declares them
    (``_parameter_constraints``), checked by ``fit`` (through ``_fit_context``)
    and :meth:`recalibrate`. The entries below are the parameters most
    detectors share; a detector takes those it has by name
    (``_shared_constraints``) and adds its own. Only what no constraint can
    express stays as code, in ``_check_params``.
    """

    #: The paper's settings that :meth:`paper` applies (empty: no recipe).
    PAPER_PARAMS = {}

    _parameter_constraints = {
        # A torch.nn.Module, a fitted skorch net, or either in a FrozenEstimator
        # (None where the detector ignores it): no constraint expresses that;
        # unwrap_classifier checks it, with its own message, when fit reads it.
        "classifier": "no_validation",
        "feature_layer": [str, None],
        # A sequence of 1 to 3 sizes whose product is X's width: checked when fit
        # reshapes X (_parse_input_shape), as it depends on X.
        "input_shape": [StrOptions({"flat"}), Interval(numbers.Integral, 1, None, closed="left"),
                        "array-like", None],
        # Its contents, two finite numbers low < high: _check_params.
        "input_range": ["array-like", None],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        # (0, inf]: any positive number, as before the constraints.
        "lr": [Interval(numbers.Real, 0, None, closed="right")],
        "optimizer": [callable],
        "device": [str, torch.device],
        "random_state": ["random_state", np.random.Generator],
        "verbose": ["verbose"],
    }

    @staticmethod
    def _shared_constraints(*names):
        """The base's constraints of the shared parameters ``names``, for a detector's own.

        ``_parameter_constraints = {**BaseDetector._shared_constraints("classifier",
        "batch_size"), "fpr": [...]}``: the shared ones are written once, here. A
        name the base does not declare is a ``KeyError``.
        """
        return {name: BaseDetector._parameter_constraints[name] for name in names}

    # The parameters recalibrate() applies without a refit (thresholds only).
    _threshold_params = ()

    # The fitted torch.nn.Module attributes that load() fills (after _build()).
    _networks = ()
    # Fitted plain values (numbers, strings, tuples, arrays) that load() restores.
    _fitted_values = ()

    # ------------------------------------------------------------------ input
    def _validate_images(self, X, reset):
        """Validate ``X`` and return float32 ``(n, C, H, W)`` (see DESIGN's input list).

        With ``reset=True`` (``fit``) the input attributes (``n_features_in_``,
        ``feature_names_in_``, ``image_shape_``, ``flat_input_``) are set only
        when ``X`` is valid: an input error leaves a fitted detector as it was.
        """
        if not reset:
            return self._check_images(X, reset=False)
        return self._validate_fit_data(X, None)[0]

    def _stream_images(self, X):
        """``_validate_images(X, reset=False)``, one batch at a time where that is needed.

        A ``numpy.memmap``, a large array, a torch ``Dataset`` or ``DataLoader``
        is validated and read batch by batch as scoring consumes it (see
        :mod:`advdetect._streaming`); anything else is validated whole.
        """
        if _streaming.streams(X, self.batch_size):
            return _streaming.StreamedImages(
                X, lambda batch: self._check_images(batch, reset=False), self.batch_size)
        return self._validate_images(X, reset=False)

    def _validate_fit_data(self, X, y):
        """``fit``'s ``(images, y)``, adversarial rows left out under the outlier convention.

        A ``y`` holding -1 marks adversarial rows (see :meth:`fit`); unless the
        detector trains on class labels (``_fit_uses_class_labels``), only the
        rows with ``y == +1`` are returned, with ``y = None``. Any other ``y`` is
        returned as it is. The input attributes are set only when both are valid.
        """
        saved = {k: v for k, v in vars(self).items() if k in _INPUT_ATTRIBUTES}
        try:
            images = self._check_images(X, reset=True)
            if not self._fit_uses_class_labels():
                keep = _clean_rows(y, len(images))
                if keep is not None:
                    images, y = images[keep], None
            return images, y
        except Exception:
            for name in _INPUT_ATTRIBUTES:
                vars(self).pop(name, None)
            vars(self).update(saved)
            raise

    def _fit_uses_class_labels(self):
        """Whether ``fit`` trains on class labels ``y`` (then -1 is not read as adversarial)."""
        return False

    def _check_images(self, X, reset):
        X = _as_numeric_array(X)
        ndim = X.ndim if hasattr(X, "ndim") else np.ndim(np.asarray(X, dtype=object))
        input_shape = getattr(self, "input_shape", None)
        if ndim == 2:
            hint = "" if reset or getattr(self, "flat_input_", True) else \
                layout_hint(np.shape(X), self.image_shape_)
            if hint:
                raise ValueError(f"X has shape {tuple(np.shape(X))}, but "
                                 f"{type(self).__name__} was fitted on images of shape "
                                 f"{tuple(self.image_shape_)}." + hint)
            # Flat rows: scikit-learn's own validation (feature names, n_features_in_).
            X = validate_data(self, X, reset=reset, dtype=[np.float32, np.float64],
                              ensure_all_finite=True)
            d = X.shape[1]
            if reset:
                if input_shape is None:
                    raise ValueError(
                        f"X is 2-D with {d} features: give input_shape=(C, H, W) for flat "
                        "images, or input_shape='flat' to treat each row as a vector.")
                shape = self._parse_input_shape(input_shape, d)
            else:
                shape = self.image_shape_
            images = X.reshape((len(X),) + tuple(shape))
        elif ndim in (3, 4):
            X = check_array(X, allow_nd=True, dtype=[np.float32, np.float64],
                            ensure_all_finite=True, input_name="X")
            images = X[:, None] if X.ndim == 3 else X
            shape = images.shape[1:]
            if reset:
                if input_shape is not None and input_shape != "flat" and \
                        tuple(self._parse_input_shape(input_shape, int(np.prod(shape)))) != shape:
                    raise ValueError(f"X has images of shape {shape}, but input_shape="
                                     f"{input_shape!r}.")
                self.n_features_in_ = int(np.prod(shape))
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif tuple(shape) != tuple(self.image_shape_):
                raise ValueError(
                    f"X has images of shape {tuple(shape)}, but {type(self).__name__} was "
                    f"fitted on images of shape {tuple(self.image_shape_)}."
                    + layout_hint(X.shape, self.image_shape_))
        else:
            hint = (" Reshape your data: X.reshape(1, -1) for a single sample, or "
                    "X.reshape(-1, 1) for a single feature.") if ndim == 1 else ""
            raise ValueError(
                f"X must be 2-D (n, C*H*W), 3-D (n, H, W) or 4-D (n, C, H, W); got an array "
                f"with {ndim} dimension(s).{hint}")
        images = np.asarray(images, dtype=np.float32)
        if 0 in images.shape[1:]:
            raise ValueError(f"X has images of shape {images.shape[1:]}: every image "
                             "dimension (C, H, W) must be at least 1.")
        if self._value_range is not None:
            lo, hi = self._value_range
            images = check_value_range(
                images, (lo, hi),
                ("pixel intensities must be scaled to [0, 1] (divide 8-bit images by 255), "
                 if (lo, hi) == (0.0, 1.0) else
                 f"values must lie in input_range=({lo:g}, {hi:g}) as declared; set "
                 "input_range to the range of your data, ")
                + "or set input_range=None for unbounded inputs.")
        if reset:
            self.image_shape_ = tuple(int(s) for s in images.shape[1:])
            self.flat_input_ = ndim == 2 and input_shape == "flat"
            # fit hands X to torch and skorch whole; scoring copies batch by batch
            # (batched), so a large read-only X is not copied there.
            images = writable(images)
            # The layout as passed, for the classifier probe's error message (not state).
            self._fit_input_shape = tuple(np.shape(X))
        return images

    @staticmethod
    def _parse_input_shape(input_shape, n_features):
        if input_shape == "flat":
            return (1, 1, n_features)
        if isinstance(input_shape, numbers.Integral):
            input_shape = (int(input_shape),)
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 1:
            shape = (1, 1) + shape
        elif len(shape) == 2:
            shape = (1,) + shape
        elif len(shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), (H, W), (d,) or 'flat'; got "
                             f"{input_shape!r}")
        if int(np.prod(shape)) != n_features:
            raise ValueError(f"X has {n_features} features, which cannot be reshaped to "
                             f"input_shape={input_shape!r} ({int(np.prod(shape))} values).")
        return shape

    @property
    def _value_range(self):
        rng = getattr(self, "input_range", (0.0, 1.0))
        return None if rng is None else (float(rng[0]), float(rng[1]))

    @property
    def _data_range(self):
        rng = self._value_range
        return 1.0 if rng is None else rng[1] - rng[0]

    # ------------------------------------------------------------- classifier
    def _prepare_classifier(self, X, layer=_FEATURE_LAYER_PARAMETER):
        """Deep-copy, freeze and hook the protected classifier; check its output.

        ``layer``: the module whose output is read as the features; by default
        the ``feature_layer`` parameter; ``None`` is the default the traced
        forward pass chooses (``""`` is the whole module: its output alone).
        """
        from ._fingerprint import classifier_digest, classifier_layout

        original = unwrap_classifier(self.classifier)
        # What load() checks the classifier it is given against (issue 14, item 7).
        self.classifier_digest_ = classifier_digest(original)
        self.classifier_layout_ = classifier_layout(original)
        module = copy.deepcopy(original).to(self.device_)
        module.eval()
        probe = torch.as_tensor(writable(X[: min(len(X), 8)]), device=self.device_)
        # Lazy layers size themselves on the first batch: run one before naming a
        # layer or freezing the weights.
        try:
            _probe(module, probe.flatten(1) if self.flat_input_ else probe)
        except (RuntimeError, ValueError) as exc:
            raw = vars(self).pop("_fit_input_shape", X.shape)
            raise ValueError(
                f"the classifier cannot run on images of shape {tuple(X.shape[1:])} (X as "
                f"passed: {raw}): {exc}." + layout_hint(raw)) from exc
        vars(self).pop("_fit_input_shape", None)
        for p in module.parameters():
            p.requires_grad_(False)
        if layer is _FEATURE_LAYER_PARAMETER:
            layer = getattr(self, "feature_layer", None)
        if layer is None:
            layer = default_feature_layer(module, probe.flatten(1) if self.flat_input_ else probe)
        hooked = HookedClassifier(module, layer, flat_input=self.flat_input_)
        features, scores = _probe(hooked, probe)
        if not torch.is_tensor(scores) or scores.ndim != 2 or scores.shape[1] < 2:
            shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
            raise ValueError(
                f"the classifier's output has shape {shape}; a detector needs class scores "
                "of shape (n_samples, n_classes) with n_classes >= 2 (logits or "
                "probabilities).")
        if not torch.is_tensor(features):
            raise ValueError(f"feature_layer {layer!r} returns {type(features).__name__}, "
                             "not a tensor; choose a layer that outputs one tensor.")
        self.feature_layer_ = layer
        self.classifier_output_ = infer_output_kind(scores)
        self.n_classes_ = int(scores.shape[1])
        self.feature_shape_ = tuple(features.shape[1:])
        return hooked

    # ------------------------------------------------------------------ fit
    def _check_params(self):
        """What the declared constraints cannot express; fit and recalibrate run it after them.

        Cross-parameter and fitted-state conditions, and the contents of a
        sequence parameter; a detector extends it. A condition on one
        parameter's value raises ``InvalidParameterError``
        (:func:`invalid_parameter`).
        """
        rng = getattr(self, "input_range", None)
        if rng is not None and not (
                len(rng) == 2 and all(isinstance(v, numbers.Real) and np.isfinite(v) for v in rng)
                and rng[0] < rng[1]):
            raise invalid_parameter(self, "input_range",
                                    "None or two finite numbers (low, high) with low < high")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the detector on clean images.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W), (n_samples, H, W) or (n_samples, C*H*W)
            Clean images with values in [0, 1] (or clean and adversarial images
            labelled by ``y``).
        y : array-like of shape (n_samples,), default=None
            Labels in scikit-learn's outlier convention, as
            :func:`~advdetect.model_selection.make_detection_dataset` and
            :class:`~advdetect.model_selection.CleanTrainSplit` use them: +1
            clean, -1 adversarial. If ``y`` holds a -1, the detector is fitted
            on the rows with ``y == +1`` only, so ``GridSearchCV(refit=True)``
            and ``cross_validate`` on such data train on clean images; ``y``
            must then hold nothing but +1 and -1. Any other ``y`` (class
            labels, for instance) is ignored, except by detectors that train on
            class labels (``DAFARDetector(training="joint")``), which read it
            as class labels and reject -1.

        Returns
        -------
        self

        Raises
        ------
        sklearn.utils._param_validation.InvalidParameterError
            When a parameter has an invalid type or value (a subclass of
            ``ValueError`` and ``TypeError``; the message names the parameter).
        ValueError
            When fewer than 2 clean images are given: no threshold can be learned.

        Warns
        -----
        UserWarning
            When the clean images held out for the threshold are fewer than it
            needs: ``ceil(1 / rate)`` for a threshold meant to flag a fraction
            ``rate`` of clean images (100 for a strict minimum or maximum); the
            message names the number of images ``fit`` needs.

        Notes
        -----
        With ``random_state`` set, torch's and numpy's global generators are
        seeded for the duration of ``fit`` and restored after it: the caller's
        random streams are left where they were.
        """
        self._check_params()
        # The device fallback's warning points at fit's caller, past _fit_context.
        self.device_ = resolve_device(getattr(self, "device", "cpu"),
                                      stacklevel=_caller_stacklevel() + 1)
        # A torch Dataset or DataLoader is read whole, before seeding: a DataLoader
        # draws its workers' base seed from torch's generator.
        X, y = _streaming.materialize(X, y)
        with seeded(getattr(self, "random_state", None)) as rng:
            X, y = self._validate_fit_data(X, y)
            try:
                _check_enough_images(X, "fit")
                y = self._check_fit_labels(y, len(X))
                self._prepare(X, y)
                fit_idx, cal_idx = self._split(X, y, rng)
                self._train(X, y, fit_idx, cal_idx, rng)
                # Every row held out (validation_fraction=0): X itself, not a copy. CPU
                # kernels round by the memory's alignment, so a copy's metrics could
                # differ in the last bits from those that score_samples(X) computes.
                every_row = np.array_equal(cal_idx, np.arange(len(X)))
                self.calibration_ = self._calibration_metrics(X if every_row else X[cal_idx]) \
                    .set_axis(pd.Index(cal_idx, name="image"), axis=0)
                self._set_thresholds()
                self._record_params()
            finally:
                vars(self).pop("_fit_input_shape", None)
        return self

    @classmethod
    def paper(cls, classifier=None, **params):
        """A detector with its paper's recipe, ``PAPER_PARAMS``; ``params`` override it.

        Each detector's own ``paper`` says what the recipe is and where it
        departs from the paper.

        Parameters
        ----------
        classifier : torch.nn.Module, fitted skorch net, FrozenEstimator or None
        **params
            Any other constructor parameter.

        Returns
        -------
        detector
            Unfitted.

        Raises
        ------
        NotImplementedError
            For a detector without a recipe (empty ``PAPER_PARAMS``).
        """
        if not cls.PAPER_PARAMS:
            raise NotImplementedError(f"{cls.__name__} has no paper recipe: construct it "
                                      "with its parameters.")
        recipe = {**cls.PAPER_PARAMS, **params}
        if "classifier" in cls._get_param_names():
            return cls(classifier, **recipe)
        if classifier is not None:
            raise TypeError(f"{cls.__name__} is model-agnostic and takes no classifier: call "
                            f"{cls.__name__}.paper(**params).")
        return cls(**recipe)

    # ------------------------------------------------------ the fit's hooks
    def _check_fit_labels(self, y, n):
        """``y`` as the detector reads it, or a clear ``ValueError``; ``None`` by default.

        Only detectors that train on labels (``_fit_uses_class_labels``) see a
        ``y`` here: for the others the base has already dropped the rows
        marked -1 and set ``y`` to None.
        """
        return None

    def _prepare(self, X, y):
        """The classifier stage: ``classifier_``, the frozen hooked copy (see _prepare_classifier)."""
        self.classifier_ = self._prepare_classifier(X)

    def _split(self, X, y, rng):
        """``(fit_idx, cal_idx)``: the rows to train on and the clean rows held out.

        By default ``validation_fraction`` of ``X`` is held out
        (:meth:`_split_calibration`); with ``validation_fraction=0`` both are
        every row.
        """
        return self._split_calibration(X, rng)

    def _train(self, X, y, fit_idx, cal_idx, rng):
        """Build the detector's networks and train them on ``X[fit_idx]``; nothing by default.

        ``rng`` is fit's seeded ``numpy.random.Generator``; ``cal_idx`` is for
        a detector whose training reads the held-out split (Mahalanobis's
        logistic regression).
        """

    def _calibration_metrics(self, X_cal):
        """The raw metrics of the held-out clean images, as a DataFrame (``calibration_``)."""
        return pd.DataFrame(self._forward(X_cal, every=False, validate=False))

    def _set_thresholds(self):
        """Thresholds, scales and ``offset_`` from ``calibration_`` and the current parameters."""
        raise NotImplementedError

    def _build(self):
        """Every network of the fitted detector, built from its shapes and untrained.

        What :meth:`load` fills with the saved weights. The default builds
        nothing (a detector with no network of its own).
        """

    def _check_threshold_data(self, n, rate, rule, held_out=True):
        """Warn when ``n`` clean scores cannot support a threshold at clean flag rate ``rate``.

        The one check of every threshold rule (CMAG's quantile or strict
        min/max, DAFAR's mean + z sigma, MagNet's drop rate, Feature Squeezing's
        fpr, :meth:`calibrate`, :meth:`recalibrate`). A threshold meant to flag a
        fraction ``rate`` of clean images is an estimate of their
        ``rate``-quantile, which ``n`` scores resolve only down to ``1 / n``: it
        needs at least ``ceil(1 / rate)`` of them. A strict minimum or maximum
        (``rate`` 0) is passed by about ``1 / (n + 1)`` of new clean images, over
        1 % below 100 scores. Fewer than ``2`` are refused (``ValueError``);
        fewer than needed get a ``UserWarning`` that names the
        number needed (and, with ``held_out``, how many images ``fit`` must get
        for its ``validation_fraction`` to hold that many out).
        """
        if n < MIN_THRESHOLD_SAMPLES:
            raise ValueError(
                f"{type(self).__name__}: {rule} would be learned from {n} clean image(s); a "
                f"threshold needs the spread of at least {MIN_THRESHOLD_SAMPLES}: give "
                "more clean images (or a larger validation_fraction).")
        needed = MIN_EXTREME_SAMPLES if rate <= 0 else int(np.ceil(1.0 / rate - 1e-9))
        needed = max(needed, 2)
        if n >= needed:
            return
        if rate <= 0:
            why = ("the most extreme of n clean scores is passed by about 1/(n + 1) of new "
                   "clean images, and such a strict threshold (under 1 %)")
        else:
            why = f"a threshold that flags a fraction {rate:.4g} of clean images"
        advice = f"use at least {needed} clean images"
        frac = getattr(self, "validation_fraction", 0.0) if held_out else 0.0
        if frac:
            advice = (f"give fit at least {int(np.ceil(needed / frac))} clean images "
                      f"(validation_fraction={frac:g} holds {needed} of them out)")
        warnings.warn(
            f"{type(self).__name__}: {rule} is learned from {n} clean image(s), but {why} "
            f"needs at least {needed}: expect a false-positive rate far from the rule's "
            f"nominal rate; {advice}.", UserWarning, stacklevel=_caller_stacklevel())

    def _split_calibration(self, X, rng):
        """Hold out ``validation_fraction`` of X for the thresholds: at least 2 images
        (a spread) and at least 1 left to train on.

        With ``validation_fraction=0``, or 2 images only (then with a warning),
        the threshold is learned on the training images themselves.
        """
        frac = getattr(self, "validation_fraction", 0.0)
        n = len(X)
        if frac == 0 or n < 2:
            return np.arange(n), np.arange(n)
        if n < 3:
            warnings.warn(
                f"{type(self).__name__}: {n} clean images cannot be split into a training "
                f"part and a held-out part of at least 2 (validation_fraction={frac:g}): the "
                "threshold is learned on the training images themselves; give fit more "
                "images.", UserWarning, stacklevel=_caller_stacklevel())
            return np.arange(n), np.arange(n)
        n_cal = min(max(int(round(frac * n)), 2), n - 1)
        perm = rng.permutation(n)
        return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])

    # ------------------------------------------------------------- scoring
    def _forward(self, X, every=False, validate=True):
        """Raw per-sample metrics of ``X``, ``{name: float64 ndarray (n,)}`` (batched, no grad).

        ``every=False`` computes what the score needs, ``every=True`` every
        metric the detector reports (``_forward_batch(xb, every)``).
        ``validate=False`` takes ``X`` already validated (fit's own images).
        """
        if validate:
            check_is_fitted(self)
            X = self._stream_images(X)
        self._eval_mode()
        keys = None

        def fn(xb):
            nonlocal keys
            out = self._forward_batch(xb, every)
            keys = list(out)
            return tuple(out[k] for k in keys)

        arrays = batched(fn, X, self.batch_size, self.device_)
        arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        return {k: np.asarray(a, dtype=np.float64) for k, a in zip(keys, arrays)}

    def _map_batches(self, X, fn):
        """``fn`` over validated batches of ``X`` (streamed where needed), fitted networks in
        eval mode, no grad: the one way ``reconstruct``, ``transform`` and the like read X."""
        check_is_fitted(self)
        X = self._stream_images(X)
        self._eval_mode()
        return batched(fn, X, self.batch_size, self.device_)

    def _forward_batch(self, xb, every=False):
        """Raw per-sample metrics of one batch ``(n, C, H, W)``: ``{name: tensor (n,)}``."""
        raise NotImplementedError

    def _score(self, metrics):
        """The score (higher = clean) from the metrics, ``{name: tensor (n,)}`` -> tensor (n,).

        Called on float64 tensors of all samples by :meth:`score_samples`, and
        on a batch with autograd by :meth:`to_torch`.
        """
        raise NotImplementedError

    def _scores_of(self, metrics):
        """``_score`` of numpy metrics, as a float64 ndarray."""
        # A copy: a DataFrame's column (calibration_) may be read-only.
        tensors = {k: torch.from_numpy(np.array(v, dtype=np.float64))
                   for k, v in metrics.items()}
        return np.asarray(self._score(tensors).numpy(), dtype=np.float64)

    def _eval_mode(self):
        """Eval mode for the detector's own networks (fitted ``*_`` attributes) only.

        Never for a parameter: ``classifier`` is the user's object, which the
        detector must not change (it works on its own copy, ``classifier_``).
        """
        for name, value in vars(self).items():
            if name.endswith("_") and not name.startswith("_") and \
                    isinstance(value, torch.nn.Module):
                value.eval()

    def score_samples(self, X):
        """Per-sample score, higher for inputs more like the clean training data.

        Parameters
        ----------
        X : array-like of images, numpy.memmap, or torch Dataset or DataLoader
            A memory map, Dataset or DataLoader (of images or ``(images,
            labels)``) is read and validated one batch at a time
            (:ref:`scaling`).

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        return self._scores_of(self._forward(X))

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for inputs flagged as adversarial.

        Parameters
        ----------
        X : array-like of images, numpy.memmap, or torch Dataset or DataLoader
            A memory map, Dataset or DataLoader (of images or ``(images,
            labels)``) is read and validated one batch at a time
            (:ref:`scaling`).

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inputs judged clean, -1 for inputs flagged as adversarial.

        Parameters
        ----------
        X : array-like of images, numpy.memmap, or torch Dataset or DataLoader
            A memory map, Dataset or DataLoader (of images or ``(images,
            labels)``) is read and validated one batch at a time
            (:ref:`scaling`).

        Returns
        -------
        ndarray of shape (n_samples,), int
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    @staticmethod
    def _in_input_layout(images, X):
        """Reconstructions ``(n, C, H, W)`` in the layout ``X`` was given in.

        The one layout rule of every ``transform`` (DAFAR, MagNet, Defense-GAN),
        so that the next step of a Pipeline sees what it was given: flat rows
        ``(n, C*H*W)`` stay flat, greyscale ``(n, H, W)`` stays 3-D, anything
        else (4-D arrays, memory maps, torch Datasets and DataLoaders) is
        ``(n, C, H, W)``.
        """
        ndim = X.ndim if hasattr(X, "ndim") else (
            np.ndim(np.asarray(X, dtype=object)) if isinstance(X, (list, tuple)) else 4)
        if ndim == 2:
            return images.reshape(len(images), -1)
        if ndim == 3 and images.shape[1] == 1:
            return images[:, 0]
        return images

    def reconstruction_errors(self, X):
        """Every per-sample metric the detector computes, one row per sample.

        Parameters
        ----------
        X : array-like of images, numpy.memmap, or torch Dataset or DataLoader
            A memory map, Dataset or DataLoader (of images or ``(images,
            labels)``) is read and validated one batch at a time
            (:ref:`scaling`).

        Returns
        -------
        pandas.DataFrame
            The detector's metrics, ``score``, ``decision`` (``score - offset_``)
            and ``is_adversarial`` (the prediction, as a bool).
        """
        metrics = self._forward(X, every=True)
        frame = pd.DataFrame(metrics)
        frame["score"] = self._scores_of(metrics)
        frame["decision"] = frame["score"] - self.offset_
        frame["is_adversarial"] = frame["decision"] < 0
        return frame

    def recalibrate(self):
        """Re-learn the thresholds for the current parameters, without retraining.

        Every fitted detector keeps the raw metrics of its clean calibration
        images (``calibration_``); after ``set_params`` of a threshold
        parameter (the class's ``_threshold_params``: CMAG's ``stage``,
        ``criterion``, ``threshold_quantile``, ``confidence_test``, ...; DAFAR's
        ``z``, ``use_anomaly_detector``, ...; MagNet's ``drop_rate``; the
        ``fpr`` of the others) this gives the thresholds that a refit with the
        same networks would learn. ``offset_`` is re-learned too (a
        :meth:`calibrate` is undone).

        Returns
        -------
        self

        Raises
        ------
        sklearn.exceptions.NotFittedError
            When the detector is not fitted.
        sklearn.utils._param_validation.InvalidParameterError
            When a parameter has an invalid type or value.
        ValueError
            When a parameter other than a threshold parameter (or ``batch_size``,
            ``device``, ``verbose``, ``random_state``) was changed since ``fit``:
            the networks were trained with the old value, and only a refit
            applies it. The message names the parameters.
        """
        check_is_fitted(self)
        self._validate_params()
        self._check_params()
        changed = self._changed_params(set(self._threshold_params))
        if changed:
            raise ValueError(
                f"{type(self).__name__}.recalibrate() re-learns thresholds only "
                f"({', '.join(sorted(self._threshold_params)) or 'none'}); "
                f"{self._describe_changes(changed)} changed since fit, which needs a refit "
                "(or set_params back to the fitted values).")
        self._check_recalibration()
        self._set_thresholds()
        self._record_params()
        return self

    def _check_recalibration(self):
        """A ``ValueError`` when the kept calibration cannot serve the current parameters."""

    def _plain_params(self):
        return {k: v for k, v in self.get_params(deep=False).items() if k != "classifier"}

    def _record_params(self):
        """Remember the parameters the fitted state now corresponds to (fit, recalibrate, load)."""
        self._fitted_params = copy.deepcopy(self._plain_params())

    def _changed_params(self, free=()):
        """``{name: (fitted, now)}`` of the parameters changed since fit, but those in ``free``."""
        fitted = getattr(self, "_fitted_params", None)
        if fitted is None:  # a detector pickled before parameters were recorded
            return {}
        changed = {}
        for name, now in self._plain_params().items():
            if name in free or name in _RUNTIME_PARAMS or name not in fitted:
                continue
            try:
                same = type(now) is type(fitted[name]) and bool(now == fitted[name])
            except Exception:  # values == cannot compare (arrays): compare identity
                same = now is fitted[name]
            if not same:
                changed[name] = (fitted[name], now)
        return changed

    @staticmethod
    def _describe_changes(changed):
        return ", ".join(f"{k}={now!r} (fitted with {old!r})" for k, (old, now) in changed.items())

    def calibrate(self, X, fpr=0.01):
        """Move the threshold to a target false-positive rate on clean images.

        The networks are not retrained: ``offset_`` becomes the ``fpr``-quantile
        of ``score_samples`` on ``X``, so about a fraction ``fpr`` of inputs
        like ``X`` will be flagged. Use clean data the detector did not train on.

        Parameters
        ----------
        X : array-like of clean images
        fpr : float in [0, 1), default=0.01
            Target false-positive rate.

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
            When ``X`` holds fewer than ``ceil(1 / fpr)`` images (100 for
            ``fpr=0``), too few to resolve the ``fpr``-quantile.
        """
        if not isinstance(fpr, numbers.Real) or not 0 <= fpr < 1:
            raise ValueError(f"fpr must be in [0, 1), got {fpr!r}")
        scores = self.score_samples(X)
        _check_enough_images(scores, "calibrate")
        self._check_threshold_data(len(scores), fpr, f"calibrate(fpr={fpr:g})", held_out=False)
        # "lower" interpolation: at most a fraction fpr of X falls strictly below.
        self.offset_ = float(np.quantile(scores, fpr, method="lower"))
        self._offset_moved()
        return self

    # ------------------------------------------------------ differentiable
    def _score_torch(self, x):
        """The score of a batch ``(n, C, H, W)`` with autograd (see :meth:`to_torch`).

        ``_score`` of ``_forward_batch``; a detector whose forward pass is not
        differentiable (Feature Squeezing) overrides it.
        """
        return self._score(self._forward_batch(x))

    def to_torch(self):
        """The decision function as a differentiable, frozen ``torch.nn.Module``.

        For adaptive attacks (Carlini & Wagner 2017, "Adversarial examples are
        not easily detected"; Tramèr et al. 2020), which optimise through the
        detector, and for using a detector inside a torch pipeline (on a GPU, or
        in ART, foolbox or torchattacks).

        The contract, for every detector: the module is on the detector's
        device, in eval mode, with ``requires_grad=False`` on every parameter;
        ``forward(x)`` maps a float32 tensor ``(n, C, H, W)`` in the detector's
        input range (or flat rows ``(n, C*H*W)``, reshaped to the fitted
        ``image_shape_``; a detector fitted with ``input_shape="flat"`` has
        ``image_shape_ = (1, 1, d)``) to the decision ``score - offset_`` of
        shape ``(n,)``, float32, equal to :meth:`decision_function` within
        1e-4, with a gradient with respect to ``x``. The module holds a copy of
        the fitted state taken now (networks, thresholds, ``offset_``), so a
        later ``fit``, ``calibrate`` or ``recalibrate`` does not change it: call
        ``to_torch`` again after moving the threshold. Input is not validated
        or clipped, unlike ``decision_function``.

        A detector provides its differentiable score through ``_score_torch(x)``
        (by default ``_score(_forward_batch(x))``); where a step is not
        differentiable, the detector's docstring says which approximation the
        gradient uses.

        Returns
        -------
        advdetect.nn.differentiable.DetectorDecision

        Raises
        ------
        sklearn.exceptions.NotFittedError
            When the detector is not fitted.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from advdetect import MagNetDetector
        >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
        >>> det = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
        >>> decision = det.to_torch()
        >>> x = torch.from_numpy(X[:4]).requires_grad_(True)
        >>> out = decision(x)
        >>> out.shape, bool(np.allclose(out.detach().numpy(), det.decision_function(X[:4]),
        ...                             atol=1e-4))
        (torch.Size([4]), True)
        >>> out.sum().backward(); x.grad.shape
        torch.Size([4, 1, 8, 8])
        """
        from .nn.differentiable import DetectorDecision

        check_is_fitted(self)
        classifier = getattr(self, "classifier", None)
        # The detector's own copy of everything fitted; the user's classifier is shared.
        memo = {} if classifier is None else {id(classifier): classifier}
        snapshot = copy.deepcopy(self, memo)
        snapshot._eval_mode()
        modules = {}
        for name, value in vars(snapshot).items():
            if isinstance(value, torch.nn.Module):
                modules[name] = value
            elif isinstance(value, dict):
                modules.update({f"{name}_{k}": v for k, v in value.items()
                                if isinstance(v, torch.nn.Module)})
        return DetectorDecision(snapshot, self.offset_, self.image_shape_, modules)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = getattr(self, "random_state", None) is None
        tags.input_tags.allow_nan = False
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------ persistence
    def __getstate__(self):
        """Pickled state; a detector holding CUDA tensors is packed to load anywhere.

        A plain pickle of a CUDA tensor can only be unpickled where CUDA is
        available, which breaks handing a GPU-fitted detector to a CPU process
        (a joblib or dask worker, a CPU server). Such a state is written with
        ``torch.save`` into bytes, which :meth:`__setstate__` reads with a
        ``map_location`` (skorch's ``NeuralNet`` does the same).
        """
        state = super().__getstate__()
        if _holds_cuda(state):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            return {_CUDA_STATE: buffer.getvalue()}
        return state

    def __copy__(self):
        # A shallow copy shares the networks, on any device (copy.copy would
        # otherwise go through __getstate__ and copy a CUDA detector's networks).
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def __setstate__(self, state):
        blob = state.get(_CUDA_STATE) if isinstance(state, dict) else None
        if blob is not None:
            cuda = torch.cuda.is_available()
            if not cuda:
                warnings.warn(
                    f"{type(self).__name__} was pickled with its networks on CUDA, which "
                    "is not available here: its tensors are loaded onto the CPU (device_ "
                    "= 'cpu').", RuntimeWarning, stacklevel=2)
            # The bytes come from the pickle being loaded: no more trusted than it.
            state = torch.load(io.BytesIO(blob), map_location=None if cuda else "cpu",
                               weights_only=False)
            if not cuda:
                state["device_"] = "cpu"
        super().__setstate__(state)

    def save(self, path):
        """Save the fitted detector to one file that cannot execute code when loaded.

        A safetensors file: network weights and numeric arrays as tensors, the
        parameters and other fitted attributes as a JSON header with a SHA-256
        digest (:mod:`advdetect._persistence` describes the format). What is
        stored is the detector's state: its parameters, input attributes, the
        state dicts of its networks, the raw metrics of its calibration images
        (``calibration_``) and ``offset_``; thresholds are derived again on
        load. The classifier's architecture is not stored: pass it to
        :meth:`load`.

        Parameters
        ----------
        path : str, os.PathLike or binary file object
            File to write (``.safetensors`` is the customary suffix; a path is
            written atomically), or a writable binary file object
            (``open(path, "wb")``, ``io.BytesIO``).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            When the detector is not fitted.
        ValueError
            When a parameter or fitted value has a type the format cannot
            store (an optimizer from outside ``torch.optim``, for example).

        See Also
        --------
        load : the inverse; advdetect.load : the same for any detector class.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from advdetect import CMAGDetector
        >>> from advdetect.models import SmallCNN
        >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
        >>> victim = SmallCNN()
        >>> det = CMAGDetector(victim, max_epochs=1, device="cpu", random_state=0).fit(X)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     det.save(os.path.join(tmp, "cmag.safetensors"))
        ...     again = CMAGDetector.load(os.path.join(tmp, "cmag.safetensors"), victim)
        >>> bool(np.array_equal(again.score_samples(X), det.score_samples(X)))
        True
        """
        from . import _persistence

        header, tensors = self._get_state()
        _persistence.write(path, header, tensors)

    @classmethod
    def load(cls, path, classifier=None, device=None, *, strict=True):
        """Load a detector saved by :meth:`save`; nothing in the file is executed.

        The networks are built by advdetect's own code from the saved
        parameters and shapes and filled with the saved weights.

        Parameters
        ----------
        path : str, os.PathLike or binary file object
            A file written by :meth:`save`, or a readable binary file object
            (``open(path, "rb")``, ``io.BytesIO``) holding one.
        classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator, default=None
            The protected classifier, as given at construction (the same
            architecture and weights, checked against ``classifier_digest_``);
            the detector's saved copy of its weights is loaded into a new
            copy, and the object passed in is not modified. Ignored for
            :class:`~advdetect.MagNetDetector` and
            :class:`~advdetect.DefenseGANDetector`, which take none.
        device : str or None, default=None
            ``None``: the saved ``device`` parameter, resolved by
            :func:`resolve_device` (a detector fitted on CUDA loads onto the
            CPU, with a warning, where CUDA is absent).
        strict : bool, default=True
            Refuse a classifier whose weights or layers differ from the one
            fitted; ``False`` warns instead (see Notes).

        Returns
        -------
        detector
            The fitted detector. Called on a detector class, the file must hold
            that class; ``BaseDetector.load`` loads any advdetect detector.

        Raises
        ------
        ValueError
            When the file is not an advdetect detector file, is of another
            format version, fails its digest check, holds another class, or
            when ``classifier`` does not match the saved classifier (other
            layers, shapes or weights).
        TypeError
            When the detector needs a classifier and none is given.

        Notes
        -----
        Loading builds the detector from its saved parameters, copies the
        classifier passed, builds every network from the saved shapes
        (``_build``), loads the saved state dicts strictly, and derives the
        thresholds from the saved calibration metrics (``_set_thresholds``);
        nothing is fitted. Why a different classifier is refused rather than
        warned about: the detector scores with its own copy of the fitted
        weights, but ``detector.classifier`` is the object passed here, and
        that is the network ``clone(detector).fit(X)``, ``DetectAndPurify``
        and Pipelines use; a retrained network would be guarded by a detector
        calibrated on another one, silently. ``torch``'s
        ``load_state_dict(strict=True)`` refuses a mismatch for the same reason.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from advdetect import MagNetDetector
        >>> from advdetect.base import BaseDetector
        >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
        >>> det = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     det.save(os.path.join(tmp, "magnet.safetensors"))
        ...     again = BaseDetector.load(os.path.join(tmp, "magnet.safetensors"))
        >>> type(again).__name__, bool(np.array_equal(again.predict(X), det.predict(X)))
        ('MagNetDetector', True)
        """
        from . import _persistence

        header, tensors = _persistence.read(path)
        name = header.get("class")
        target = _REGISTRY.get(name) if isinstance(name, str) else None
        if target is None:
            hint = ""
            if isinstance(name, str) and "." in name:
                hint = (f" If it is your own detector class, import its module "
                        f"({name.rsplit('.', 1)[0]}) before loading.")
            raise ValueError(f"the file holds a {name!r}, which is not one of the detector "
                             f"classes advdetect loads: {', '.join(sorted(_REGISTRY))}.{hint}")
        if cls is not BaseDetector and not issubclass(target, cls):
            raise ValueError(f"the file holds a {name}, not a {cls.__name__}; load it with "
                             f"advdetect.load or {name}.load.")
        return target._from_state(header, tensors, classifier, device, strict)

    # ----------------------------------------------------------------- state
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls._registered_name()] = cls

    @classmethod
    def _registered_name(cls):
        """The name a saved file gives the class: advdetect's own by their public name,
        any other by module and qualified name (so that a user's class of the same
        name never stands in for one of ours)."""
        if cls.__module__.split(".")[0] == "advdetect":
            return cls.__name__
        return f"{cls.__module__}.{cls.__qualname__}"

    def _values(self):
        """The names of the fitted plain values the state holds."""
        return _INPUT_ATTRIBUTES + _CLASSIFIER_VALUES + tuple(self._fitted_values)

    def _get_state(self):
        """``(header, tensors)``: what :meth:`save` writes (see :mod:`advdetect._persistence`)."""
        from . import _persistence
        from ._version import __version__

        check_is_fitted(self)
        tensors = {}

        def encode(kind, name, value):
            try:
                return _persistence.encode(value, name, tensors)
            except _persistence.Unencodable as exc:
                raise ValueError(f"cannot save the {kind} {exc}: the format stores numbers, "
                                 "strings, tuples, lists, numpy arrays and torch.optim "
                                 "classes.") from None

        # The parameters the fitted state corresponds to: a set_params since fit (or
        # the last recalibrate) has not changed the networks or thresholds.
        changed = self._changed_params()
        if changed:
            warnings.warn(
                f"{type(self).__name__}: {self._describe_changes(changed)} changed since fit "
                "and not applied (refit, or recalibrate for a threshold parameter): the file "
                "stores the parameters the detector was fitted with.", UserWarning,
                stacklevel=_caller_stacklevel())
        current = self._plain_params()
        plain = {**getattr(self, "_fitted_params", current),
                 **{k: v for k, v in current.items() if k in _RUNTIME_PARAMS}}
        params = {k: encode("parameter", k, v) for k, v in plain.items()}
        values = {k: encode("fitted value", k, getattr(self, k))
                  for k in self._values() if hasattr(self, k)}
        networks = {}
        for name in self._networks:
            module = getattr(self, name, None)
            networks[name] = None if module is None else name
            if module is not None:
                tensors.update({f"network/{name}/{k}": v
                                for k, v in module.state_dict().items()})
        cal = self.calibration_
        for column in cal.columns:
            # np.array copies: pandas 3's columns are read-only, which torch warns about.
            tensors[f"calibration/{column}"] = torch.from_numpy(
                np.array(cal[column], dtype=np.float64))
        tensors["calibration/index"] = torch.from_numpy(np.array(cal.index, dtype=np.int64))
        header = {"advdetect_version": __version__, "torch_version": torch.__version__,
                  "class": type(self)._registered_name(), "params": params, "values": values,
                  "networks": networks, "calibration": [str(c) for c in cal.columns],
                  "offset": encode("fitted value", "offset_", float(self.offset_))}
        return header, tensors

    @classmethod
    def _from_state(cls, header, tensors, classifier, device, strict):
        """Build, then load: the inverse of :meth:`_get_state` (skorch's initialize + load_params)."""
        from . import _persistence
        from ._fingerprint import check_classifier

        parts = [header.get(k) for k in ("params", "values", "networks", "calibration")]
        if not (all(isinstance(x, dict) for x in parts[:3]) and isinstance(parts[3], list)):
            raise ValueError("malformed advdetect header: it needs params, values, networks "
                             "and calibration.")
        params, values, networks, columns = parts
        unknown = sorted(set(params) - set(cls._get_param_names()))
        if unknown:
            raise ValueError(f"the file stores parameters {unknown} that {cls.__name__} does "
                             "not have (it was saved by another version of advdetect).")
        self = cls()
        self.set_params(**{k: _persistence.decode(v, tensors) for k, v in params.items()})
        self._validate_params()  # the file's digest can be recomputed by anyone
        self._check_params()
        self._record_params()
        if "classifier" in cls._get_param_names():
            self.set_params(classifier=classifier)
        for name, spec in values.items():
            if name not in self._values():
                raise ValueError(f"malformed advdetect header: {cls.__name__} has no fitted "
                                 f"value {name!r}")
            setattr(self, name, _persistence.decode(spec, tensors))
        self.device_ = resolve_device(getattr(self, "device", "cpu") if device is None
                                      else device)
        if "classifier_digest_" in values:
            if classifier is None:
                raise TypeError(f"this {cls.__name__} protects a classifier: pass the same "
                                "architecture it was fitted with as load(path, classifier=...) "
                                "(its saved weights are loaded into the detector's copy).")
            check_classifier(unwrap_classifier(classifier), self.classifier_digest_,
                             self.classifier_layout_, strict)
        # Building draws initial weights (overwritten below) from torch's generator:
        # seeded() restores the caller's random streams afterwards.
        try:
            with seeded(0):
                if "classifier_digest_" in values:
                    self.classifier_ = self._restore_classifier()
                self._build()
        except AttributeError as exc:  # a value the networks are built from is missing
            raise ValueError(f"malformed advdetect header: {cls.__name__} cannot build its "
                             f"networks from it ({exc}).") from None
        for name in self._networks:
            if networks.get(name) is None:
                setattr(self, name, None)
                continue
            prefix = f"network/{name}/"
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not isinstance(getattr(self, name, None), torch.nn.Module):
                raise ValueError(f"malformed advdetect header: {cls.__name__} cannot build its "
                                 f"network {name} from it (a value it is built from is "
                                 "missing).")
            try:
                getattr(self, name).load_state_dict(state, strict=True)
            except RuntimeError as exc:
                what = "the classifier passed to load does not match the saved classifier" \
                    if name in ("classifier_",) or "classifier." in str(exc) else \
                    f"the saved weights of {name} do not fit the network"
                raise ValueError(f"{what}: {exc}") from None
        index = tensors.get("calibration/index")
        self.calibration_ = pd.DataFrame(
            {c: tensors[f"calibration/{c}"].numpy().copy() for c in columns},
            index=None if index is None else pd.Index(index.numpy().copy(), name="image"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # given at fit already
            self._set_thresholds()
        self.offset_ = float(_persistence.decode(header.get("offset", 0.0), tensors))
        self._offset_moved()
        self._eval_mode()
        return self

    def _restore_classifier(self):
        """``classifier_`` rebuilt from ``classifier`` and the fitted values, for load."""
        module = copy.deepcopy(unwrap_classifier(self.classifier)).to(self.device_).eval()
        probe = torch.zeros((1,) + tuple(self.image_shape_), device=self.device_)
        _probe(module, probe.flatten(1) if self.flat_input_ else probe)  # sizes lazy layers
        module.requires_grad_(False)
        return self._wrap_classifier(module)

    def _wrap_classifier(self, module):
        """The hooked classifier the detector reads (one feature layer by default)."""
        return HookedClassifier(module, self.feature_layer_, flat_input=self.flat_input_)

    def _offset_moved(self):
        """Called when ``offset_`` was set by :meth:`calibrate` or loading; nothing by default."""


class PurifierMixin(TransformerMixin):
    """``transform`` for detectors that purify: the reconstruction in the layout of ``X``.

    For the detectors whose ``reconstruct(X)`` maps inputs back towards the
    clean data (DAFAR's D(E(x)), Eq. 6; MagNet's reformer; Defense-GAN's
    G(z*)): put one in a Pipeline in front of a classifier to classify
    purified inputs.
    """

    def transform(self, X):
        """The purified ``X``: ``reconstruct(X)`` in the layout ``X`` was given in.

        Parameters
        ----------
        X : array-like of images, numpy.memmap, or torch Dataset or DataLoader

        Returns
        -------
        ndarray of shape (n_samples, C, H, W), (n_samples, H, W) for 3-D X, or
            (n_samples, C*H*W) for 2-D X
            float32, in ``input_range``: flat rows stay flat and greyscale
            ``(n, H, W)`` stays 3-D, so that the next step of a Pipeline sees
            the layout it was given.
        """
        return self._in_input_layout(self.reconstruct(X), X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Reconstructions are float32 whatever the input precision.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def load(path, classifier=None, *, device=None, strict=True):
    """Load any detector saved by :meth:`BaseDetector.save`; nothing in the file is executed.

    ``advdetect.load(path, classifier)`` is ``BaseDetector.load(path,
    classifier)``: the file names its detector class. See
    :meth:`BaseDetector.load` for the checks of ``classifier``.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A file written by :meth:`BaseDetector.save`, or a readable binary file
        object holding one.
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator, default=None
        The protected classifier, as given at construction (checked against
        the saved digest of its weights); ignored for the model-agnostic
        :class:`~advdetect.MagNetDetector` and :class:`~advdetect.DefenseGANDetector`.
    device : str or None, default=None
        ``None``: the saved ``device`` parameter (CUDA falls back to the CPU,
        with a warning, where it is absent).
    strict : bool, default=True
        Refuse a classifier whose weights or layers differ from the one
        fitted; ``False`` warns instead.

    Returns
    -------
    detector
        The fitted detector, of the class the file names.

    Raises
    ------
    ValueError
        When the file is not an advdetect detector file (or of another format
        version, or fails its digest check), or ``classifier`` does not match.
    TypeError
        When the detector needs a classifier and none is given.

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> import advdetect
    >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    >>> det = advdetect.MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
    >>> buffer = io.BytesIO()
    >>> det.save(buffer)
    >>> _ = buffer.seek(0)
    >>> again = advdetect.load(buffer)
    >>> type(again).__name__, bool(np.array_equal(again.score_samples(X), det.score_samples(X)))
    ('MagNetDetector', True)
    """
    return BaseDetector.load(path, classifier, device=device, strict=strict)
