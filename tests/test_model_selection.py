"""Clean-train cross-validation: fold invariants, group leakage, errors, GridSearchCV."""

import warnings

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import GridSearchCV, cross_validate

from advdetect.metrics import DETECTION_SCORERS
from advdetect.model_selection import (
    CleanTrainShuffleSplit,
    CleanTrainSplit,
    make_detection_dataset,
)


def _dataset(n_clean=20, source_index=None, shape=(1, 3, 3), seed=0):
    """Random images; adversarial example j made from clean image source_index[j]."""
    rng = np.random.RandomState(seed)
    n_adv = n_clean if source_index is None else len(source_index)
    X_clean = rng.uniform(size=(n_clean, *shape)).astype(np.float32)
    X_adv = rng.uniform(size=(n_adv, *shape)).astype(np.float32)
    return make_detection_dataset(X_clean, X_adv, source_index)


def _check_fold_invariants(cv, X, y, groups):
    """Assert the invariants every clean-train split must satisfy; return the splits."""
    splits = list(cv.split(X, y, groups))
    assert len(splits) == cv.get_n_splits(X, y, groups)
    for train, test in splits:
        assert train.size and test.size
        assert np.all(y[train] == 1), "training fold holds adversarial samples"
        assert set(y[test]) == {1, -1}, "test fold lacks a class"
        assert not set(train) & set(test)
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        if groups is not None and not getattr(cv, "all_adversarial", False):
            adv_test = test[y[test] == -1]
            assert not set(groups[adv_test]) & set(groups[train]), "group leakage"
    return splits


# --------------------------------------------------------------------------- #
# make_detection_dataset
# --------------------------------------------------------------------------- #
def test_make_detection_dataset_paired():
    X_clean = np.zeros((4, 1, 2, 2), np.float32)
    X_adv = np.ones((4, 1, 2, 2), np.float32)
    X, y, groups = make_detection_dataset(X_clean, X_adv)
    assert X.shape == (8, 1, 2, 2) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:4], X_clean)
    np.testing.assert_array_equal(X[4:], X_adv)
    assert y.tolist() == [1] * 4 + [-1] * 4
    assert groups.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("shape", [(2, 2), (5,)])
def test_make_detection_dataset_source_index_and_mask(shape):
    X_clean = np.zeros((5, *shape))
    X_adv = np.ones((2, *shape))
    _, y, groups = make_detection_dataset(X_clean, X_adv, source_index=[4, 1])
    assert groups.tolist() == [0, 1, 2, 3, 4, 4, 1]
    assert y.tolist() == [1] * 5 + [-1] * 2
    mask = np.array([False, True, False, False, True])
    _, _, groups = make_detection_dataset(X_clean, X_adv, source_index=mask)
    assert groups.tolist() == [0, 1, 2, 3, 4, 1, 4]


