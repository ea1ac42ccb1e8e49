"""A detector keeps to itself (issue 14): it survives a process boundary, leaves the
caller's random generators, arrays and classifier module alone, and says when its
clean data cannot support the threshold asked for."""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advdetect import CMAGDetector, DAFARDetector, FeatureSqueezingDetector, MagNetDetector
from advdetect.defence import DetectAndPurify
from advdetect.models import SmallCNN

from .conftest import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(device="cpu", random_state=0)

DETECTORS = {
    "cmag": (CMAGDetector, dict(max_epochs=1, width=4)),
    "dafar": (DAFARDetector, dict(max_epochs=1, anomaly_max_epochs=1)),
    "magnet": (MagNetDetector, dict(max_epochs=1)),
    "squeeze": (FeatureSqueezingDetector, dict()),
}
# The sample-size warning of item 6 is not what the other tests look at.
SMALL_DATA = ".*needs at least"


def _images(n=40, seed=0):
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def _make(name, classifier, **params):
    cls, defaults = DETECTORS[name]
    return build(cls, classifier, **{**defaults, **FAST, **params})


def _run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# --------------------------------------------------------------------------- #
# 0. A pickled detector scores alike in a new process, however many hooks it registers
# --------------------------------------------------------------------------- #
_LOAD_AND_SCORE = """
    import pickle, sys
    import numpy as np
    from torch.utils.hooks import RemovableHandle
    with open(sys.argv[1], "rb") as f:
        out, X = pickle.load(f)
    for det, expected, first_id, last_id in out:
        # The fit drew hook numbers first_id .. last_id - 1 from the fitting process's
        # counter; a hook pickled with the detector keeps its number. Bring this
        # process's counter to first_id, as the registrations of a longer-running
        # process would, then score batch after batch until the counter has passed
        # every one of those numbers: a registration that draws the number of a
        # pickled hook on the same layer replaces it.
        RemovableHandle.next_id = max(RemovableHandle.next_id, first_id)
        calls = 0
        while calls < 3 or RemovableHandle.next_id <= last_id:
            np.testing.assert_array_equal(det.decision_function(X), expected)
            calls += 1
        print(type(det).__name__, calls)
"""


def test_pickled_detectors_score_alike_in_a_new_process_after_many_batches(tmp_path):
    from torch.utils.hooks import RemovableHandle

    X = _images(16)
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SMALL_DATA)
        for name in sorted(DETECTORS):
            det = _make(name, SmallCNN(), batch_size=8)
            first_id = RemovableHandle.next_id
            det.fit(X)
            out.append((det, det.decision_function(X), first_id, RemovableHandle.next_id))
    path = tmp_path / "detectors.pkl"
    path.write_bytes(pickle.dumps((out, X)))
    printed = _run(_LOAD_AND_SCORE, str(path))
    assert [line.split()[0] for line in printed.splitlines()] == [
        "CMAGDetector", "DAFARDetector", "MagNetDetector", "FeatureSqueezingDetector"]


def test_fitted_dafar_holds_no_hooks_between_calls():
    X = _images()
    det = _make("dafar", SmallCNN())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SMALL_DATA)
        det.fit(X)
    det.score_samples(X)
    hooked = [m for m in det.feedback_autoencoder_.modules()
              if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))


# --------------------------------------------------------------------------- #
# 2. Read-only input (memory maps, pandas 3 frames) reaches torch without a warning
# --------------------------------------------------------------------------- #
@pytest.fixture
def warn_always():
    """torch gives "The given NumPy array is not writable" once per process: every time here."""
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


