"""save / load: the detector file format (advdetect._persistence) and the state (BaseDetector).

The file is safetensors + a JSON header + a SHA-256 digest (format 2); what it
holds is decided by ``BaseDetector._get_state`` / ``_from_state``: parameters,
declared fitted values, the networks' state dicts, the calibration metrics and
``offset_``. Loading builds the networks and loads their weights; it never fits.
"""

import ast
import functools
import io
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator

import advdetect
import advdetect._persistence as persistence
from advdetect import (BinaryClassifierDetector, CMAGDetector, DAFARDetector, DefenseGANDetector,
                       FeatureSqueezingDetector, MagNetDetector, MahalanobisDetector,
                       MaxSoftmaxDetector, load)
from advdetect._fingerprint import classifier_digest
from advdetect._persistence import FORMAT_NAME, FORMAT_VERSION
from advdetect.base import BaseDetector
from advdetect.models import MNISTCNN, SmallCNN

from .conftest import build, fgsm

# The small fits here hold out few clean images: their thresholds warn, as they should.
pytestmark = [pytest.mark.filterwarnings("ignore:.* is learned from .*:UserWarning"),
              pytest.mark.usefixtures("one_torch_thread")]  # small networks: one thread

# Small batches: scoring pads the last batch to batch_size.
FAST = dict(device="cpu", random_state=0, batch_size=16)
TRAINED = dict(FAST, max_epochs=1)

# name -> (detector for a victim, labels for fit: None, class labels, or +1/-1 "outlier")
CONFIGS = {
    "cmag": (lambda v: CMAGDetector(v, width=4, **TRAINED), None),
    "cmag_paper": (lambda v: CMAGDetector.paper(v, width=4, **TRAINED), None),
    "cmag_all": (lambda v: CMAGDetector(v, width=4, stage="all", **TRAINED), None),
    "dafar": (lambda v: DAFARDetector(v, anomaly_max_epochs=1, **TRAINED), None),
    "dafar_joint": (lambda v: DAFARDetector(v, training="joint", anomaly_max_epochs=1,
                                            **TRAINED), "classes"),
    "dafar_no_c": (lambda v: DAFARDetector(v, use_anomaly_detector=False, **TRAINED), None),
    "dafar_conv": (lambda v: DAFARDetector(v, decoder="conv", anomaly_max_epochs=1,
                                           **TRAINED), None),
    "magnet": (lambda v: MagNetDetector(**TRAINED), None),
    "squeeze": (lambda v: FeatureSqueezingDetector(v, **FAST), None),
    "squeeze_unbounded": (lambda v: FeatureSqueezingDetector(v, input_range=None, **FAST), None),
    "mahalanobis": (lambda v: MahalanobisDetector(v, **FAST), None),
    "mahalanobis_logistic": (lambda v: MahalanobisDetector(
        v, feature_layer="blocks", combine="logistic", covariance="ledoit_wolf",
        noise_magnitude=0.01, **FAST), "outlier"),
    "defensegan": (lambda v: DefenseGANDetector(n_restarts=2, n_steps=3, width=4,
                                                latent_dim=4, **TRAINED), None),
    "max_softmax": (lambda v: MaxSoftmaxDetector(v, **FAST), None),
    "binary": (lambda v: BinaryClassifierDetector(v, **TRAINED), "outlier"),
    "binary_features": (lambda v: BinaryClassifierDetector(v, on="features", fpr=0.1,
                                                           **TRAINED), "outlier"),
}
# One configuration per class, for the tests that do not depend on the configuration.
ONE_PER_CLASS = ["binary_features", "cmag", "dafar", "defensegan", "magnet", "mahalanobis",
                 "max_softmax", "squeeze"]
# Detectors that read no classifier: loaded without one.
AGNOSTIC = ("magnet", "defensegan", "binary")
# A threshold parameter per configuration for set_params + recalibrate (None: none to move).
THRESHOLD_PARAM = {
    "cmag": dict(threshold_quantile=0.2), "cmag_paper": dict(threshold_quantile=0.2),
    "cmag_all": dict(threshold_quantile=0.2), "dafar": dict(z=0.5), "dafar_joint": dict(z=0.5),
    "dafar_no_c": dict(z=0.5), "dafar_conv": dict(z=0.5), "magnet": dict(drop_rate=0.2),
    "squeeze": dict(fpr=0.3), "squeeze_unbounded": dict(fpr=0.3),
    "mahalanobis": dict(fpr=0.3), "mahalanobis_logistic": dict(fpr=0.3),
    "defensegan": dict(fpr=0.3), "max_softmax": dict(fpr=0.3),
    "binary": None,  # fpr=None: no clean images held out, offset_ is 0
    "binary_features": dict(fpr=0.3),
}


# --------------------------------------------------------------------------- #
# Data, victims and fitted detectors
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def data(digits_small, small_victim):
    """Images to fit (60 clean, their FGSM versions) and to score (8 clean, 8 FGSM)."""
    X, y = digits_small
    module = small_victim.module_.eval()
    X_fit, y_fit = X[:60], y[:60]
    adv_fit = fgsm(module, X_fit, y_fit, 0.2)
    X_test = np.concatenate([X[200:208], fgsm(module, X[200:208], y[200:208], 0.2)])
    return dict(X=X_fit, y=y_fit, adv=adv_fit, X_test=X_test, X_cal=X[240:260])


def _same_victim(victim):
    """A new classifier object holding the victim's weights (what a user passes to load)."""
    module = SmallCNN()
    module.load_state_dict(victim.module_.state_dict())
    return module


