"""Cross-validation for detectors trained on clean images only.

A detector of adversarial examples is fitted on clean images and evaluated on
clean *and* adversarial ones. scikit-learn's splitters cannot express that: their
training indices are the complement of the test indices. The splitters here take
a data set of clean (``y = +1``) and adversarial (``y = -1``) samples, as built by
:func:`make_detection_dataset`, and yield

* **training indices holding only clean samples**, and
* **test indices holding the held-out clean samples plus adversarial samples**,

so they drop into ``GridSearchCV(detector, grid, cv=CleanTrainSplit(),
scoring=DETECTION_SCORERS, refit="roc_auc")`` or ``cross_validate``, with the
scorers of :mod:`advdetect.metrics`.

Group leakage
-------------
An adversarial example is a perturbed copy of a clean image. If that clean image
is in the training fold, the detector has seen the example's content and the
test is optimistic. Pass ``groups`` (from :func:`make_detection_dataset`: clean
sample ``i`` has group ``i`` and each adversarial sample the group of its source
image) and an adversarial sample is tested only in the fold where its source is
held out. Clean samples sharing a group are kept in the same fold.

Caveats
-------
* ``GridSearchCV(refit=...)`` refits ``best_estimator_`` on **all** of ``X``
  and ``y``, since scikit-learn knows nothing of clean-only training. advdetect's
  detectors read a ``y`` holding -1 as these labels and fit on the clean rows
  (``y == +1``) only (:meth:`~advdetect.base.BaseDetector.fit`), so their refit
  is clean. Another outlier detector (``IsolationForest``, ``LocalOutlierFactor``)
  ignores ``y`` and would train on the adversarial samples too: use
  ``refit=False`` and refit on the clean part yourself::

      best = clone(search.estimator).set_params(**search.best_params_)
      best.fit(X[y == 1])

* The detector's ``fit`` receives ``y[train]``, i.e. an all-``+1`` vector; a
  detector that reads class labels from ``y`` must not be tuned this way.
* ``return_train_score=True`` scores the clean-only training folds, where the
  detection metrics are undefined (NaN with a warning).
* The test sets are not a partition of the samples (with ``all_adversarial`` or
  unmatched groups an adversarial sample is tested in several splits), so
  ``cross_val_predict`` does not apply.
"""

import numbers

import numpy as np
from sklearn.model_selection import BaseCrossValidator, KFold
from sklearn.model_selection._split import GroupsConsumerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import _num_samples

__all__ = [
    "CleanTrainSplit",
    "CleanTrainShuffleSplit",
    "make_detection_dataset",
]

CLEAN, ADVERSARIAL = 1, -1