def _read_only(array, tmp_path, name):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_read_only_input_gives_no_torch_warning_in_any_public_method(name, tmp_path,
                                                                    warn_always):
    X = _images()
    frozen = _read_only(X, tmp_path, "X")
    assert not frozen.flags.writeable
    det = _make(name, SmallCNN())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=SMALL_DATA)
        det.fit(frozen)
        det.score_samples(frozen)
        det.predict(frozen)
        det.reconstruction_errors(frozen)
        det.calibrate(frozen, fpr=0.1)
        if hasattr(det, "recalibrate") and hasattr(det, "_set_thresholds"):
            det.recalibrate()
        for method in ("reconstruct", "transform", "predict_classes"):
            if hasattr(det, method):
                getattr(det, method)(frozen)
        if name == "dafar":
            DetectAndPurify(detector=det).fit(frozen).score(frozen, np.zeros(len(X), dtype=int))
        # A DataFrame of flat rows (pandas 3 hands out read-only arrays).
        frame = pd.DataFrame(X.reshape(len(X), -1))
        flat = _make(name, SmallCNN(), input_shape=(1, 8, 8)).fit(frame)
        flat.score_samples(frame)
        if name == "squeeze":  # model selection on read-only detection data
            from sklearn.model_selection import cross_val_score

            from advdetect.model_selection import CleanTrainSplit, make_detection_dataset

            X_det, y_det, groups = make_detection_dataset(
                frozen, _read_only(1 - X[::4], tmp_path, "adv"), np.arange(0, 40, 4))
            cross_val_score(_make(name, SmallCNN(), fpr=0.1), X_det, y_det, groups=groups,
                            cv=CleanTrainSplit(n_splits=2), scoring="roc_auc",
                            error_score="raise")


def test_read_only_input_gives_no_torch_warning_in_training_and_attacks(tmp_path, warn_always):
    from advdetect.attacks import generate
    from advdetect.models import train_classifier

    X = _read_only(_images(), tmp_path, "X")
    y = _read_only(np.arange(40) % 10, tmp_path, "y")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = train_classifier(X, y, max_epochs=1, device="cpu", random_state=0)
        fgsm = generate(net, X, y, attack="fgsm", eps=0.1, random_state=0, only_correct=False)
        cw = generate(net, X, y, attack="cw", random_state=0, only_correct=False, max_iter=2,
                      binary_search_steps=1)
    not_writable = [str(w.message) for w in caught if "not writable" in str(w.message)]
    assert not_writable == []
    assert fgsm.x_adv.shape == cw.x_adv.shape == X.shape
    assert not X.flags.writeable and not y.flags.writeable   # the caller's arrays untouched


# --------------------------------------------------------------------------- #
# 3. A seeded call leaves the caller's global generators where they were
# --------------------------------------------------------------------------- #
def _generator_states():
    return torch.random.get_rng_state().clone(), np.random.get_state()


def _assert_same_states(before, after):
    assert torch.equal(before[0], after[0]), "torch's global generator was moved"
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1]) \
        and before[1][2:] == after[1][2:], "numpy's global generator was moved"


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_seeded_fit_leaves_the_global_generators_alone_and_stays_reproducible(name):
    X = _images()
    victim = SmallCNN()
    scores = []
    for caller_seed in (1, 2):
        det = _make(name, victim)
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)
        before = _generator_states()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SMALL_DATA)
            det.fit(X)
        _assert_same_states(before, _generator_states())
        scores.append(det.score_samples(X))
    # Same random_state, different caller states: the same scores.
    np.testing.assert_array_equal(scores[0], scores[1])


def test_seeded_training_attacks_and_datasets_leave_the_global_generators_alone():
    from advdetect.attacks import generate
    from advdetect.datasets import load_arrays, load_digits
    from advdetect.models import train_classifier

    X, y = _images(), np.arange(40) % 10
    torch.manual_seed(3)
    np.random.seed(3)
    before = _generator_states()
    load_digits(random_state=0)
    load_arrays(X, y, test_size=0.5, random_state=0)
    _assert_same_states(before, _generator_states())
    net = train_classifier(X, y, max_epochs=1, device="cpu", random_state=0)
    _assert_same_states(before, _generator_states())
    for attack in ("fgsm", "pgd", "jsma"):
        params = dict(max_iter=2) if attack == "pgd" else {}
        generate(net, X[:8], y[:8], attack=attack, random_state=0, only_correct=False,
                 **params)
        _assert_same_states(before, _generator_states())


