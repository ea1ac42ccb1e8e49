"""Every estimator's declared parameter constraints (``_parameter_constraints``).

For each estimator and each parameter with a constraint: a value of no valid
type, and a value just outside each interval or option set, make ``fit`` raise
scikit-learn's ``InvalidParameterError`` naming the parameter and the value,
before any data is read; the closed ends of every interval, every option and
numpy scalars pass the validation ``fit`` runs (the constraints, then
``_check_params``), and the open ends do not.
"""

import math
import numbers
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import (Interval, InvalidParameterError, Options,
                                             generate_invalid_param_val, make_constraint)

from advdetect import (BinaryClassifierDetector, CMAGDetector, DAFARDetector, DefenseGANDetector,
                       FeatureSqueezingDetector, MagNetDetector, MahalanobisDetector,
                       MaxSoftmaxDetector)
from advdetect.base import BaseDetector
from advdetect.defence import DetectAndPurify
from advdetect.models import SmallCNN

from .conftest import invalid_parameter

_FAST = dict(device="cpu", random_state=0)
ESTIMATORS = [
    CMAGDetector(SmallCNN(), **_FAST),
    DAFARDetector(SmallCNN(), **_FAST),
    MagNetDetector(**_FAST),
    FeatureSqueezingDetector(SmallCNN(), **_FAST),
    MahalanobisDetector(SmallCNN(), **_FAST),
    BinaryClassifierDetector(**_FAST),
    DefenseGANDetector(**_FAST),
    MaxSoftmaxDetector(SmallCNN(), **_FAST),
    DetectAndPurify(SmallCNN(), DAFARDetector(SmallCNN(), **_FAST)),
]
X = np.zeros((4, 1, 8, 8), dtype=np.float32)


class _BadType:
    """No constraint accepts an instance of this."""

    def __repr__(self):
        return "_BadType()"


def _constrained(ends_only=False):
    """(estimator, parameter) of every constraint; ``ends_only``: of intervals and option sets."""
    return [pytest.param(est, name, id=f"{type(est).__name__}-{name}")
            for est in ESTIMATORS for name, constraints in est._parameter_constraints.items()
            if constraints != "no_validation" and (not ends_only or any(
                isinstance(c, (Interval, Options)) for c in constraints))]


def _passes_validation(est, name, value):
    """Whether ``name=value`` passes what fit checks before reading data."""
    est = clone(est).set_params(**{name: value})
    try:
        est._validate_params()
        if hasattr(est, "_check_params"):
            est._check_params()
    except InvalidParameterError:
        return False
    return True


def test_every_estimator_is_here():
    import advdetect

    names = {n for n in advdetect.__all__ if n.endswith("Detector")} | {"DetectAndPurify"}
    assert {type(est).__name__ for est in ESTIMATORS} == names


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda est: type(est).__name__)
def test_constraints_name_exactly_the_constructor_parameters(est):
    assert set(est._parameter_constraints) == set(est.get_params(deep=False))


def test_shared_constraints_are_the_base_entries_by_name():
    shared = BaseDetector._shared_constraints("classifier", "lr")
    assert shared == {k: BaseDetector._parameter_constraints[k] for k in ("classifier", "lr")}
    with pytest.raises(KeyError):
        BaseDetector._shared_constraints("z")


# A shared parameter whose constraint a detector declares otherwise, and why.
OWN = {("MahalanobisDetector", "feature_layer"): "a list of layers too"}


@pytest.mark.parametrize("est", [e for e in ESTIMATORS if isinstance(e, BaseDetector)],
                         ids=lambda est: type(est).__name__)
def test_shared_parameters_are_declared_once_in_the_base(est):
    shared = BaseDetector._parameter_constraints
    for name, constraints in est._parameter_constraints.items():
        if name in shared and (type(est).__name__, name) not in OWN:
            assert constraints is shared[name], name


@pytest.mark.parametrize("est, name", _constrained())
def test_invalid_value_raises_at_fit_naming_the_parameter(est, name):
    bad_values = [_BadType()]
    for constraint in map(make_constraint, est._parameter_constraints[name]):
        try:
            bad_values.append(generate_invalid_param_val(constraint))
        except NotImplementedError:
            pass
    for bad in bad_values:
        det = clone(est).set_params(**{name: bad})
        with pytest.raises(InvalidParameterError, match=invalid_parameter(name, bad)):
            det.fit(X)