# --------------------------------------------------------------------------- #
# The data set
# --------------------------------------------------------------------------- #
def make_detection_dataset(X_clean, X_adv, source_index=None):
    """Stack clean and adversarial images into ``(X, y, groups)``.

    Parameters
    ----------
    X_clean : array-like of shape (n_clean, ...)
        Clean images, e.g. (n, C, H, W), (n, H, W) or flat (n, d).
    X_adv : array-like of shape (n_adv, ...)
        Adversarial images with the same per-sample shape as ``X_clean``.
    source_index : array-like, default=None
        Which clean image each adversarial example was crafted from: integers in
        ``[0, n_clean)`` of shape (n_adv,), or a boolean mask of shape
        (n_clean,) with ``n_adv`` true entries (e.g. the attack's success mask
        when ``X_adv = attack(X_clean)[success]``). ``None`` requires
        ``n_adv == n_clean`` and pairs ``X_adv[i]`` with ``X_clean[i]``, as
        returned by an attack run on ``X_clean``.

    Returns
    -------
    X : ndarray of shape (n_clean + n_adv, ...)
        ``X_clean`` followed by ``X_adv``.
    y : ndarray of int64, shape (n_clean + n_adv,)
        +1 for the clean rows, -1 for the adversarial rows.
    groups : ndarray of int64, shape (n_clean + n_adv,)
        ``i`` for clean row ``i``; the source index for an adversarial row.
        Pass it as ``groups`` to the splitters to avoid leakage.

    Raises
    ------
    ValueError
        If a set is empty, the per-sample shapes differ, or ``source_index`` is
        missing, of the wrong length or out of range.

    Examples
    --------
    >>> import numpy as np
    >>> X_clean = np.zeros((3, 1, 2, 2), dtype=np.float32)
    >>> X_adv = np.ones((2, 1, 2, 2), dtype=np.float32)
    >>> X, y, groups = make_detection_dataset(X_clean, X_adv, source_index=[2, 0])
    >>> X.shape, X.dtype
    ((5, 1, 2, 2), dtype('float32'))
    >>> y.tolist(), groups.tolist()
    ([1, 1, 1, -1, -1], [0, 1, 2, 2, 0])
    """
    X_clean = np.asarray(X_clean)
    X_adv = np.asarray(X_adv)
    for name, arr in (("X_clean", X_clean), ("X_adv", X_adv)):
        if arr.ndim < 2:
            raise ValueError(f"{name} must have shape (n_samples, ...) with at least "
                             f"2 dimensions; got shape {arr.shape}.")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is empty.")
    if X_clean.shape[1:] != X_adv.shape[1:]:
        raise ValueError(f"X_clean and X_adv must have the same per-sample shape; got "
                         f"{X_clean.shape[1:]} and {X_adv.shape[1:]}.")
    n_clean, n_adv = X_clean.shape[0], X_adv.shape[0]

    if source_index is None:
        if n_adv != n_clean:
            raise ValueError(
                f"X_adv has {n_adv} samples and X_clean {n_clean}: pass source_index "
                "(the clean index each adversarial example was made from, or the "
                "boolean mask of the clean images that were attacked successfully).")
        source = np.arange(n_clean, dtype=np.int64)
    else:
        source = np.asarray(source_index)
        if source.ndim != 1:
            raise ValueError(f"source_index must be 1-D; got shape {source.shape}.")
        if source.dtype.kind == "b":
            if source.size != n_clean or int(source.sum()) != n_adv:
                raise ValueError(
                    f"a boolean source_index must have n_clean={n_clean} entries of "
                    f"which n_adv={n_adv} are True; got {source.size} entries with "
                    f"{int(source.sum())} True.")
            source = np.flatnonzero(source)
        else:
            if source.size and source.dtype.kind not in "iu":
                if source.dtype.kind != "f" or not np.all(source == np.round(source)):
                    raise ValueError("source_index must hold integer indices into X_clean.")
            if source.size != n_adv:
                raise ValueError(f"source_index has {source.size} entries; X_adv has "
                                 f"{n_adv} samples.")
            if source.size and (source.min() < 0 or source.max() >= n_clean):
                raise ValueError(f"source_index must lie in [0, {n_clean}) (indices "
                                 f"into X_clean); got values in [{source.min()}, "
                                 f"{source.max()}].")
        source = source.astype(np.int64)

    X = np.concatenate([X_clean, X_adv], axis=0)
    y = np.concatenate([np.full(n_clean, CLEAN, dtype=np.int64),
                        np.full(n_adv, ADVERSARIAL, dtype=np.int64)])
    groups = np.concatenate([np.arange(n_clean, dtype=np.int64), source])
    return X, y, groups