@pytest.fixture(scope="module")
def fitted(data, small_victim, tmp_path_factory):
    """``fitted(name)``: (fitted detector, path of its saved file, name), made once."""
    cache = {}

    def get(name):
        if name not in cache:
            make, labels = CONFIGS[name]
            det = make(small_victim)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # too few calibration images for thresholds
                if labels == "outlier":
                    det.fit(np.concatenate([data["X"], data["adv"]]),
                            np.r_[np.ones(len(data["X"])), -np.ones(len(data["adv"]))])
                elif labels == "classes":
                    det.fit(data["X"], data["y"])
                else:
                    det.fit(data["X"])
            path = tmp_path_factory.mktemp(name) / "detector.safetensors"
            det.save(path)
            cache[name] = det, path, name
        return cache[name]

    return get


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, fitted):
    """(fitted detector, path of its saved file, configuration name), every configuration."""
    return fitted(request.param)


@pytest.fixture
def classifier_for(small_victim):
    """``classifier_for(name)``: what load needs for a configuration (None if nothing)."""
    return lambda name: None if name in AGNOSTIC else _same_victim(small_victim)


@pytest.fixture(scope="module")
def cmag_file(data, small_victim, tmp_path_factory):
    path = tmp_path_factory.mktemp("cmag") / "cmag.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CMAGDetector(small_victim, width=4, **TRAINED).fit(data["X"]).save(path)
    return path


def _fitted_names(det):
    return sorted(k for k in vars(det) if k.endswith("_") and not k.startswith("_"))


def _assert_same(a, b, where):
    assert type(a) is type(b), where
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb), where
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{where}.{k}"
        assert [p.requires_grad for p in a.parameters()] == \
            [p.requires_grad for p in b.parameters()], where
        assert not any(m.training for m in b.modules()), where
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, functools.partial):
        assert a.func is b.func and a.args == b.args and a.keywords == b.keywords, where
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def _assert_same_state(det, again):
    """Every public fitted attribute (stored or derived on load) equal, bitwise."""
    assert type(again) is type(det)
    assert _fitted_names(again) == _fitted_names(det)
    for attr in _fitted_names(det):
        _assert_same(getattr(det, attr), getattr(again, attr), attr)


def _assert_same_outputs(det, again, X):
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
    np.testing.assert_array_equal(again.decision_function(X), det.decision_function(X))
    np.testing.assert_array_equal(again.predict(X), det.predict(X))


def _rewrite(src, dst, edit=None, edit_tensors=None):
    """Read ``src``, edit its header (and tensors), write a valid file (fresh digest)."""
    header, tensors = persistence.read(src)
    if edit is not None:
        edit(header)
    if edit_tensors is not None:
        edit_tensors(tensors)
    persistence._write_file(dst, header, tensors)
    return dst


def _network_devices(det):
    devices = set()
    for name in type(det)._networks:
        module = getattr(det, name, None)
        if module is not None:
            devices |= {t.device.type for t in list(module.parameters()) + list(module.buffers())}
    return devices


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #
def test_round_trip_gives_identical_outputs_and_state(case, data, classifier_for, tmp_path):
    """Every detector class and configuration: load restores it bitwise."""
    det, path, name = case
    classifier = classifier_for(name)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    again = type(det).load(path, classifier=classifier)
    # Loading leaves the caller's random streams alone (building draws initial weights).
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) \
        and after[2:] == numpy_state[2:]
    # Outputs, bitwise.
    X = data["X_test"]
    _assert_same_outputs(det, again, X)
    pd.testing.assert_frame_equal(again.reconstruction_errors(X), det.reconstruction_errors(X),
                                  check_exact=True)
    if hasattr(det, "transform"):
        np.testing.assert_array_equal(again.transform(X), det.transform(X))
    if hasattr(det, "reconstruct"):
        np.testing.assert_array_equal(again.reconstruct(X), det.reconstruct(X))
    with torch.no_grad():
        x = torch.from_numpy(X)
        assert torch.equal(again.to_torch()(x), det.to_torch()(x))
    # Every public fitted attribute, stored or derived on load, on the CPU, in eval mode.
    _assert_same_state(det, again)
    assert _network_devices(again) == {"cpu"}
    # Networks shared between attributes (DAFAR's autoencoder holds its classifier
    # and decoder) are shared again: scoring uses one set of weights.
    modules = [k for k in _fitted_names(det) if isinstance(getattr(det, k), torch.nn.Module)]
    for a in modules:
        for b in modules:
            held = any(m is getattr(det, b) for m in getattr(det, a).modules())
            assert held == any(m is getattr(again, b) for m in getattr(again, a).modules()), \
                (a, b)
    # The parameters; the classifier is the object passed, the detector scores with a copy.
    expected, got = det.get_params(deep=False), again.get_params(deep=False)
    if "classifier" in expected:  # model-agnostic detectors (MagNet, Defense-GAN) take none
        assert got.pop("classifier") is classifier
        expected.pop("classifier")
    assert got == expected
    hooked = getattr(again, "classifier_", None)
    if classifier is not None and hooked is not None:
        assert hooked.module is not classifier
    # Saved again, the same bytes: the state is stable.
    again.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == Path(path).read_bytes()