def _boundaries(constraint):
    """(value, accepted) pairs at the ends of an interval, the options of a set."""
    if isinstance(constraint, Interval):
        integral = constraint.type is numbers.Integral
        cast = np.int64 if integral else np.float32
        for end, closed in ((constraint.left, ("left", "both")),
                            (constraint.right, ("right", "both"))):
            if end is not None:
                yield end, constraint.closed in closed
                yield cast(end), constraint.closed in closed  # numpy scalars are numbers
            elif not integral:
                inf = -math.inf if end is constraint.left else math.inf
                yield inf, constraint.closed in closed
    elif isinstance(constraint, Options):
        yield from ((option, True) for option in constraint.options)


@pytest.mark.parametrize("est, name", _constrained(ends_only=True))
def test_boundaries_are_accepted_when_closed_and_refused_when_open(est, name):
    for constraint in map(make_constraint, est._parameter_constraints[name]):
        for value, accepted in _boundaries(constraint):
            assert _passes_validation(est, name, value) == accepted, (name, value)
            if not accepted:
                with pytest.raises(InvalidParameterError, match=invalid_parameter(name, value)):
                    clone(est).set_params(**{name: value}).fit(X)


_INF, _NAN = math.inf, math.nan
# What the hand-written checks accepted and refused before the constraints: the
# declared sets are the same (inf passes where the check was "> 0" or ">= 0").
SETS = [
    # est, name, accepted, refused
    (CMAGDetector, "max_epochs", [1, np.int64(3)], [0, 1.5, "1", None]),
    (CMAGDetector, "batch_size", [1, np.int32(8)], [0, -1, 2.0]),
    (CMAGDetector, "lr", [1e-9, 1, _INF, np.float32(0.1)], [0, -1.0, _NAN, "0.1"]),
    (CMAGDetector, "validation_fraction", [0, 0.0, 0.999], [1, 1.0, -0.1, _NAN]),
    (CMAGDetector, "temperature", [1e-9, 1, _INF], [0, -1.0, _NAN]),
    (CMAGDetector, "mu_gr", [0, 0.5, 1], [-0.01, 1.01, _NAN]),
    (CMAGDetector, "threshold_quantile", [0, 0.49], [0.5, -0.01]),
    (CMAGDetector, "width", [1, np.int64(4)], [0, 4.0]),
    (DAFARDetector, "z", [-5, 0, 3.0, np.float64(2)], [_NAN, _INF, -_INF, "3"]),
    (DAFARDetector, "confidence_quantile", [0.01, 0.49], [0, 0.5]),
    (DAFARDetector, "anomaly_max_epochs", [1], [0]),
    (DAFARDetector, "anomaly_hidden", [None, (8, 4), [8, np.int64(4)]],
     [(8,), (8, 0), (8, 4.0), "84", 8]),
    (DAFARDetector, "use_anomaly_detector", [True, np.False_], ["yes", 1, None]),
    (MagNetDetector, "drop_rate", [0, 0.999], [1, -0.1]),
    (MagNetDetector, "noise_std", [0, 0.1, _INF], [-1e-9, _NAN]),
    (MagNetDetector, "activity_l2", [0, _INF], [-1.0, _NAN]),
    (MagNetDetector, "detectors", ["I", ("I", "II"), ["II"]], ["III", (), ("I", "I"), 1]),
    (FeatureSqueezingDetector, "fpr", [0, 0.5], [1, -0.1, "0.05"]),
    (FeatureSqueezingDetector, "squeezers", ["cifar10", [("median", 2)], (("bit_depth", 4),)],
     ["cifar100", [], [("median", 2), ("median", 2)], [("blur", 2)]]),
    (MahalanobisDetector, "noise_magnitude", [0, 0.01], [-0.1, _INF, _NAN]),
    (MahalanobisDetector, "feature_layer", [None, "blocks", ["a", "b"], ("a",)],
     [["a", "a"], [], ["a", 1], 3]),
    (BinaryClassifierDetector, "fpr", [None, 0, 0.5], [1, -0.1]),
    (BinaryClassifierDetector, "hidden", [1], [0]),
    (DefenseGANDetector, "n_steps", [0, np.int64(5)], [-1, True, 1.0]),
    (DefenseGANDetector, "n_restarts", [1], [0, True, False]),
    (DefenseGANDetector, "search_lr", [0, _INF], [-1.0, _NAN]),
    (DefenseGANDetector, "gradient_penalty", [0, _INF], [-1.0]),
    (DefenseGANDetector, "search_momentum", [0, 0.9], [1, -0.1]),
    (DetectAndPurify, "purify", [True, np.False_], ["yes", 1, None]),
    (DetectAndPurify, "reject_label", [-1, np.int64(10), "rejected", 0.5], [None, (1,)]),
]


