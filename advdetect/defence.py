"""DAFAR's autogenous hybrid defence: detect, then classify the purified rest.

Jiliang Liu, Jiaoyang Yi, Xiaodong Lin, Jiayong Shi, Meikang Qiu, *DAFAR:
Defending against Adversaries by Feedback-Autoencoder Reconstruction*,
Sections 4.3, 4.4 (Fig. 3) and 5.5 (Fig. 10).
"""

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .base import as_logits, batched, eval_mode, infer_output_kind, unwrap_classifier

__all__ = ["DetectAndPurify"]


def _classifier_has_proba(defence):
    """``available_if`` condition: the inner classifier gives class probabilities.

    A torch module (logits or probabilities: softmax or as they are), a skorch
    net or a FrozenEstimator of one (``predict_proba``), or ``None`` (the
    detector's own torch copy).
    """
    inner = defence.classifier
    if inner is None or isinstance(inner, torch.nn.Module):
        return True
    while not hasattr(inner, "module") and hasattr(inner, "estimator"):
        inner = inner.estimator
    return isinstance(inner, torch.nn.Module) or hasattr(inner, "predict_proba")


def _is_fitted(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


class DetectAndPurify(ClassifierMixin, BaseEstimator):
    """Reject inputs a detector flags; classify the reconstruction of the rest.

    The paper's autogenous hybrid defence (Fig. 3): an input flagged by the
    detector is discarded (predicted as ``reject_label``); any other input is
    purified by the feedback autoencoder, ``D(E(x))`` (Eq. 6), and the
    classifier's prediction on that reconstruction is returned. Strong attacks
    are caught by the detector; weak ones, which slip under its threshold,
    tend to lose their effect in the reconstruction (Section 4.3).

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, FrozenEstimator or None, default=None
        The classifier of the non-rejected inputs; it is used, never trained.
        ``None`` uses the detector's own copy of its protected classifier
        (``detector.classifier_.module``), which in DAFAR's joint mode is the
        jointly trained one.
    detector : DAFARDetector
        A detector with ``predict`` (+1 clean, -1 adversarial) and ``transform``
        (the purified images). If it is not fitted, ``fit`` fits a clone of it
        on ``X`` (and ``y``, which joint training uses). If it is fitted, it is
        used as it is and ``fit`` does not retrain it; wrap it in
        ``sklearn.frozen.FrozenEstimator`` so that ``clone`` (GridSearchCV,
        cross_validate) keeps it fitted too.
    reject_label : int, float or str, default=-1
        The prediction given to rejected inputs. It must not be one of the
        classifier's classes.
    purify : bool, default=True
        Classify the reconstruction ``detector.transform(X)`` of the accepted
        inputs (the paper's hybrid); ``False`` classifies them as they are
        (detection only).

    Attributes
    ----------
    detector_ : estimator
        The fitted detector in use.
    classes_ : ndarray of shape (n_classes + 1,)
        Every label :meth:`predict` returns, in the order of the columns of
        :meth:`predict_proba`: the classifier's classes (a skorch net's
        ``classes_``, else ``range(n_classes)``), then ``reject_label``.

    See Also
    --------
    DAFARDetector : the detector and purifier this defence is built on.

    Notes
    -----
    ``score`` is the paper's defence accuracy (Fig. 10): an adversarial input
    counts as defended if it is rejected or classified correctly; a clean
    input must be classified correctly, so rejecting it is an error.

    The rejection is a class of its own, as scikit-learn expects of a
    classifier: ``classes_`` ends with ``reject_label`` and
    :meth:`predict_proba` has a column for it, so that ``classes_[
    predict_proba(X).argmax(1)] == predict(X)``. An accepted input gets the
    classifier's probabilities on its purified image and 0 for the
    rejection; a rejected one gets 1 for the rejection and 0 elsewhere (the
    detector's decision is a hard one). There is no ``decision_function``:
    the classifier's logits and the detector's margin are on different
    scales, and no one number ranks both.

    References
    ----------
    J. Liu, J. Yi, X. Lin, J. Shi, M. Qiu. DAFAR: Defending against
    Adversaries by Feedback-Autoencoder Reconstruction. Section 5.5.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect.dafar import DAFARDetector
    >>> from advdetect.defence import DetectAndPurify
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = DAFARDetector(SmallCNN(), max_epochs=1, anomaly_max_epochs=1, device="cpu",
    ...                     random_state=0)
    >>> defence = DetectAndPurify(detector=det).fit(X)
    >>> pred = defence.predict(X[:4])
    >>> pred.shape, bool(np.isin(pred, np.r_[defence.classes_, -1]).all())
    ((4,), True)
    """

    _parameter_constraints = {
        # A torch.nn.Module, a fitted skorch net, a FrozenEstimator or None: no
        # constraint expresses that; unwrap_classifier checks it when fit reads it.
        "classifier": "no_validation",
        "detector": [HasMethods(["fit", "predict"])],
        # That no class of the classifier uses it is checked by fit.
        "reject_label": [numbers.Integral, numbers.Real, str],
        "purify": ["boolean"],
    }

    def __init__(self, classifier=None, detector=None, *, reject_label=-1, purify=True):
        self.classifier = classifier
        self.detector = detector
        self.reject_label = reject_label
        self.purify = purify

    # The detector is fitted here (a clone of it): its own parameters are validated too.
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the detector if it is not fitted, and read the classifier's classes.

        Parameters
        ----------
        X : array-like of clean images
        y : array-like of shape (n_samples,) or None
            Class labels, passed to the detector's ``fit`` (DAFAR's joint mode
            uses them); the classifier is not trained.

        Returns
        -------
        self

        Raises
        ------
        sklearn.utils._param_validation.InvalidParameterError
            When a parameter has an invalid type or value (``detector`` is
            required: an estimator with ``fit`` and ``predict``).
        ValueError
            When ``reject_label`` is one of the classifier's classes.
        """
        if _is_fitted(self.detector):
            self.detector_ = self.detector
        else:
            self.detector_ = clone(self.detector).fit(X, y)
        module = self._classifier_module()
        classes = self._classifier_classes(module)
        if any(c == self.reject_label for c in classes.tolist()):
            raise ValueError(f"reject_label={self.reject_label!r} is one of the classifier's "
                             "classes; choose a label no class uses.")
        dtype = np.result_type(classes.dtype, np.asarray(self.reject_label).dtype)
        self.classes_ = np.append(classes.astype(dtype), np.asarray(self.reject_label, dtype))
        return self

    # ------------------------------------------------------------ classifier
    def _classifier_module(self):
        if self.classifier is None:
            hooked = getattr(self.detector_, "classifier_", None)
            if hooked is None:
                raise ValueError("classifier=None uses the detector's classifier copy, but "
                                 f"{type(self.detector_).__name__} has no classifier_.")
            return getattr(hooked, "module", hooked)
        return unwrap_classifier(self.classifier)

    def _classifier_classes(self, module):
        inner = self.classifier
        while inner is not None and not isinstance(inner, torch.nn.Module) and \
                not hasattr(inner, "module") and hasattr(inner, "estimator"):
            inner = inner.estimator
        classes = getattr(inner, "classes_", None) if inner is not None and \
            not isinstance(inner, torch.nn.Module) else None
        n_outputs = self._n_outputs(module)
        if classes is not None and len(classes) == n_outputs:
            return np.asarray(classes)
        return np.arange(n_outputs)

    def _n_outputs(self, module):
        n = getattr(self.detector_, "n_classes_", None)
        if self.classifier is None and n is not None:
            return int(n)
        shape = getattr(self.detector_, "image_shape_")
        probe = torch.zeros((1,) + tuple(shape))
        return int(self._scores(module, probe.numpy()).shape[1])

    def _scores(self, module, images):
        """The classifier's outputs on ``(n, C, H, W)`` images, batched, in eval mode."""
        param = next(module.parameters(), None)
        device = param.device if param is not None else "cpu"
        flat = getattr(self.detector_, "flat_input_", False)
        batch_size = getattr(self.detector_, "batch_size", 256)
        # Every submodule's own flag is restored: the classifier is the user's object.
        with eval_mode(module):
            return batched(lambda xb: module(xb.flatten(1) if flat else xb), images,
                           batch_size, device)

    # ------------------------------------------------------------- predict
    def _detect(self, X):
        """Rejection mask and the images to classify, in one detector pass if possible."""
        det = self.detector_  # FrozenEstimator forwards attribute access
        if self.purify and hasattr(det, "_detect_and_purify"):
            decision, images = det._detect_and_purify(X)
            return decision < 0, images
        rejected = np.asarray(self.detector_.predict(X)) == -1
        if self.purify:
            images = self.detector_.transform(X)
        elif hasattr(det, "_validate_images"):  # advdetect detectors: (n, C, H, W) float32
            images = det._validate_images(X, reset=False)
        else:
            images = np.asarray(X, dtype=np.float32)
            shape = getattr(det, "image_shape_", None)
            if shape is not None:
                images = images.reshape((len(images),) + tuple(shape))
        return rejected, np.asarray(images, dtype=np.float32)

    def predict(self, X):
        """``reject_label`` for flagged inputs, else the class of the purified input.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        rejected, images = self._detect(X)
        scores = self._scores(self._classifier_module(), images)
        pred = self.classes_[scores.argmax(axis=1)]  # never the last class, the rejection
        pred[rejected] = self.reject_label
        return pred

    @available_if(_classifier_has_proba)
    def predict_proba(self, X):
        """Class probabilities, the rejection being the last class.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples, n_classes + 1), float64
            Columns in the order of ``classes_``. An accepted input: the
            classifier's softmax on its purified image (its output as it is
            when it returns probabilities), then 0. A rejected input: 0 for
            every class, then 1. Rows sum to 1, and
            ``classes_[predict_proba(X).argmax(1)]`` equals ``predict(X)``.
        """
        return np.exp(self.predict_log_proba(X))

    @available_if(_classifier_has_proba)
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba` (``-inf`` where it is 0).

        Computed with ``log_softmax``, so it keeps its resolution where the
        probabilities round to 0 or 1.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples, n_classes + 1), float64
        """
        check_is_fitted(self)
        rejected, images = self._detect(X)
        scores = torch.as_tensor(self._scores(self._classifier_module(), images),
                                 dtype=torch.float64)
        kind = getattr(self.detector_, "classifier_output_", None) \
            if self.classifier is None else None
        kind = kind or infer_output_kind(scores)
        log_proba = torch.log_softmax(as_logits(scores, kind), dim=1).numpy()
        out = np.full((len(log_proba), len(self.classes_)), -np.inf)
        out[:, :-1] = log_proba
        out[rejected] = -np.inf
        out[rejected, -1] = 0.0
        return out

    def score(self, X, y, adversarial=None, sample_weight=None):
        """Defence accuracy (paper Fig. 10).

        An adversarial input is defended if it is rejected or classified as its
        true class; a clean input must be classified as its true class
        (rejecting it is an error).

        Parameters
        ----------
        X : array-like of images
        y : array-like of shape (n_samples,)
            True classes (for adversarial inputs, the class of the clean
            original).
        adversarial : array-like of bool of shape (n_samples,) or None, default=None
            Which inputs are adversarial; None: all are clean.
        sample_weight : array-like of shape (n_samples,) or None, default=None

        Returns
        -------
        float
        """
        y = column_or_1d(y)
        pred = self.predict(X)
        if len(y) != len(pred):
            raise ValueError(f"y has {len(y)} labels for {len(pred)} inputs")
        if adversarial is None:
            adversarial = np.zeros(len(y), dtype=bool)
        adversarial = column_or_1d(adversarial)
        if len(adversarial) != len(y) or adversarial.dtype.kind not in "bui":
            raise ValueError("adversarial must be a boolean mask with one entry per input")
        adversarial = adversarial.astype(bool)
        correct = pred == y
        defended = np.where(adversarial, correct | (pred == self.reject_label), correct)
        return float(np.average(defended, weights=sample_weight))
