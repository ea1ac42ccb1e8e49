"""scikit-learn's common estimator checks on every detector.

A model-aware detector needs a classifier; scikit-learn's checks feed 2-D
tabular data with 1 to 10 features. The classifier below takes any width (an
adaptive average pool to 8 values, then two linear layers), and the detectors
treat each row as a vector (``input_shape="flat"``) with no [0, 1] range
(``input_range=None``), so every check applies as it would to IsolationForest.
"""

import copy

import joblib
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks
from torch import nn

from advdetect import (BinaryClassifierDetector, CMAGDetector, DAFARDetector, DefenseGANDetector,
                       FeatureSqueezingDetector, MagNetDetector, MahalanobisDetector,
                       MaxSoftmaxDetector)
from advdetect.defence import DetectAndPurify


def _rebuild_any_width_mlp(n_classes, state, requires_grad, training):
    net = AnyWidthMLP(n_classes)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    for name, p in net.named_parameters():
        p.requires_grad_(requires_grad[name])
    for name, m in net.named_modules():
        m.training = training[name]
    return net


class AnyWidthMLP(nn.Module):
    """A classifier for rows of any number of features, pickled by content.

    torch pickles a tensor with its storage's memory address, so
    ``joblib.hash`` of a module differs from that of its deep copy and
    ``check_estimators_overwrite_params`` (which compares the hash of every
    parameter before and after ``fit``) could never pass. Pickling this module
    as its weights (numpy arrays, which joblib hashes by value), the
    ``requires_grad`` flags and the train/eval flags makes that check compare
    what a detector could mutate; ``test_classifier_hash_sees_mutation`` shows
    it would fail if fit changed any of them.
    """

    def __init__(self, n_classes=2):
        super().__init__()
        self.n_classes = n_classes
        self.pool = nn.AdaptiveAvgPool1d(8)
        self.fc1 = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.pool(x.unsqueeze(1)).flatten(1))))

    def __reduce__(self):
        state = {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}
        requires_grad = {n: p.requires_grad for n, p in self.named_parameters()}
        training = {n: m.training for n, m in self.named_modules()}
        return _rebuild_any_width_mlp, (self.n_classes, state, requires_grad, training)


def _contributors_example():
    """The ``EnergyDetector`` of docs/contributing.rst, defined by running the page's snippet
    up to its use: the page says such a detector passes every common check."""
    import pathlib

    from .test_user_guide import snippets

    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "contributing.rst"
    (code,) = [c for c in snippets(page) if "class EnergyDetector" in c]
    import sys
    import types

    # A module of its own, so that the class pickles (check_estimators_pickle).
    module = types.ModuleType("tests._contributors_example")
    sys.modules[module.__name__] = module
    exec(compile(code.split("\ndet = EnergyDetector(")[0], str(page), "exec"), module.__dict__)
    return module.EnergyDetector


def _tabular(det_cls, **params):
    torch.manual_seed(0)
    base = dict(input_shape="flat", input_range=None, batch_size=32, device="cpu",
                random_state=0)
    if "max_epochs" in det_cls._get_param_names():  # only for detectors that train
        base["max_epochs"] = 2
    base.update(params)
    if "classifier" not in det_cls._get_param_names():  # model-agnostic: MagNet, Defense-GAN
        return det_cls(**base)
    return det_cls(AnyWidthMLP(), **base)


DETECTORS = [
    _tabular(CMAGDetector, width=4),
    # z=2 (the paper's CIFAR-10 setting) rather than 3: check_outliers_train and
    # check_outliers_fit_predict require some of 300 training points to be
    # flagged, and mean + 3 sigma flags about 0.13 % of a normal sample (none
    # of these 300 with z=3).
    _tabular(DAFARDetector, anomaly_max_epochs=2, z=2.0),
    _tabular(MagNetDetector),
    _tabular(FeatureSqueezingDetector),
    # fpr=0.05: check_outliers_fit_predict requires some of the 300 training points
    # flagged; at 0.01 the threshold (the lowest of 60 held-out scores) flags none.
    _tabular(MahalanobisDetector, feature_layer="fc1", fpr=0.05),
    _tabular(BinaryClassifierDetector),
    # fpr=0.05: as for DAFAR, some of the 300 training points must be flagged.
    _tabular(DefenseGANDetector, width=4, latent_dim=4, n_restarts=2, n_steps=5, fpr=0.05),
    _tabular(MaxSoftmaxDetector),
    # The contributors' page's example detector: what it promises must hold.
    _tabular(_contributors_example()),
]