@pytest.mark.parametrize("cls, name, accepted, refused", SETS,
                         ids=[f"{c.__name__}-{n}" for c, n, _, _ in SETS])
def test_accepted_sets_are_those_of_the_former_checks(cls, name, accepted, refused):
    est = next(e for e in ESTIMATORS if type(e) is cls)
    for value in accepted:
        assert _passes_validation(est, name, value), value
    for value in refused:
        assert not _passes_validation(est, name, value), value


@pytest.mark.parametrize("cls", [CMAGDetector, DAFARDetector])
def test_confidence_test_accepts_exactly_booleans_and_its_two_strings(cls):
    est = cls(SmallCNN(), **_FAST)
    for value in (True, False, np.True_, np.False_, "lower", "two-sided"):
        assert _passes_validation(est, "confidence_test", value), value
    for value in (1, 0, "both", "upper", None):
        assert not _passes_validation(est, "confidence_test", value), value


def test_defensegan_counts_refuse_bools():
    est = DefenseGANDetector(**_FAST)
    for name in ("n_restarts", "n_steps", "latent_dim", "width", "critic_iters"):
        assert _passes_validation(est, name, np.int64(1))
        assert not _passes_validation(est, name, True)


@pytest.mark.parametrize("value, accepted", [
    (None, True), ((0.0, 1.0), True), ([-1, 1], True), (np.array([0, 255]), True),
    ((1.0, 0.0), False), ((0.0, math.inf), False), ((0.0, 1.0, 2.0), False), (("a", "b"), False),
])
def test_input_range_contents(value, accepted):
    assert _passes_validation(MagNetDetector(**_FAST), "input_range", value) == accepted


@pytest.mark.parametrize("value, accepted", [
    (None, True), ("flat", True), (64, True), ((1, 8, 8), True), ([8, 8], True),
    (0, False), ("other", False), (8.0, False),
])
def test_input_shape_types(value, accepted):
    assert _passes_validation(MagNetDetector(**_FAST), "input_shape", value) == accepted


@pytest.mark.filterwarnings("ignore:.*is learned from:UserWarning")
def test_recalibrate_validates_the_parameters(digits_small):
    X_digits, _ = digits_small
    det = CMAGDetector(SmallCNN(), max_epochs=1, **_FAST).fit(X_digits[:40])
    det.set_params(stage="x")
    with pytest.raises(InvalidParameterError, match=invalid_parameter("stage", "x")):
        det.recalibrate()


def test_detect_and_purify_validates_the_detector_it_fits():
    # fit validates nested parameters (prefer_skip_nested_validation=False): the
    # clone of the detector it fits is checked too.
    defence = DetectAndPurify(SmallCNN(), DAFARDetector(SmallCNN(), max_epochs=0, **_FAST))
    with pytest.raises(InvalidParameterError, match=invalid_parameter("max_epochs", 0)):
        defence.fit(X)


def test_fit_warnings_point_at_the_caller():
    """The _fit_context wrapper around fit is skipped like advdetect's own frames."""
    images = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    det = FeatureSqueezingDetector(SmallCNN(), fpr=0.01, device="cpu")
    if not torch.cuda.is_available():
        det.set_params(device="cuda")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        det.fit(images)
    messages = [str(w.message) for w in record]
    assert any("learned from 20 clean image" in m for m in messages), messages
    assert torch.cuda.is_available() or any("CUDA is not available" in m for m in messages)
    assert {w.filename for w in record} == {__file__}