def test_loading_does_not_fit(case, data, classifier_for, monkeypatch):
    """Issue 17: build, then load the weights; no placeholder fit, no skip-training switch."""
    from skorch import NeuralNet

    import advdetect.base

    det, path, name = case

    def forbidden(*args, **kwargs):
        raise AssertionError("load fitted, trained or unpickled something")

    cls = type(det)
    for attr in ("fit", "_train", "_split", "_prepare", "_calibration_metrics"):
        monkeypatch.setattr(cls, attr, forbidden)
    monkeypatch.setattr(NeuralNet, "fit", forbidden)
    monkeypatch.setattr(NeuralNet, "partial_fit", forbidden)
    for target, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(target, attr, forbidden)
    again = load(path, classifier=classifier_for(name))
    _assert_same_outputs(det, again, data["X_test"])
    assert not [k for k in vars(advdetect.base) if "skip_train" in k.lower()]


def test_file_is_safetensors_with_a_json_header(case):
    det, path, _ = case
    with safe_open(path, framework="pt", device="cpu") as f:
        header = json.loads(f.metadata()["advdetect"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert header["format"] == FORMAT_NAME == "advdetect-detector"
    assert header["format_version"] == FORMAT_VERSION == 2
    assert header["class"] == type(det).__name__
    assert header["advdetect_version"] == advdetect.__version__
    assert len(header["sha256"]) == 64
    assert "classifier" not in header["params"]
    assert set(header["params"]) == set(det.get_params(deep=False)) - {"classifier"}
    if "optimizer" in header["params"]:
        assert header["params"]["optimizer"] == {"$optimizer": "Adam"}
    assert header["offset"] == det.offset_
    # The networks: one state dict each, under network/<name>/.
    assert sorted(header["networks"]) == sorted(type(det)._networks)
    for net, stored in header["networks"].items():
        module = getattr(det, net)
        if module is None:
            assert stored is None
            assert not any(k.startswith(f"network/{net}/") for k in tensors)
            continue
        state = module.state_dict()
        assert {k for k in tensors if k.startswith(f"network/{net}/")} == \
            {f"network/{net}/{k}" for k in state}
        for k, v in state.items():
            assert torch.equal(tensors[f"network/{net}/{k}"], v.cpu())
    # The calibration metrics, one float64 column each, and their image positions.
    assert header["calibration"] == [str(c) for c in det.calibration_.columns]
    for column in det.calibration_.columns:
        np.testing.assert_array_equal(tensors[f"calibration/{column}"].numpy(),
                                      det.calibration_[column].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(tensors["calibration/index"].numpy(),
                                  np.asarray(det.calibration_.index, dtype=np.int64))
    # Nothing else: no pickled objects, no derived thresholds.
    assert all(k.split("/")[0] in ("network", "calibration", "value") for k in tensors)
    assert set(header["values"]) <= set(det._values())


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_pickle_and_joblib_round_trips_still_keep_scores(name, fitted, data):
    import joblib

    det, _, _ = fitted(name)
    X = data["X_test"]
    scores = det.score_samples(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_samples(X), scores)
    buf = io.BytesIO()
    joblib.dump(det, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).score_samples(X), scores)


# --------------------------------------------------------------------------- #
# Moved thresholds are kept
# --------------------------------------------------------------------------- #
def test_calibrated_and_recalibrated_thresholds_are_kept(case, data, classifier_for,
                                                         tmp_path):
    det, path, name = case
    X = data["X_test"]
    # calibrate(): offset_ moves (DAFAR's threshold_ with it).
    moved = load(path, classifier=classifier_for(name)).calibrate(data["X_cal"], fpr=0.2)
    assert moved.offset_ != det.offset_
    moved.save(tmp_path / "calibrated.safetensors")
    again = load(tmp_path / "calibrated.safetensors", classifier=classifier_for(name))
    assert again.offset_ == moved.offset_
    _assert_same_state(moved, again)
    np.testing.assert_array_equal(again.decision_function(X), moved.decision_function(X))
    # set_params + recalibrate(): the thresholds of the new parameters.
    params = THRESHOLD_PARAM[name]
    if params is None:
        return  # no clean images held out: nothing to recalibrate from
    moved = load(path, classifier=classifier_for(name)).set_params(**params).recalibrate()
    moved.save(tmp_path / "recalibrated.safetensors")
    again = load(tmp_path / "recalibrated.safetensors", classifier=classifier_for(name))
    assert {k: again.get_params()[k] for k in params} == params
    assert again.offset_ == moved.offset_
    _assert_same_state(moved, again)
    decision = again.decision_function(X)
    np.testing.assert_array_equal(decision, moved.decision_function(X))
    assert not np.array_equal(decision, det.decision_function(X))  # the thresholds moved


# --------------------------------------------------------------------------- #
# The file format is a leaf module that runs no code
# --------------------------------------------------------------------------- #
def test_persistence_module_imports_nothing_from_advdetect():
    """Issue 17: the base decides what the state is, the format only how it is written."""
    tree = ast.parse(Path(persistence.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}"
            assert node.module.split(".")[0] != "advdetect", node.module
        elif isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "advdetect" for a in node.names), \
                [a.name for a in node.names]


def test_persistence_uses_no_pickle_and_no_dynamic_import():
    tree = ast.parse(Path(persistence.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "_pickle", "joblib", "dill", "cloudpickle", "marshal",
                           "shelve", "importlib", "pydoc"}
    called = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not called & {"torch.load", "eval", "exec", "compile", "__import__",
                         "import_module", "importlib.import_module", "pickle.loads"}


# --------------------------------------------------------------------------- #
# Files and file objects
# --------------------------------------------------------------------------- #
def test_save_and_load_accept_binary_file_objects(cmag_file, data, small_victim, tmp_path):
    X = data["X_test"]
    det = load(cmag_file, classifier=_same_victim(small_victim))
    buffer = io.BytesIO()
    det.save(buffer)
    det.save(buffer)  # writes at the position: two files back to back
    size = len(buffer.getvalue()) // 2
    assert buffer.getvalue()[:size] == buffer.getvalue()[size:]
    # The same bytes as the file written by path.
    assert buffer.getvalue()[:size] == Path(cmag_file).read_bytes()
    again = advdetect.load(io.BytesIO(buffer.getvalue()[:size]), _same_victim(small_victim))
    _assert_same_outputs(det, again, X)
    # Open files, both ways.
    with open(tmp_path / "det.safetensors", "wb") as f:
        det.save(f)
    with open(tmp_path / "det.safetensors", "rb") as f:
        again = CMAGDetector.load(f, _same_victim(small_victim))
    _assert_same_outputs(det, again, X)


def test_file_objects_of_the_wrong_kind_are_refused(cmag_file, small_victim):
    det = load(cmag_file, classifier=_same_victim(small_victim))
    with pytest.raises(TypeError, match="binary mode"):
        det.save(io.StringIO())
    with pytest.raises(TypeError, match="binary mode"):
        load(io.StringIO("text"), classifier=_same_victim(small_victim))
    with pytest.raises(ValueError, match="BytesIO is not an advdetect detector file"):
        load(io.BytesIO(b"not a safetensors file at all"), _same_victim(small_victim))
    raw = bytearray(Path(cmag_file).read_bytes())
    raw[-1] ^= 0xFF
    with pytest.raises(ValueError, match="corrupted"):
        load(io.BytesIO(bytes(raw)), classifier=_same_victim(small_victim))


def test_save_leaves_one_file_and_replaces_it_whole(data, tmp_path):
    path = tmp_path / "det.safetensors"
    det = MagNetDetector(**TRAINED).fit(data["X"])
    det.save(path)
    det.save(str(path))  # str or PathLike, overwriting
    assert [p.name for p in tmp_path.iterdir()] == ["det.safetensors"]
    np.testing.assert_array_equal(load(path).score_samples(data["X_test"]),
                                  det.score_samples(data["X_test"]))


def test_a_failed_save_leaves_the_old_file_and_no_temporary(data, tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "det.safetensors"
    det = MagNetDetector(**TRAINED).fit(data["X"])
    det.save(path)
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        det.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["det.safetensors"]
    assert path.read_bytes() == before


def test_save_into_a_missing_folder_names_the_folder(data, tmp_path):
    det = MagNetDetector(**TRAINED).fit(data["X"])
    target = tmp_path / "missing" / "det.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist.*makedirs"):
        det.save(target)
    assert not (tmp_path / "missing").exists()


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.safetensors")


def test_save_hands_torch_only_writable_arrays(cmag_file, small_victim, monkeypatch):
    """The calibration columns of pandas 3 are read-only: torch would warn on every save."""
    det = load(cmag_file, classifier=_same_victim(small_victim))
    original = torch.from_numpy

    def checked(array):
        assert array.flags.writeable, "a read-only array handed to torch.from_numpy"
        return original(array)

    monkeypatch.setattr(torch, "from_numpy", checked)
    det.save(io.BytesIO())


# --------------------------------------------------------------------------- #
# Files that are refused
# --------------------------------------------------------------------------- #
def test_flipped_payload_byte_is_refused(cmag_file, small_victim, tmp_path):
    raw = bytearray(Path(cmag_file).read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    for where in (start, (start + len(raw)) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[where] ^= 0x01
        path = tmp_path / f"flipped{where}.safetensors"
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="modified after it was saved"):
            load(path, classifier=_same_victim(small_victim))


def test_edited_header_is_refused(cmag_file, small_victim, tmp_path):
    with safe_open(cmag_file, framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(metadata["advdetect"])
    header["offset"] = 1e6  # would flag everything
    path = tmp_path / "edited.safetensors"
    save_file(tensors, path, metadata={"advdetect": json.dumps(header)})
    with pytest.raises(ValueError, match="SHA-256 digest does not match"):
        load(path, classifier=_same_victim(small_victim))
    # The same edit through the writer (fresh digest) loads: the check is the digest.
    _rewrite(cmag_file, path, lambda h: h.update(offset=1e6))
    assert load(path, classifier=_same_victim(small_victim)).offset_ == 1e6
    # A header that is not JSON at all.
    save_file(tensors, path, metadata={"advdetect": metadata["advdetect"][:-5]})
    with pytest.raises(ValueError, match="not valid JSON"):
        load(path, classifier=_same_victim(small_victim))


def test_edited_weights_are_refused(cmag_file, small_victim, tmp_path):
    with safe_open(cmag_file, framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in sorted(tensors) if k.startswith("network/feature_map_reconstructor_/"))
    tensors[key] = tensors[key] + 1e-3
    path = tmp_path / "edited.safetensors"
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match="SHA-256 digest does not match"):
        load(path, classifier=_same_victim(small_victim))


@pytest.mark.parametrize("version", [1, FORMAT_VERSION + 1])
def test_other_format_versions_are_refused(version, cmag_file, small_victim, tmp_path):
    def edit(header):
        header["format_version"] = version
        if version == 1:  # what format 1 held: every fitted attribute, shared tensors
            header.update(attributes=header.pop("values"), aliases={})

    # _write_file keeps the version it is given and computes a valid digest.
    path = _rewrite(cmag_file, tmp_path / f"v{version}.safetensors", edit)
    if version == 1:
        message = r"format version 1 .*before detectors saved only their state.*refit"
    else:
        message = rf"format version {version} .*reads version {FORMAT_VERSION}.*Upgrade advdetect"
    with pytest.raises(ValueError, match=message):
        load(path, classifier=_same_victim(small_victim))


@pytest.mark.parametrize("version", [0, -1, "2", 2.0, True, None])
def test_invalid_format_versions_are_refused(version, cmag_file, tmp_path):
    path = _rewrite(cmag_file, tmp_path / "bad.safetensors",
                    lambda h: h.update(format_version=version))
    with pytest.raises(ValueError, match="invalid format version"):
        load(path)


def test_another_format_name_is_refused(cmag_file, tmp_path):
    path = _rewrite(cmag_file, tmp_path / "other.safetensors",
                    lambda h: h.update(format="someone-else"))
    with pytest.raises(ValueError, match="not an advdetect detector file.*does not name"):
        load(path)


class _Payload:
    """Records being unpickled: a torch pickle executes this on torch.load."""

    ran = []

    def __reduce__(self):
        return (_Payload.ran.append, ("executed",))


@pytest.mark.parametrize("kind", ["random", "empty", "text", "torch_pickle"])
def test_foreign_file_is_refused(kind, tmp_path):
    path = tmp_path / "foreign.bin"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text('{"format": "advdetect-detector"}')
    else:
        torch.save({"state": torch.zeros(3), "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="is not an advdetect detector file.*not a safetensors"):
        load(path)
    with pytest.raises(ValueError, match="is not an advdetect detector file"):
        load(io.BytesIO(path.read_bytes()))
    assert _Payload.ran == []


def test_safetensors_file_without_our_header_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="safetensors file without an advdetect header"):
        load(path)
    save_file({"weight": torch.zeros(3, 3)}, path)  # no metadata at all
    with pytest.raises(ValueError, match="safetensors file without an advdetect header"):
        load(path)


@pytest.mark.parametrize("name", ["Pipeline", "os.system", "BaseDetector", "DetectAndPurify",
                                  "_BinaryWithStandInAttack", 42, None])
def test_class_outside_the_registry_is_refused(name, cmag_file, tmp_path):
    path = _rewrite(cmag_file, tmp_path / "class.safetensors",
                    lambda h: h.update({"class": name}))
    with pytest.raises(ValueError, match="not one of the detector classes advdetect loads"):
        load(path)


def test_class_method_refuses_a_file_of_another_class(cmag_file, small_victim):
    with pytest.raises(ValueError, match="holds a CMAGDetector, not a DAFARDetector"):
        DAFARDetector.load(cmag_file, classifier=_same_victim(small_victim))
    with pytest.raises(ValueError, match="holds a CMAGDetector, not a MagNetDetector"):
        MagNetDetector.load(cmag_file)
    assert type(BaseDetector.load(cmag_file, _same_victim(small_victim))) is CMAGDetector
    assert type(advdetect.load(cmag_file, _same_victim(small_victim))) is CMAGDetector
    assert type(CMAGDetector.load(cmag_file, _same_victim(small_victim))) is CMAGDetector


class PersistenceTestMagNet(MagNetDetector):
    """A user's subclass: registered by its own name, saved and loaded as itself."""


def test_a_subclass_is_saved_and_loaded_as_itself(data, tmp_path):
    path = tmp_path / "sub.safetensors"
    det = PersistenceTestMagNet(**TRAINED).fit(data["X"])
    det.save(path)
    for loader in (advdetect.load, MagNetDetector.load, PersistenceTestMagNet.load):
        again = loader(path)
        assert type(again) is PersistenceTestMagNet
        _assert_same_outputs(det, again, data["X_test"])
    path = tmp_path / "magnet.safetensors"
    MagNetDetector(**TRAINED).fit(data["X"]).save(path)
    with pytest.raises(ValueError, match="holds a MagNetDetector, not a PersistenceTestMagNet"):
        PersistenceTestMagNet.load(path)


def test_a_users_class_of_the_same_name_never_stands_in_for_ours(data, tmp_path):
    """Ours are registered by their public name, any other class by module and name."""
    theirs = type("MagNetDetector", (MagNetDetector,), {"__module__": "someones_package"})
    path = tmp_path / "magnet.safetensors"
    MagNetDetector(**TRAINED).fit(data["X"]).save(path)
    assert type(advdetect.load(path)) is MagNetDetector
    path = tmp_path / "theirs.safetensors"
    theirs(**TRAINED).fit(data["X"]).save(path)
    assert type(advdetect.load(path)) is theirs


def test_a_file_without_what_the_networks_are_built_from_is_refused(cmag_file, small_victim,
                                                                     tmp_path):
    def drop(h):
        for k in ("classifier_digest_", "classifier_layout_"):
            h["values"].pop(k)

    path = _rewrite(cmag_file, tmp_path / "nodigest.safetensors", drop)
    with pytest.raises(ValueError, match="malformed advdetect header: CMAGDetector cannot build"):
        load(path, classifier=_same_victim(small_victim))


def test_unknown_parameters_and_values_are_refused(cmag_file, small_victim, tmp_path):
    path = _rewrite(cmag_file, tmp_path / "param.safetensors",
                    lambda h: h["params"].update(bogus=1))
    with pytest.raises(ValueError, match=r"stores parameters \['bogus'\] that CMAGDetector "
                                         r"does not have"):
        load(path, classifier=_same_victim(small_victim))
    path = _rewrite(cmag_file, tmp_path / "value.safetensors",
                    lambda h: h["values"].update(__class___=1))
    with pytest.raises(ValueError, match="CMAGDetector has no fitted value '__class___'"):
        load(path, classifier=_same_victim(small_victim))
    for part in ("params", "values", "networks", "calibration"):
        path = _rewrite(cmag_file, tmp_path / f"no_{part}.safetensors", lambda h: h.pop(part))
        with pytest.raises(ValueError, match="malformed advdetect header"):
            load(path, classifier=_same_victim(small_victim))


@pytest.mark.parametrize("spec", [{"$eval": "__import__('os')"}, {"$array": "value/missing"},
                                  {"$float": "1e400"}, {"$tuple": 3}, {"a": 1, "b": 2}])
def test_malformed_values_are_refused(spec, cmag_file, small_victim, tmp_path):
    path = _rewrite(cmag_file, tmp_path / "value.safetensors",
                    lambda h: h["params"].update(temperature=spec))
    with pytest.raises(ValueError, match="malformed advdetect header: cannot read the value"):
        load(path, classifier=_same_victim(small_victim))


@pytest.mark.parametrize("optimizer", ["os.system", "torch.optim.Adam", "lr_scheduler",
                                       "Optimizer.__init__", "Linear", "__builtins__",
                                       "Optimizer"])
def test_optimizer_is_resolved_only_from_torch_optim(optimizer, cmag_file, small_victim,
                                                     tmp_path):
    """Nothing executed on load: an optimizer is a name looked up in torch.optim only."""
    path = _rewrite(cmag_file, tmp_path / "opt.safetensors",
                    lambda h: h["params"].update(optimizer={"$optimizer": optimizer}))
    with pytest.raises(ValueError, match="torch.optim has no optimizer"):
        load(path, classifier=_same_victim(small_victim))
    path = _rewrite(cmag_file, tmp_path / "sgd.safetensors",
                    lambda h: h["params"].update(optimizer={"$optimizer": "SGD"}))
    assert load(path, classifier=_same_victim(small_victim)).optimizer is torch.optim.SGD


def test_saved_weights_that_do_not_fit_the_network_are_refused(cmag_file, small_victim,
                                                               tmp_path):
    def drop_one(tensors):
        del tensors[next(k for k in sorted(tensors)
                         if k.startswith("network/feature_map_reconstructor_/"))]

    path = _rewrite(cmag_file, tmp_path / "missing.safetensors", edit_tensors=drop_one)
    with pytest.raises(ValueError, match="the saved weights of feature_map_reconstructor_ do "
                                         "not fit the network"):
        load(path, classifier=_same_victim(small_victim))

    def reshape_one(tensors):
        key = next(k for k in sorted(tensors)
                   if k.startswith("network/feature_map_reconstructor_/"))
        tensors[key] = torch.zeros((3,) + tuple(tensors[key].shape))

    path = _rewrite(cmag_file, tmp_path / "shape.safetensors", edit_tensors=reshape_one)
    with pytest.raises(ValueError, match="the saved weights of feature_map_reconstructor_ do "
                                         "not fit the network"):
        load(path, classifier=_same_victim(small_victim))


# --------------------------------------------------------------------------- #
# The classifier passed to load is the one fitted
# --------------------------------------------------------------------------- #
def _perturbed(module):
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] += 1e-6
    return module


def test_load_needs_the_classifier_the_detector_was_fitted_on(case, data, small_victim):
    det, path, name = case
    if name in AGNOSTIC:
        assert type(load(path)) is type(det)  # reads no classifier: none needed
        return
    with pytest.raises(TypeError, match="pass the same architecture.*classifier="):
        load(path)
    assert det.classifier_digest_ == classifier_digest(_same_victim(small_victim))
    torch.manual_seed(123)
    for other in (SmallCNN(), _perturbed(_same_victim(small_victim))):  # untrained; 1e-6 off
        with pytest.raises(ValueError, match=r"not the one the detector was fitted on: its "
                                             r"weights differ.*refit the detector.*strict=False"):
            load(path, classifier=other)
    # strict=False: loads with a warning, scoring with the saved copy of the weights.
    with pytest.warns(UserWarning, match="weights differ"):
        again = load(path, classifier=other, strict=False)
    assert again.classifier is other
    np.testing.assert_array_equal(again.score_samples(data["X_test"]),
                                  det.score_samples(data["X_test"]))


def test_load_refuses_a_classifier_with_other_layers(data):
    # Same weights, a Tanh for a ReLU: the weights cannot tell, the layout can.
    def net(act):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), act(), torch.nn.Flatten(),
                                   torch.nn.Linear(4 * 6 * 6, 3))

    det = FeatureSqueezingDetector(net(torch.nn.ReLU), **FAST).fit(data["X"])
    buffer = io.BytesIO()
    det.save(buffer)
    with pytest.raises(ValueError, match=r"its layers differ \(fitted with \['1: ReLU'\], "
                                         r"given \['1: Tanh'\]\)"):
        load(io.BytesIO(buffer.getvalue()), classifier=net(torch.nn.Tanh))
    with pytest.warns(UserWarning, match="layers differ"):
        load(io.BytesIO(buffer.getvalue()), classifier=net(torch.nn.Tanh), strict=False)
    again = load(io.BytesIO(buffer.getvalue()), classifier=net(torch.nn.ReLU))
    _assert_same_outputs(det, again, data["X_test"])


@pytest.mark.parametrize("wrong", [
    lambda: SmallCNN(width=8),        # other shapes
    lambda: SmallCNN(n_classes=3),    # other output layer
    lambda: MNISTCNN(),               # other layers
    lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
], ids=["width", "classes", "mnist", "linear"])
@pytest.mark.parametrize("name", ["cmag", "squeeze", "dafar"])
def test_wrong_classifier_architecture_is_refused(wrong, name, fitted):
    _, path, _ = fitted(name)
    with pytest.raises(ValueError, match="not the one the detector was fitted on"):
        load(path, classifier=wrong())
    # strict=False cannot help: the saved weights do not fit another architecture.
    with pytest.warns(UserWarning, match="not the one"), pytest.raises(ValueError):
        load(path, classifier=wrong(), strict=False)


def test_joint_mode_loads_the_trained_classifier_copy_and_leaves_the_given_one_alone(
        data, small_victim, tmp_path):
    from skorch import NeuralNetClassifier

    victim = _same_victim(small_victim)
    det = DAFARDetector(victim, training="joint", anomaly_max_epochs=1, **TRAINED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(data["X"], data["y"])
    path = tmp_path / "joint.safetensors"
    det.save(path)
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    net = NeuralNetClassifier(SmallCNN, device="cpu").initialize()
    net.module_.load_state_dict(before)
    for form in (victim, net, FrozenEstimator(net)):
        again = DAFARDetector.load(path, classifier=form)
        _assert_same_outputs(det, again, data["X_test"])
        np.testing.assert_array_equal(again.predict_classes(data["X_test"]),
                                      det.predict_classes(data["X_test"]))
        trained = again.classifier_.module.state_dict()
        assert any(not torch.equal(trained[k], before[k]) for k in before)  # jointly trained
        assert again.classifier_.module is not victim
    for k, v in victim.state_dict().items():
        assert torch.equal(v, before[k])
        assert torch.equal(net.module_.state_dict()[k], before[k])


def test_clone_of_a_loaded_detector_protects_the_fitted_classifier(cmag_file, data,
                                                                   small_victim):
    loaded = load(cmag_file, classifier=_same_victim(small_victim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = clone(loaded).fit(data["X"])
    assert refit.classifier_digest_ == loaded.classifier_digest_ == \
        classifier_digest(small_victim.module_)


def test_loaded_detector_refits_like_the_original(data, tmp_path):
    det = MagNetDetector(**dict(TRAINED, random_state=3)).fit(data["X"])
    det.save(tmp_path / "det.safetensors")
    again = load(tmp_path / "det.safetensors")
    refit = again.set_params(random_state=0).fit(data["X"])
    fresh = MagNetDetector(**TRAINED).fit(data["X"])
    np.testing.assert_array_equal(refit.score_samples(data["X_test"]),
                                  fresh.score_samples(data["X_test"]))


# --------------------------------------------------------------------------- #
# Devices
# --------------------------------------------------------------------------- #
def _as_if_fitted_on_cuda(header):
    header["params"]["device"] = "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only fallback")
@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_model_fitted_on_cuda_loads_on_a_cpu_only_machine(name, fitted, data, classifier_for,
                                                          tmp_path):
    det, path, name = fitted(name)
    cuda_file = _rewrite(path, tmp_path / "cuda.safetensors", _as_if_fitted_on_cuda)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        again = load(cuda_file, classifier=classifier_for(name))
    assert again.device_ == "cpu"
    assert again.get_params()["device"] == "cuda"  # the parameter is kept as saved
    assert _network_devices(again) == {"cpu"}
    np.testing.assert_array_equal(again.score_samples(data["X_test"]),
                                  det.score_samples(data["X_test"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit device needs no fallback
        again = load(cuda_file, classifier=classifier_for(name), device="cpu")
    assert again.device_ == "cpu" and _network_devices(again) == {"cpu"}


def test_parameters_in_the_header_are_validated(cmag_file, small_victim, tmp_path):
    """The digest can be recomputed by anyone: load validates what it reads."""
    from sklearn.utils._param_validation import InvalidParameterError

    path = _rewrite(cmag_file, tmp_path / "q.safetensors",
                    lambda h: h["params"].update(threshold_quantile=5))
    with pytest.raises(InvalidParameterError, match="threshold_quantile"):
        load(path, classifier=_same_victim(small_victim))


def test_a_users_class_not_yet_imported_is_named_with_its_module(cmag_file, tmp_path):
    path = _rewrite(cmag_file, tmp_path / "theirs.safetensors",
                    lambda h: h.update({"class": "energy.EnergyDetector"}))
    with pytest.raises(ValueError, match=r"import its module \(energy\) before loading"):
        load(path)


def test_device_cpu_and_auto_load_onto_the_cpu(cmag_file, small_victim, monkeypatch):
    again = load(cmag_file, _same_victim(small_victim), device="cpu")
    assert again.device_ == "cpu" and _network_devices(again) == {"cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    again = load(cmag_file, _same_victim(small_victim), device="auto")
    assert again.device_ == "cpu" and _network_devices(again) == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loaded_detector_works_on_cuda(case, data, classifier_for, tmp_path):
    det, path, name = case
    X = data["X_test"]
    on_gpu = load(path, classifier=classifier_for(name), device="cuda")
    assert on_gpu.device_ == "cuda" and _network_devices(on_gpu) == {"cuda"}
    np.testing.assert_allclose(on_gpu.score_samples(X), det.score_samples(X),
                               rtol=1e-4, atol=1e-4)
    assert on_gpu.predict(X).shape == (len(X),)
    # Saved from CUDA, loaded onto the CPU: the same weights, so the same scores.
    on_gpu.save(tmp_path / "gpu.safetensors")
    back = load(tmp_path / "gpu.safetensors", classifier=classifier_for(name), device="cpu")
    assert back.device_ == "cpu" and _network_devices(back) == {"cpu"}
    _assert_same_outputs(det, back, X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_detector_fitted_on_cuda_loads_onto_the_cpu(data, tmp_path):
    det = MagNetDetector(max_epochs=1, device="cuda", random_state=0).fit(data["X"])
    det.save(tmp_path / "gpu.safetensors")
    again = load(tmp_path / "gpu.safetensors", device="cpu")
    assert again.device_ == "cpu" and _network_devices(again) == {"cpu"}
    np.testing.assert_allclose(again.score_samples(data["X_test"]),
                               det.score_samples(data["X_test"]), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls", [CMAGDetector, DAFARDetector, MagNetDetector,
                                 FeatureSqueezingDetector, MahalanobisDetector,
                                 DefenseGANDetector, BinaryClassifierDetector,
                                 MaxSoftmaxDetector])
def test_unfitted_detector_cannot_be_saved(cls, tmp_path):
    with pytest.raises(NotFittedError):
        build(cls, SmallCNN()).save(tmp_path / "unfitted.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unstorable_parameters_are_refused_at_save(data, tmp_path):
    class MyAdam(torch.optim.Adam):
        pass

    det = MagNetDetector(optimizer=MyAdam, **TRAINED).fit(data["X"])
    with pytest.raises(ValueError, match="cannot save the parameter optimizer=.*MyAdam"):
        det.save(tmp_path / "det.safetensors")
    # A RandomState is not stored (an int seed is): the message says what is.
    det = MagNetDetector(max_epochs=1, device="cpu",
                         random_state=np.random.RandomState(3)).fit(data["X"])
    with pytest.raises(ValueError, match="cannot save the parameter random_state=.*the format "
                                         "stores numbers"):
        det.save(tmp_path / "det.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_feature_names_round_trip(tmp_path):
    X = np.random.default_rng(0).random((40, 64), dtype=np.float32)
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    det = MagNetDetector(input_shape=(1, 8, 8), **TRAINED).fit(frame)
    path = tmp_path / "det.safetensors"
    det.save(path)
    again = load(path)
    np.testing.assert_array_equal(again.feature_names_in_, det.feature_names_in_)
    np.testing.assert_array_equal(again.score_samples(frame), det.score_samples(frame))
    with pytest.warns(UserWarning, match="feature names"):
        again.score_samples(X)


@pytest.mark.parametrize("cls", [CMAGDetector, DAFARDetector, MagNetDetector,
                                 FeatureSqueezingDetector, MahalanobisDetector])
def test_flat_unbounded_rows_and_a_lazy_classifier_round_trip(cls, tmp_path):
    """Tabular rows (input_shape="flat", input_range=None) and an nn.LazyLinear classifier,
    which sizes itself on the detector's copy: a fresh lazy one is accepted by load."""
    def lazy():
        torch.manual_seed(7)  # the same weights for the sized layer: load checks them
        return torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 3))

    X = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    params = dict(input_shape="flat", input_range=None, **FAST)
    if cls in (CMAGDetector, DAFARDetector, MagNetDetector):
        params["max_epochs"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DAFAR's dense-decoder fallback, small splits
        det = build(cls, lazy(), **params).fit(X)
    path = tmp_path / "rows.safetensors"
    det.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fit's warnings are not repeated on load
        again = load(path, classifier=None if cls is MagNetDetector else lazy())
    _assert_same_outputs(det, again, X)
    _assert_same_state(det, again)


# --------------------------------------------------------------------------- #
# The value encoding of the header
# --------------------------------------------------------------------------- #
def test_values_round_trip_through_the_header_encoding():
    values = [None, True, 3, "text", 1.5, float("inf"), float("-inf"), (1, (2, "a")),
              [1, [2.5]], {"a": (1,), "b": None}, np.float32(0.5), np.int64(3),
              np.bool_(True), torch.optim.SGD, ()]
    tensors = {}
    specs = [persistence.encode(v, f"v{i}", tensors) for i, v in enumerate(values)]
    decoded = [persistence.decode(json.loads(json.dumps(s, allow_nan=False)), tensors)
               for s in specs]
    for a, b in zip(values, decoded):
        expected = a.item() if isinstance(a, np.generic) else a
        assert b == expected and type(b) is type(expected), (a, b)
    nan = persistence.decode(persistence.encode(float("nan"), "nan", tensors), tensors)
    assert np.isnan(nan)
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64),
                  np.array([True, False]), np.zeros((0, 4))):
        tensors = {}
        back = persistence.decode(persistence.encode(array, "a", tensors), tensors)
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
        assert back.flags.writeable
    strings = np.array(["x", "y"], dtype=object)
    back = persistence.decode(persistence.encode(strings, "s", {}), {})
    assert back.dtype == object and list(back) == ["x", "y"]


class _MySGD(torch.optim.SGD):
    pass


@pytest.mark.parametrize("value", [lambda: 0, object(), _MySGD, {1: 2}, 1j,
                                   np.array([1 + 2j]), torch.zeros(2), print],
                         ids=["lambda", "object", "optimizer", "int_keys", "complex",
                              "complex_array", "tensor", "builtin"])
def test_the_header_encoding_refuses_anything_else(value):
    with pytest.raises(persistence.Unencodable):
        persistence.encode(value, "x", {})