# Every check passes; a check that must be declared failing goes here with a
# one-line reason (and strict xfail below makes an unexpected pass an error).
EXPECTED = {}

# BinaryClassifierDetector is supervised: fit needs y holding +1 (clean) and -1
# (adversarial), and refuses fit(X) and class labels with a ValueError naming
# make_detection_dataset (check_requires_y_none passes). Every check that fits it
# without such a y fails for that reason alone; test_binary_conventions below runs
# the same checks on the same code with a y supplied, so they are not left unchecked.
_SUPERVISED = ("supervised: fit needs y with +1 clean and -1 adversarial rows; the check fits "
               "without y or with class labels")
EXPECTED["BinaryClassifierDetector"] = {name: _SUPERVISED for name in (
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_outliers_fit_predict", "check_outliers_train",
    "check_classifier_data_not_an_array", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1feature",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d")}


def _expected_failed_checks(estimator):
    return EXPECTED.get(type(estimator).__name__, {})


@parametrize_with_checks(DETECTORS, expected_failed_checks=_expected_failed_checks,
                         xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# parametrize_with_checks leaves check_param_validation out (scikit-learn runs it on its
# own estimators only): it runs here on every detector and on DetectAndPurify. It asserts
# that _parameter_constraints names exactly the constructor's parameters and that fit
# (fit_predict, fit_transform) raises InvalidParameterError naming each parameter.
@pytest.mark.parametrize(
    "estimator", DETECTORS + [DetectAndPurify(AnyWidthMLP(), _tabular(DAFARDetector))],
    ids=lambda est: type(est).__name__)
def test_check_param_validation(estimator):
    check_param_validation(type(estimator).__name__, estimator)


def test_every_detector_is_checked():
    import advdetect

    detectors = {name for name in advdetect.__all__ if name.endswith("Detector")}
    ours = {type(d).__name__ for d in DETECTORS if type(d).__module__.startswith("advdetect.")}
    assert ours == detectors


def test_classifier_hash_sees_mutation():
    """The content pickle is faithful, and joblib.hash changes with any mutation."""
    net = AnyWidthMLP()
    x = torch.randn(4, 5)
    twin = copy.deepcopy(net)
    assert joblib.hash(twin) == joblib.hash(net)
    torch.testing.assert_close(twin(x), net(x))
    for mutate in (lambda m: m.fc1.weight.data.add_(1e-3),
                   lambda m: m.fc2.bias.requires_grad_(False),
                   lambda m: m.eval()):
        other = copy.deepcopy(net)
        mutate(other)
        assert joblib.hash(other) != joblib.hash(net)
    frozen = copy.deepcopy(net.eval().requires_grad_(False))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    np.testing.assert_array_equal(frozen.fc2.weight.numpy(), net.fc2.weight.numpy())


class _BinaryWithStandInAttack(BinaryClassifierDetector):
    """Test adapter: ``fit(X)`` trains on X as clean and X + 1 as a stand-in attack.

    The common checks fit outlier detectors without labels; this supplies the
    (+1, -1) labels the supervised detector needs and otherwise runs its own code,
    so every check applies to BinaryClassifierDetector's validation, fitting,
    scoring and pickling. Invalid X goes to the detector as it is, to get its
    own input errors.
    """

    def fit(self, X, y=None):
        try:
            arr = np.asarray(X)
            arr = arr.astype(np.float64) if arr.dtype.kind == "O" else arr
            valid = arr.dtype.kind in "iuf" and arr.ndim == 2 and arr.size > 0 \
                and bool(np.isfinite(arr).all())
        except (TypeError, ValueError):
            valid = False
        if not valid or y is not None and np.any(np.asarray(y) == -1):
            return super().fit(X, y)
        n = len(arr)
        return super().fit(np.r_[arr, arr + 1.0], np.r_[np.ones(n), -np.ones(n)])


@parametrize_with_checks([_tabular(_BinaryWithStandInAttack, fpr=0.05)], xfail_strict=True)
def test_binary_conventions(estimator, check):
    check(estimator)
