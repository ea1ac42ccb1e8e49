"""Detection metrics and scikit-learn scorers for adversarial-example detectors.

Label convention
----------------
Evaluation data follow scikit-learn's *outlier* convention: ``y = +1`` marks a
clean sample and ``y = -1`` an adversarial one, and a detector's
``decision_function`` is negative (``predict`` returns ``-1``) for inputs it
flags as adversarial. The literature, however, reports detection metrics with
the **adversarial class as the positive class**: the *detection rate* (true
positive rate, TPR) is the fraction of adversarial samples flagged, the *false
positive rate* (FPR) the fraction of clean samples flagged. Every function here
takes labels in the outlier convention and reports the metrics in the
literature's sense, so nothing has to be relabelled by hand:

==========================  ====================================================
``detection_rate``          TPR: fraction of ``y == -1`` with ``y_pred == -1``
``false_positive_rate``     FPR: fraction of ``y == +1`` with ``y_pred == -1``
``tpr_at_fpr``              TPR at the threshold that flags at most ``fpr`` of
                            the clean samples
``detection_roc_auc``       ROC AUC with adversarial positive on
                            ``-decision``; identical to scikit-learn's
                            ``"roc_auc"`` on ``decision`` with +1 positive
``detection_report``        all of the above plus counts, as a dict
==========================  ====================================================

Labels must be exactly ``+1`` / ``-1``: 0/1 labels raise a ``ValueError`` rather
than being silently misread.

Scorers
-------
The ``*_scorer`` objects are built with :func:`sklearn.metrics.make_scorer` and
plug into ``GridSearchCV(scoring=...)``, ``cross_validate`` etc. Scorers are
*greater-is-better*, so the false positive rate, a loss, is exposed negated as
``neg_false_positive_rate_scorer`` exactly like scikit-learn's
``neg_mean_squared_error``: it returns ``-FPR`` (0 is best) and
``cv_results_["mean_test_neg_false_positive_rate"]`` holds ``-FPR``.
``DETECTION_SCORERS`` gathers them for multi-metric search::

    GridSearchCV(detector, grid, scoring=DETECTION_SCORERS, refit="roc_auc",
                 cv=CleanTrainSplit())

The threshold-free scorers (``roc_auc``, ``tpr_at_*_fpr``) call
``decision_function``; ``detection_rate`` and ``neg_false_positive_rate`` call
``predict`` and so depend on the detector's own fitted threshold (``offset_``).
"""

import numbers

import numpy as np
from sklearn.metrics import make_scorer, roc_auc_score
from sklearn.utils import check_consistent_length, column_or_1d

__all__ = [
    "detection_rate",
    "false_positive_rate",
    "tpr_at_fpr",
    "detection_roc_auc",
    "detection_report",
    "detection_rate_scorer",
    "neg_false_positive_rate_scorer",
    "tpr_at_1_fpr_scorer",
    "tpr_at_5_fpr_scorer",
    "roc_auc_scorer",
    "DETECTION_SCORERS",
]