# --------------------------------------------------------------------------- #
# Shared machinery
# --------------------------------------------------------------------------- #
def _check_y(y, n_samples):
    if y is None:
        raise ValueError("The clean-train splitters need y (+1 clean, -1 adversarial) "
                         "to tell the clean samples from the adversarial ones.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(f"y must have shape ({n_samples},) to match X; got {y.shape}.")
    if y.dtype.kind not in "iuf" or not np.isin(y, (CLEAN, ADVERSARIAL)).all():
        values = np.unique(y).tolist() if y.dtype.kind in "iufb" else f"dtype {y.dtype}"
        raise ValueError("y must contain only +1 (clean) and -1 (adversarial); got "
                         f"{values}. Convert 0/1 labels with "
                         "y = np.where(is_adversarial, -1, 1).")
    return y


class _CleanTrainBase(GroupsConsumerMixin, BaseCrossValidator):
    """Validation and the clean/adversarial bookkeeping common to the splitters."""

    def _prepare(self, X, y, groups):
        """Return clean indices, their group codes, adversarial indices and codes.

        Clean samples are indexed by the codes ``0 .. n_clean_groups - 1`` of their
        groups (one code per sample without ``groups``); an adversarial sample gets
        the code of its source group, or -1 when ``groups`` is None or its group
        matches no clean sample.
        """
        n = _num_samples(X)
        y = _check_y(y, n)
        clean = np.flatnonzero(y == CLEAN)
        adv = np.flatnonzero(y == ADVERSARIAL)
        if clean.size == 0:
            raise ValueError("y holds no clean sample (y == +1): the training folds "
                             "would be empty.")
        if adv.size == 0:
            raise ValueError("y holds no adversarial sample (y == -1): the test folds "
                             "could not measure detection.")
        if groups is None:
            return clean, np.arange(clean.size), adv, np.full(adv.size, -1), clean.size
        groups = np.asarray(groups)
        if groups.ndim != 1 or groups.shape[0] != n:
            raise ValueError(f"groups must have shape ({n},) to match X; got "
                             f"{groups.shape}.")
        uniq, clean_codes = np.unique(groups[clean], return_inverse=True)
        adv_groups = groups[adv]
        pos = np.clip(np.searchsorted(uniq, adv_groups), 0, uniq.size - 1)
        adv_codes = np.where(uniq[pos] == adv_groups, pos, -1)
        return clean, clean_codes.ravel(), adv, adv_codes, uniq.size

    def _adversarial_test(self, adv, adv_codes, test_codes_mask, adv_fold):
        """Adversarial test indices of one split.

        ``test_codes_mask[c]`` is True when clean group ``c`` is held out;
        ``adv_fold`` (only used without groups) the adversarial samples assigned
        to this split.
        """
        if self.all_adversarial:
            return adv
        if adv_fold is not None:
            return adv_fold
        # With groups: every adversarial sample whose source is not in training.
        unmatched = adv_codes < 0
        held_out = np.zeros(adv.size, dtype=bool)
        held_out[~unmatched] = test_codes_mask[adv_codes[~unmatched]]
        return adv[unmatched | held_out]

    def _check_params(self):
        if not isinstance(self.all_adversarial, (bool, np.bool_)):
            raise ValueError(f"all_adversarial must be a bool; got {self.all_adversarial!r}.")

    @staticmethod
    def _emit(split_index, clean, clean_codes, test_codes_mask, adv_test):
        is_test = test_codes_mask[clean_codes]
        train = clean[~is_test]
        if train.size == 0:
            raise ValueError(f"Split {split_index} has no clean training sample.")
        if adv_test.size == 0:
            raise ValueError(
                f"Split {split_index} has no adversarial test sample (none of the "
                "adversarial examples comes from its held-out clean images). Use "
                "fewer splits, all_adversarial=True, or more adversarial examples.")
        test = np.sort(np.concatenate([clean[is_test], adv_test]))
        return train, test


# --------------------------------------------------------------------------- #
# K-fold
# --------------------------------------------------------------------------- #
class CleanTrainSplit(_CleanTrainBase):
    """K-fold cross-validation that trains on clean samples only.

    The clean samples (``y == +1``) are split into ``n_splits`` folds as by
    :class:`sklearn.model_selection.KFold` (over their groups when ``groups`` is
    given, keeping clean samples of one group together). Split ``k`` trains on
    the clean samples outside fold ``k`` and tests on the clean samples of fold
    ``k`` plus adversarial samples (``y == -1``):

    * with ``groups`` (the default output of :func:`make_detection_dataset`): every
      adversarial sample whose group is not among the training groups — the
      adversarial examples of the held-out images, plus any whose group matches
      no clean sample (their source is outside the data set, so they cannot leak);
    * without ``groups``: the adversarial samples are partitioned into
      ``n_splits`` folds like the clean ones, and fold ``k`` is tested;
    * with ``all_adversarial=True``: all adversarial samples in every split,
      ignoring ``groups`` for them. Use it when the adversarial examples were
      made from images outside the clean set; otherwise the adversarial examples
      of training images are tested, which is optimistic.

    Every clean sample is tested exactly once across the splits. Training folds
    never hold adversarial samples. Split-time ``ValueError`` if ``y`` is not
    +1/-1 or a split would lack clean training or adversarial test samples.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Shuffle the clean samples (groups) and, without groups, the adversarial
        samples before splitting into folds.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffling when ``shuffle=True``; pass an int for splits
        reproducible across calls of ``split``.
    all_adversarial : bool, default=False
        Put all adversarial samples into every test fold.

    Examples
    --------
    >>> import numpy as np
    >>> X, y, groups = make_detection_dataset(np.zeros((6, 2)), np.ones((6, 2)))
    >>> cv = CleanTrainSplit(n_splits=3)
    >>> for train, test in cv.split(X, y, groups):
    ...     print(train.tolist(), test.tolist())
    [2, 3, 4, 5] [0, 1, 6, 7]
    [0, 1, 4, 5] [2, 3, 8, 9]
    [0, 1, 2, 3] [4, 5, 10, 11]

    With ``cross_validate`` or ``GridSearchCV`` (any scikit-learn outlier
    detector works; the scorers come from :mod:`advdetect.metrics`). Shuffle
    unless the clean samples are in random order:

    >>> from sklearn.neighbors import LocalOutlierFactor
    >>> from sklearn.model_selection import cross_validate
    >>> from advdetect.metrics import DETECTION_SCORERS
    >>> rng = np.random.RandomState(0)
    >>> X, y, groups = make_detection_dataset(rng.normal(size=(30, 2)),
    ...                                       rng.normal(4, 1, size=(30, 2)))
    >>> cv = CleanTrainSplit(n_splits=3, shuffle=True, random_state=0)
    >>> res = cross_validate(LocalOutlierFactor(n_neighbors=5, novelty=True), X, y,
    ...                      groups=groups, cv=cv, scoring=DETECTION_SCORERS)
    >>> sorted(k for k in res if k.startswith("test_"))  # doctest: +NORMALIZE_WHITESPACE
    ['test_detection_rate', 'test_neg_false_positive_rate', 'test_roc_auc',
     'test_tpr_at_1_fpr', 'test_tpr_at_5_fpr']
    >>> bool(res["test_roc_auc"].mean() > 0.9)
    True
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None,
                 all_adversarial=False):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state
        self.all_adversarial = all_adversarial

    def get_n_splits(self, X=None, y=None, groups=None):
        """Return the number of splits, ``n_splits``.

        Parameters
        ----------
        X, y, groups : object
            Ignored; present for API compatibility.

        Returns
        -------
        int
        """
        return self.n_splits

    def split(self, X, y, groups=None):
        """Generate clean-only training and clean + adversarial test indices.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            The data; only its length is used.
        y : array-like of shape (n_samples,)
            +1 clean, -1 adversarial. Required.
        groups : array-like of shape (n_samples,), default=None
            The clean source image of each sample (see
            :func:`make_detection_dataset`).

        Yields
        ------
        train : ndarray of int
            Sorted indices of the clean training samples.
        test : ndarray of int
            Sorted indices of the held-out clean and the adversarial test samples.
        """
        if (not isinstance(self.n_splits, numbers.Integral)
                or isinstance(self.n_splits, (bool, np.bool_)) or self.n_splits < 2):
            raise ValueError(f"n_splits must be an integer >= 2; got {self.n_splits!r}.")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be a bool; got {self.shuffle!r}.")
        if not self.shuffle and self.random_state is not None:
            raise ValueError("random_state has no effect without shuffle=True; "
                             "leave it None or set shuffle=True.")
        self._check_params()
        clean, clean_codes, adv, adv_codes, n_groups = self._prepare(X, y, groups)
        if n_groups < self.n_splits:
            what = "clean groups" if groups is not None else "clean samples"
            raise ValueError(f"n_splits={self.n_splits} exceeds the {n_groups} {what}: "
                             "some split would have no clean test sample.")
        rng = check_random_state(self.random_state) if self.shuffle else None
        kfold = KFold(self.n_splits, shuffle=self.shuffle, random_state=rng)
        group_folds = [test for _, test in kfold.split(np.empty((n_groups, 1)))]

        adv_folds = [None] * self.n_splits
        if groups is None and not self.all_adversarial:
            if adv.size < self.n_splits:
                raise ValueError(f"n_splits={self.n_splits} exceeds the {adv.size} "
                                 "adversarial samples: some split would test none. "
                                 "Use fewer splits or all_adversarial=True.")
            adv_folds = [adv[test] for _, test in kfold.split(np.empty((adv.size, 1)))]

        for k, (test_groups, adv_fold) in enumerate(zip(group_folds, adv_folds)):
            mask = np.zeros(n_groups, dtype=bool)
            mask[test_groups] = True
            adv_test = self._adversarial_test(adv, adv_codes, mask, adv_fold)
            yield self._emit(k, clean, clean_codes, mask, adv_test)


# --------------------------------------------------------------------------- #
# Shuffle split
# --------------------------------------------------------------------------- #
class CleanTrainShuffleSplit(_CleanTrainBase):
    """Random clean-only training / clean + adversarial test splits.

    Like :class:`sklearn.model_selection.ShuffleSplit` on the clean samples (on
    their groups when ``groups`` is given): each split holds out ``test_size``
    of the clean samples (groups) and trains on the rest. The adversarial test
    samples follow the rules of :class:`CleanTrainSplit`; without ``groups`` a
    random share of the adversarial samples equal to the held-out share of clean
    samples (at least one) is tested. Test sets of different splits may overlap.

    Parameters
    ----------
    n_splits : int, default=10
        Number of splits, at least 1.
    test_size : float or int, default=0.2
        Fraction in (0, 1) of the clean samples (groups) to hold out, or their
        number.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffling; pass an int for splits reproducible across calls.
    all_adversarial : bool, default=False
        Put all adversarial samples into every test set.

    Examples
    --------
    >>> import numpy as np
    >>> X, y, groups = make_detection_dataset(np.zeros((10, 2)), np.ones((10, 2)))
    >>> cv = CleanTrainShuffleSplit(n_splits=2, test_size=0.3, random_state=0)
    >>> for train, test in cv.split(X, y, groups):
    ...     print(len(train), len(test), bool((y[train] == 1).all()))
    7 6 True
    7 6 True
    """

    def __init__(self, n_splits=10, *, test_size=0.2, random_state=None,
                 all_adversarial=False):
        self.n_splits = n_splits
        self.test_size = test_size
        self.random_state = random_state
        self.all_adversarial = all_adversarial

    def get_n_splits(self, X=None, y=None, groups=None):
        """Return the number of splits, ``n_splits``.

        Parameters
        ----------
        X, y, groups : object
            Ignored; present for API compatibility.

        Returns
        -------
        int
        """
        return self.n_splits

    def _n_test(self, n):
        ts = self.test_size
        if isinstance(ts, (bool, np.bool_)):
            raise ValueError(f"test_size must be a float in (0, 1) or an int; got {ts!r}.")
        if isinstance(ts, numbers.Integral):
            n_test = int(ts)
            if not 1 <= n_test < n:
                raise ValueError(f"test_size={ts} must lie in [1, {n - 1}] for {n} clean "
                                 "samples (groups), leaving some for training.")
        elif isinstance(ts, numbers.Real) and 0 < ts < 1:
            n_test = int(np.ceil(ts * n))
            if n_test >= n:
                raise ValueError(f"test_size={ts} of {n} clean samples (groups) leaves "
                                 "no clean training sample.")
        else:
            raise ValueError(f"test_size must be a float in (0, 1) or an int; got {ts!r}.")
        return n_test

    def split(self, X, y, groups=None):
        """Generate clean-only training and clean + adversarial test indices.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            The data; only its length is used.
        y : array-like of shape (n_samples,)
            +1 clean, -1 adversarial. Required.
        groups : array-like of shape (n_samples,), default=None
            The clean source image of each sample (see
            :func:`make_detection_dataset`).

        Yields
        ------
        train : ndarray of int
            Sorted indices of the clean training samples.
        test : ndarray of int
            Sorted indices of the held-out clean and the adversarial test samples.
        """
        if (not isinstance(self.n_splits, numbers.Integral)
                or isinstance(self.n_splits, (bool, np.bool_)) or self.n_splits < 1):
            raise ValueError(f"n_splits must be an integer >= 1; got {self.n_splits!r}.")
        self._check_params()
        clean, clean_codes, adv, adv_codes, n_groups = self._prepare(X, y, groups)
        n_test = self._n_test(n_groups)
        n_adv_test = max(1, int(round(adv.size * n_test / n_groups)))
        rng = check_random_state(self.random_state)
        for k in range(self.n_splits):
            mask = np.zeros(n_groups, dtype=bool)
            mask[rng.permutation(n_groups)[:n_test]] = True
            adv_fold = None
            if groups is None and not self.all_adversarial:
                adv_fold = adv[rng.permutation(adv.size)[:n_adv_test]]
            adv_test = self._adversarial_test(adv, adv_codes, mask, adv_fold)
            yield self._emit(k, clean, clean_codes, mask, adv_test)