def test_make_detection_dataset_errors():
    X4, X3 = np.zeros((4, 2, 2)), np.zeros((3, 2, 2))
    with pytest.raises(ValueError, match="source_index"):
        make_detection_dataset(X4, X3)
    with pytest.raises(ValueError, match="per-sample shape"):
        make_detection_dataset(X4, np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="empty"):
        make_detection_dataset(X4, np.zeros((0, 2, 2)))
    with pytest.raises(ValueError, match="at least"):
        make_detection_dataset(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        make_detection_dataset(X4, X3, source_index=[0, 1, 4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        make_detection_dataset(X4, X3, source_index=[0, -1, 2])
    with pytest.raises(ValueError, match="3 samples"):
        make_detection_dataset(X4, X3, source_index=[0, 1])
    with pytest.raises(ValueError, match="True"):
        make_detection_dataset(X4, X3, source_index=[True, False, False, True])
    with pytest.raises(ValueError, match="integer"):
        make_detection_dataset(X4, X3, source_index=[0.5, 1, 2])


# --------------------------------------------------------------------------- #
# CleanTrainSplit
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shuffle,random_state", [(False, None), (True, 0)])
@pytest.mark.parametrize("use_groups", [True, False])
def test_kfold_invariants(shuffle, random_state, use_groups):
    X, y, groups = _dataset(n_clean=23)
    g = groups if use_groups else None
    cv = CleanTrainSplit(n_splits=4, shuffle=shuffle, random_state=random_state)
    splits = _check_fold_invariants(cv, X, y, g)
    clean_tested = np.concatenate([test[y[test] == 1] for _, test in splits])
    adv_tested = np.concatenate([test[y[test] == -1] for _, test in splits])
    # Every clean sample is tested exactly once, and trained on in the other folds.
    assert sorted(clean_tested) == list(np.flatnonzero(y == 1))
    train_counts = np.bincount(np.concatenate([tr for tr, _ in splits]), minlength=y.size)
    assert np.all(train_counts[y == 1] == 3) and np.all(train_counts[y == -1] == 0)
    # Paired adversarial samples are partitioned too: each is tested exactly once.
    assert sorted(adv_tested) == list(np.flatnonzero(y == -1))
    sizes = [int(np.sum(y[test] == 1)) for _, test in splits]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_groups_put_adversarial_examples_with_their_source():
    # Adversarial examples of only some clean images, several per image.
    rng = np.random.RandomState(3)
    source = rng.choice(30, size=45)
    X, y, groups = _dataset(n_clean=30, source_index=source)
    cv = CleanTrainSplit(n_splits=5, shuffle=True, random_state=1)
    for train, test in _check_fold_invariants(cv, X, y, groups):
        held_out = set(groups[test[y[test] == 1]])
        adv_expected = {i for i in np.flatnonzero(y == -1) if groups[i] in held_out}
        assert set(test[y[test] == -1]) == adv_expected


def test_kfold_without_groups_can_leak_and_groups_prevent_it():
    # Shuffled pairing without groups mixes sources; groups are what prevent leakage.
    X, y, groups = _dataset(n_clean=20)
    cv = CleanTrainSplit(n_splits=4, shuffle=True, random_state=0)
    leaks = 0
    for train, test in cv.split(X, y):
        leaks += len(set(groups[test[y[test] == -1]]) & set(groups[train]))
    assert leaks > 0
    for train, test in cv.split(X, y, groups):
        assert not set(groups[test[y[test] == -1]]) & set(groups[train])


def test_kfold_unmatched_adversarial_groups_are_tested_in_every_fold():
    X, y, groups = _dataset(n_clean=10)
    groups = groups.copy()
    groups[-3:] = [100, 101, 102]          # made from images outside the clean set
    splits = _check_fold_invariants(CleanTrainSplit(n_splits=5), X, y, groups)
    for _, test in splits:
        assert {17, 18, 19} <= set(test)
    counts = np.bincount(np.concatenate([te for _, te in splits]), minlength=y.size)
    assert np.all(counts[10:17] == 1)


def test_kfold_clean_samples_sharing_a_group_stay_together():
    X = np.zeros((18, 2))
    y = np.r_[np.ones(12, int), -np.ones(6, int)]
    groups = np.r_[np.repeat(np.arange(6), 2), [5, 4, 3, 2, 1, 0]]
    cv = CleanTrainSplit(n_splits=3, shuffle=True, random_state=0)
    for train, test in _check_fold_invariants(cv, X, y, groups):
        assert not set(groups[train]) & set(groups[test])


def test_kfold_all_adversarial():
    X, y, groups = _dataset(n_clean=12)
    adv = set(np.flatnonzero(y == -1))
    for g in (groups, None):
        cv = CleanTrainSplit(n_splits=3, all_adversarial=True)
        for train, test in _check_fold_invariants(cv, X, y, g):
            assert adv <= set(test)
            assert len(set(test) - adv) == 4


def test_kfold_deterministic_with_random_state():
    X, y, groups = _dataset(n_clean=30)

    def folds(cv, g=groups):
        return [(tr.tolist(), te.tolist()) for tr, te in cv.split(X, y, g)]

    a = CleanTrainSplit(n_splits=3, shuffle=True, random_state=42)
    assert folds(a) == folds(a) == folds(CleanTrainSplit(3, shuffle=True, random_state=42))
    assert folds(a, None) == folds(a, None)
    assert folds(a) != folds(CleanTrainSplit(3, shuffle=True, random_state=7))
    assert folds(a) != folds(CleanTrainSplit(3))
    assert folds(CleanTrainSplit(3)) == folds(CleanTrainSplit(3))


def test_kfold_errors():
    X, y, groups = _dataset(n_clean=6)
    with pytest.raises(ValueError, match="need y"):
        next(CleanTrainSplit(3).split(X, None))
    with pytest.raises(ValueError, match=r"\+1 \(clean\)"):
        next(CleanTrainSplit(3).split(X, (y == -1).astype(int)))
    with pytest.raises(ValueError, match=r"y must have shape \(12,\)"):
        next(CleanTrainSplit(3).split(X, y[:-1]))
    with pytest.raises(ValueError, match=r"groups must have shape \(12,\)"):
        next(CleanTrainSplit(3).split(X, y, groups[:-1]))
    with pytest.raises(ValueError, match="exceeds the 6 clean"):
        next(CleanTrainSplit(7).split(X, y, groups))
    with pytest.raises(ValueError, match="n_splits"):
        next(CleanTrainSplit(1).split(X, y, groups))
    with pytest.raises(ValueError, match="random_state"):
        next(CleanTrainSplit(3, random_state=0).split(X, y, groups))
    with pytest.raises(ValueError, match="no adversarial"):
        next(CleanTrainSplit(3).split(X[:6], y[:6]))
    with pytest.raises(ValueError, match="no clean"):
        next(CleanTrainSplit(3).split(X[6:], y[6:]))
    with pytest.raises(ValueError, match="all_adversarial"):
        next(CleanTrainSplit(3, all_adversarial="yes").split(X, y))


def test_kfold_fold_without_adversarial_is_an_error():
    # One adversarial example, from clean image 0: four of five folds would test none.
    X, y, groups = _dataset(n_clean=10, source_index=[0])
    with pytest.raises(ValueError, match="no adversarial test sample"):
        list(CleanTrainSplit(5).split(X, y, groups))
    with pytest.raises(ValueError, match="exceeds the 1 adversarial"):
        list(CleanTrainSplit(5).split(X, y))
    # ... unless every fold tests every adversarial sample.
    _check_fold_invariants(CleanTrainSplit(5, all_adversarial=True), X, y, groups)


def test_kfold_params_and_repr():
    cv = CleanTrainSplit(4, shuffle=True, random_state=3)
    assert cv.get_n_splits() == 4
    assert " ".join(repr(cv).split()) == ("CleanTrainSplit(all_adversarial=False, "
                                          "n_splits=4, random_state=3, shuffle=True)")


# --------------------------------------------------------------------------- #
# CleanTrainShuffleSplit
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("use_groups", [True, False])
@pytest.mark.parametrize("test_size", [0.25, 5])
def test_shuffle_split_invariants(use_groups, test_size):
    X, y, groups = _dataset(n_clean=20)
    cv = CleanTrainShuffleSplit(n_splits=4, test_size=test_size, random_state=0)
    splits = _check_fold_invariants(cv, X, y, groups if use_groups else None)
    for train, test in splits:
        assert len(train) == 15 and np.sum(y[test] == 1) == 5
        assert np.sum(y[test] == -1) == 5
    assert len({tuple(te) for _, te in splits}) > 1


def test_shuffle_split_deterministic_and_errors():
    X, y, groups = _dataset(n_clean=10)

    def folds(cv):
        return [(tr.tolist(), te.tolist()) for tr, te in cv.split(X, y, groups)]

    cv = CleanTrainShuffleSplit(3, test_size=0.3, random_state=5)
    assert folds(cv) == folds(CleanTrainShuffleSplit(3, test_size=0.3, random_state=5))
    assert folds(cv) != folds(CleanTrainShuffleSplit(3, test_size=0.3, random_state=6))
    for bad in (0.0, 1.0, 10, 0, "0.2", True):
        with pytest.raises(ValueError, match="test_size"):
            next(CleanTrainShuffleSplit(2, test_size=bad).split(X, y, groups))
    with pytest.raises(ValueError, match=r"\+1 \(clean\)"):
        next(CleanTrainShuffleSplit(2).split(X, y * 2))


# --------------------------------------------------------------------------- #
# Integration with scikit-learn's model selection
# --------------------------------------------------------------------------- #
def _blobs(seed=0):
    """Clean: two 2-D clusters; adversarial: points in the gap between them."""
    rng = np.random.RandomState(seed)
    X_clean = np.r_[rng.normal(-3, 0.6, size=(40, 2)), rng.normal(3, 0.6, size=(40, 2))]
    X_adv = rng.normal(0, 0.6, size=(40, 2))
    return make_detection_dataset(X_clean, X_adv, source_index=rng.choice(80, 40, False))


def test_grid_search_with_isolation_forest_and_detection_scorers():
    X, y, groups = _blobs()
    grid = {"max_samples": [16, 48], "n_estimators": [10, 30]}
    search = GridSearchCV(IsolationForest(random_state=0), grid,
                          scoring=DETECTION_SCORERS, refit="roc_auc",
                          cv=CleanTrainSplit(n_splits=3, shuffle=True, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no NaN scores, no failed fits
        search.fit(X, y, groups=groups)
    res = search.cv_results_
    assert search.best_params_ in res["params"]
    assert search.best_index_ == int(np.argmax(res["mean_test_roc_auc"]))
    for name in DETECTION_SCORERS:
        for key in (f"mean_test_{name}", f"rank_test_{name}", f"split2_test_{name}"):
            assert key in res
        assert np.all(np.isfinite(res[f"mean_test_{name}"]))
    assert np.all(res["mean_test_neg_false_positive_rate"] <= 0)
    assert search.best_score_ > 0.8


def test_cross_validate_with_clean_train_split():
    X, y, groups = _blobs(seed=1)
    res = cross_validate(IsolationForest(n_estimators=20, random_state=0), X, y,
                         groups=groups, scoring=DETECTION_SCORERS,
                         cv=CleanTrainShuffleSplit(n_splits=2, test_size=0.25,
                                                   random_state=0))
    assert res["test_roc_auc"].shape == (2,)
    assert np.all((res["test_tpr_at_5_fpr"] >= 0) & (res["test_tpr_at_5_fpr"] <= 1))