CLEAN, ADVERSARIAL = 1, -1


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
def _check_pm1(y, name):
    """Return ``y`` as a 1-D int array, checking that it holds only +1 / -1."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n_samples,); got shape {y.shape}.")
    if y.size == 0:
        raise ValueError(f"{name} is empty.")
    if y.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must hold the numbers +1 (clean) and -1 (adversarial); "
            f"got dtype {y.dtype}.")
    values = np.unique(y)
    bad = values[~np.isin(values, (CLEAN, ADVERSARIAL))]
    if bad.size:
        hint = ""
        if np.isin(values, (0, 1)).all():
            hint = (" It looks like 0/1 labels: in advdetect +1 is clean and -1 "
                    "adversarial (scikit-learn's outlier convention); convert with "
                    "y = np.where(is_adversarial, -1, 1).")
        raise ValueError(
            f"{name} must contain only +1 (clean) and -1 (adversarial); got the "
            f"value(s) {bad.tolist()} among {values.tolist()}.{hint}")
    return y.astype(np.int64)


def _check_decision(decision, name="decision"):
    decision = column_or_1d(np.asarray(decision), warn=False)
    if decision.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numeric; got dtype {decision.dtype}.")
    decision = decision.astype(np.float64)
    if not np.isfinite(decision).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    return decision


def _require(y_true, label, metric):
    if not np.any(y_true == label):
        kind = "clean (y == +1)" if label == CLEAN else "adversarial (y == -1)"
        raise ValueError(
            f"{metric} is undefined without {kind} samples: y_true holds none.")


def _check_fpr(fpr):
    if (isinstance(fpr, (bool, np.bool_)) or not isinstance(fpr, numbers.Real)
            or not 0.0 <= fpr <= 1.0):
        raise ValueError(f"fpr must be a number in [0, 1]; got {fpr!r}.")
    return float(fpr)


def _max_count_within(fraction, n):
    """Largest integer ``k`` in ``[0, n]`` with ``k / n <= fraction`` (in float64).

    The comparison is the one :func:`sklearn.metrics.roc_curve` users make on its
    ``fpr`` array (``fps / n``), so ``0.29 * 100 == 28.999...`` still allows 29.
    """
    k = min(n, int(np.floor(fraction * n)))
    while k < n and (k + 1) / n <= fraction:
        k += 1
    while k > 0 and k / n > fraction:
        k -= 1
    return k


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #
def detection_rate(y_true, y_pred):
    """Fraction of adversarial samples flagged as adversarial (the TPR).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        +1 for clean, -1 for adversarial samples.
    y_pred : array-like of shape (n_samples,)
        A detector's ``predict`` output: +1 clean, -1 flagged as adversarial.

    Returns
    -------
    float
        ``mean(y_pred[y_true == -1] == -1)``.

    Raises
    ------
    ValueError
        If the labels are not +1/-1 or ``y_true`` holds no adversarial sample.

    Examples
    --------
    >>> detection_rate([1, 1, -1, -1, -1, -1], [1, -1, -1, -1, 1, -1])
    0.75
    """
    y_true = _check_pm1(y_true, "y_true")
    y_pred = _check_pm1(y_pred, "y_pred")
    check_consistent_length(y_true, y_pred)
    _require(y_true, ADVERSARIAL, "detection_rate")
    return float(np.mean(y_pred[y_true == ADVERSARIAL] == ADVERSARIAL))


def false_positive_rate(y_true, y_pred):
    """Fraction of clean samples flagged as adversarial (the FPR).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        +1 for clean, -1 for adversarial samples.
    y_pred : array-like of shape (n_samples,)
        A detector's ``predict`` output: +1 clean, -1 flagged as adversarial.

    Returns
    -------
    float
        ``mean(y_pred[y_true == +1] == -1)``.

    Raises
    ------
    ValueError
        If the labels are not +1/-1 or ``y_true`` holds no clean sample.

    Examples
    --------
    >>> false_positive_rate([1, 1, 1, 1, -1], [1, -1, 1, 1, -1])
    0.25
    """
    y_true = _check_pm1(y_true, "y_true")
    y_pred = _check_pm1(y_pred, "y_pred")
    check_consistent_length(y_true, y_pred)
    _require(y_true, CLEAN, "false_positive_rate")
    return float(np.mean(y_pred[y_true == CLEAN] == ADVERSARIAL))


def tpr_at_fpr(y_true, decision, fpr=0.05, *, return_threshold=False):
    """Detection rate at the threshold that flags at most ``fpr`` of clean samples.

    A sample is flagged when ``decision < threshold``, where ``threshold`` is the
    ``(k+1)``-th smallest clean decision value and ``k`` the largest integer with
    ``k / n_clean <= fpr`` — i.e. the threshold is a low quantile of the clean
    scores, chosen so that no more than ``k`` clean samples fall strictly below
    it. The result is the largest TPR among the points of the ROC curve
    (:func:`sklearn.metrics.roc_curve` with adversarial positive on
    ``-decision``, ``drop_intermediate=False``) whose FPR is ``<= fpr``, with no
    interpolation between points.

    **Ties.** Samples tied at a threshold are flagged together or not at all,
    as on the ROC curve. When clean scores tie at the threshold, the achieved
    FPR can therefore be below ``fpr``; an adversarial sample tied with the
    threshold clean score is *not* detected (the pessimistic choice).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        +1 for clean, -1 for adversarial samples. Both must be present.
    decision : array-like of shape (n_samples,)
        A detector's ``decision_function``: lower means more adversarial.
    fpr : float in [0, 1], default=0.05
        The largest admissible false positive rate.
    return_threshold : bool, default=False
        Also return the threshold. ``decision < threshold`` flags; ``+inf``
        when every sample may be flagged (``fpr == 1``).

    Returns
    -------
    tpr : float
        The detection rate (fraction of adversarial samples flagged).
    threshold : float
        Only if ``return_threshold``. Setting a detector's ``offset_`` to
        ``offset_ + threshold`` makes ``predict`` use this operating point.

    Examples
    --------
    Ten clean samples allow one false positive at 10 % FPR: the threshold is
    the second-lowest clean score, 0.2, and 3 of the 4 adversarial samples lie
    below it.

    >>> y = [1] * 10 + [-1] * 4
    >>> d = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    ...      -0.5, 0.0, 0.15, 0.25]
    >>> tpr_at_fpr(y, d, fpr=0.1, return_threshold=True)
    (0.75, 0.2)
    >>> tpr_at_fpr(y, d, fpr=0.05)
    0.5
    """
    y_true = _check_pm1(y_true, "y_true")
    decision = _check_decision(decision)
    check_consistent_length(y_true, decision)
    fpr = _check_fpr(fpr)
    _require(y_true, CLEAN, "tpr_at_fpr")
    _require(y_true, ADVERSARIAL, "tpr_at_fpr")

    clean = np.sort(decision[y_true == CLEAN])
    k = _max_count_within(fpr, clean.size)
    threshold = float(clean[k]) if k < clean.size else float("inf")
    tpr = float(np.mean(decision[y_true == ADVERSARIAL] < threshold))
    return (tpr, threshold) if return_threshold else tpr


def detection_roc_auc(y_true, decision):
    """Area under the ROC curve of adversarial detection.

    Computed as ``roc_auc_score(y_true == -1, -decision)`` (adversarial positive,
    higher = more adversarial). Because the AUC is the probability that a random
    adversarial sample scores below a random clean one (ties count one half),
    it equals scikit-learn's ``roc_auc_score(y_true, decision)`` with +1
    positive, i.e. the ``"roc_auc"`` scoring string on ``decision_function``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        +1 for clean, -1 for adversarial samples. Both must be present.
    decision : array-like of shape (n_samples,)
        A detector's ``decision_function``: lower means more adversarial.

    Returns
    -------
    float
        1.0 for perfect separation, 0.5 for chance.

    Examples
    --------
    >>> detection_roc_auc([1, 1, -1, -1], [0.9, 0.1, 0.2, -0.3])
    0.75
    """
    y_true = _check_pm1(y_true, "y_true")
    decision = _check_decision(decision)
    check_consistent_length(y_true, decision)
    _require(y_true, CLEAN, "detection_roc_auc")
    _require(y_true, ADVERSARIAL, "detection_roc_auc")
    return float(roc_auc_score(y_true == ADVERSARIAL, -decision))


def detection_report(y_true, decision, y_pred=None):
    """Every detection metric of one evaluation, with the counts behind them.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        +1 for clean, -1 for adversarial samples. Both must be present.
    decision : array-like of shape (n_samples,)
        A detector's ``decision_function``: lower means more adversarial.
    y_pred : array-like of shape (n_samples,), default=None
        A detector's ``predict`` output. By default ``-1`` where
        ``decision < 0``, else ``+1`` (what ``predict`` returns for a detector
        following the outlier convention).

    Returns
    -------
    dict
        ``n_samples``, ``n_clean``, ``n_adversarial``, ``n_detected`` (true
        positives), ``n_false_positives`` (ints); ``roc_auc``,
        ``tpr_at_1_fpr``, ``tpr_at_5_fpr``, ``detection_rate``,
        ``false_positive_rate`` (floats). ``pandas.Series(report)`` tabulates it.

    Examples
    --------
    >>> report = detection_report([1, 1, 1, -1, -1], [0.3, 0.1, -0.1, -0.2, 0.2])
    >>> report["n_detected"], report["detection_rate"], report["false_positive_rate"]
    (1, 0.5, 0.3333333333333333)
    >>> round(report["roc_auc"], 4)
    0.6667
    """
    y_true = _check_pm1(y_true, "y_true")
    decision = _check_decision(decision)
    check_consistent_length(y_true, decision)
    if y_pred is None:
        y_pred = np.where(decision < 0, ADVERSARIAL, CLEAN)
    y_pred = _check_pm1(y_pred, "y_pred")
    check_consistent_length(y_true, y_pred)
    _require(y_true, CLEAN, "detection_report")
    _require(y_true, ADVERSARIAL, "detection_report")
    adv, clean = y_true == ADVERSARIAL, y_true == CLEAN
    flagged = y_pred == ADVERSARIAL
    return {
        "n_samples": int(y_true.size),
        "n_clean": int(clean.sum()),
        "n_adversarial": int(adv.sum()),
        "n_detected": int((adv & flagged).sum()),
        "n_false_positives": int((clean & flagged).sum()),
        "roc_auc": detection_roc_auc(y_true, decision),
        "tpr_at_1_fpr": tpr_at_fpr(y_true, decision, fpr=0.01),
        "tpr_at_5_fpr": tpr_at_fpr(y_true, decision, fpr=0.05),
        "detection_rate": detection_rate(y_true, y_pred),
        "false_positive_rate": false_positive_rate(y_true, y_pred),
    }


# --------------------------------------------------------------------------- #
# Scorers
# --------------------------------------------------------------------------- #
#: ``scorer(estimator, X, y)`` -> detection rate of ``estimator.predict(X)``.
detection_rate_scorer = make_scorer(detection_rate, response_method="predict")

#: ``scorer(estimator, X, y)`` -> **minus** the false positive rate of
#: ``estimator.predict(X)`` (scorers are greater-is-better; 0 is best).
neg_false_positive_rate_scorer = make_scorer(
    false_positive_rate, response_method="predict", greater_is_better=False)

#: ``scorer(estimator, X, y)`` -> TPR at 1 % FPR of ``decision_function(X)``.
tpr_at_1_fpr_scorer = make_scorer(
    tpr_at_fpr, response_method="decision_function", fpr=0.01)

#: ``scorer(estimator, X, y)`` -> TPR at 5 % FPR of ``decision_function(X)``.
tpr_at_5_fpr_scorer = make_scorer(
    tpr_at_fpr, response_method="decision_function", fpr=0.05)

#: ``scorer(estimator, X, y)`` -> ROC AUC of ``decision_function(X)``; same value
#: as scikit-learn's ``"roc_auc"`` but with label validation.
roc_auc_scorer = make_scorer(detection_roc_auc, response_method="decision_function")

#: Multi-metric scoring for ``GridSearchCV(scoring=DETECTION_SCORERS,
#: refit="roc_auc")`` and ``cross_validate(scoring=DETECTION_SCORERS)``.
DETECTION_SCORERS = {
    "roc_auc": roc_auc_scorer,
    "tpr_at_1_fpr": tpr_at_1_fpr_scorer,
    "tpr_at_5_fpr": tpr_at_5_fpr_scorer,
    "detection_rate": detection_rate_scorer,
    "neg_false_positive_rate": neg_false_positive_rate_scorer,
}