# --------------------------------------------------------------------------- #
# 4. No public call changes the user's classifier module
# --------------------------------------------------------------------------- #
def _training_module():
    """BatchNorm and Dropout in train mode, and one BatchNorm frozen in eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))
    net.train()
    net[5].eval()  # a mix of modes, which a blanket train(was_training) would lose
    return net


def _module_state(net):
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
             "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return ([m.training for m in net.modules()],
            {k: v.detach().clone() for k, v in net.state_dict().items()},
            [p.requires_grad for p in net.parameters()],
            [{h: list(getattr(m, h)) for h in hooks} for m in net.modules()])


def _assert_unchanged(net, state, where):
    now = _module_state(net)
    assert now[0] == state[0], f"{where}: training flags changed"
    for k, v in state[1].items():
        assert torch.equal(now[1][k], v), f"{where}: {k} changed"
    assert now[2] == state[2], f"{where}: requires_grad changed"
    assert now[3] == state[3], f"{where}: hooks changed"


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_no_public_call_changes_the_users_classifier_module(name):
    X = _images()
    net = _training_module()
    state = _module_state(net)
    det = _make(name, net)
    calls = [("fit", lambda: det.fit(X)), ("score_samples", lambda: det.score_samples(X)),
             ("predict", lambda: det.predict(X)),
             ("decision_function", lambda: det.decision_function(X)),
             ("reconstruction_errors", lambda: det.reconstruction_errors(X)),
             ("calibrate", lambda: det.calibrate(X, fpr=0.1))]
    calls += [(m, lambda m=m: getattr(det, m)(X))
              for m in ("reconstruct", "transform", "predict_classes") if hasattr(det, m)]
    if name != "squeeze":
        calls.append(("DetectAndPurify", lambda: DetectAndPurify(
            classifier=net, detector=det, purify=hasattr(det, "transform")).fit(X).score(
                X, np.arange(len(X)) % 10)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SMALL_DATA)
        for where, call in calls:
            call()
            _assert_unchanged(net, state, where)


def test_attacks_leave_the_users_classifier_module_alone():
    from advdetect.attacks import generate

    X, y = _images(), np.arange(40) % 10
    net = _training_module()
    state = _module_state(net)
    for attack in ("fgsm", "cw"):
        params = dict(max_iter=2, binary_search_steps=1) if attack == "cw" else {}
        generate(net, X[:8], y[:8], attack=attack, random_state=0, only_correct=False,
                 **params)
        _assert_unchanged(net, state, attack)


# --------------------------------------------------------------------------- #
# 6. Too few clean images for the threshold asked for: an error or a warning
# --------------------------------------------------------------------------- #
# Settings whose threshold 40 clean images support (the number needed <= held out).
SUPPORTED = {
    "cmag": dict(threshold_quantile=0.25, validation_fraction=0.5),   # 4 needed, 20 held out
    "dafar": dict(z=0.5, validation_fraction=0.5),                    # 4 needed (31 %), 20
    "magnet": dict(drop_rate=0.2, validation_fraction=0.5),           # 5 needed, 20
    "squeeze": dict(fpr=0.1),                                         # 10 needed, 40
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_fit_on_one_image_is_refused(name):
    with pytest.raises(ValueError, match="fit got 1 sample.*at least 2"):
        _make(name, SmallCNN()).fit(_images(1))


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_too_few_clean_images_for_the_threshold_warn_with_the_number_needed(name):
    X = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # enough data for the threshold: no warning
        det = _make(name, SmallCNN(), **SUPPORTED[name]).fit(X)
        det.calibrate(X, fpr=0.05)       # 20 needed, 40 given
    with pytest.warns(UserWarning, match=r"from [23] clean image\(s\).*needs at least"):
        _make(name, SmallCNN(), **SUPPORTED[name]).fit(X[:3])
    with pytest.warns(UserWarning, match=r"calibrate\(fpr=0.001\).*20 clean.*at least 1000"):
        det.calibrate(X[:20], fpr=0.001)
    with pytest.raises(ValueError, match="calibrate got 1 sample"):
        det.calibrate(X[:1])
    # The threshold rules that recalibrate re-learns are checked as well.
    tighter = {"cmag": dict(threshold_quantile=0.01), "dafar": dict(z=3.0)}.get(name)
    if tighter is not None:
        det.set_params(**tighter)
        with pytest.warns(UserWarning, match="from 20 clean image.*needs at least"):
            det.recalibrate()


def test_strict_min_max_and_default_rules_name_the_images_fit_needs():
    X = _images()
    with pytest.warns(UserWarning, match=r"strict min/max.*from 20 clean.*at least 100.*"
                                         r"give fit at least 200 clean images"):
        _make("cmag", SmallCNN(), threshold_quantile=0.0, validation_fraction=0.5).fit(X)
    with pytest.warns(UserWarning, match=r"z=3.*needs at least 741.*give fit at least 3705"):
        _make("dafar", SmallCNN()).fit(X)  # the defaults: z=3, validation_fraction=0.2
    with pytest.warns(UserWarning, match=r"drop_rate=0.001.*at least 1000.*at least 10000"):
        _make("magnet", SmallCNN()).fit(X)
