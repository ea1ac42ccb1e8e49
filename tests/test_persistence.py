"""save / load: a data-only file format for fitted detectors (advdetect.persistence)."""

import ast
import functools
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator

import advdetect.persistence as persistence
from advdetect import (BinaryClassifierDetector, CMAGDetector, DAFARDetector, DefenseGANDetector,
                       FeatureSqueezingDetector, MagNetDetector, MahalanobisDetector)
from advdetect.base import BaseDetector
from advdetect.models import MNISTCNN, SmallCNN
from advdetect.persistence import FORMAT_NAME, FORMAT_VERSION, load, save

FAST = dict(device="cpu", random_state=0)

# name -> (class, parameters, fit with class labels; "outlier": with +1/-1 labels)
CONFIGS = {
    "cmag": (CMAGDetector, dict(max_epochs=1), False),
    "dafar": (DAFARDetector, dict(max_epochs=1, anomaly_max_epochs=1), False),
    "dafar_joint": (DAFARDetector, dict(training="joint", max_epochs=1, anomaly_max_epochs=1),
                    True),
    "dafar_no_c": (DAFARDetector, dict(use_anomaly_detector=False, max_epochs=1), False),
    "magnet": (MagNetDetector, dict(max_epochs=1), False),
    "squeeze": (FeatureSqueezingDetector, dict(), False),
    "mahalanobis": (MahalanobisDetector, dict(), False),
    "mahalanobis_blocks": (MahalanobisDetector, dict(feature_layer="blocks", noise_magnitude=0.01,
                                                     covariance="ledoit_wolf"), False),
    "mahalanobis_logistic": (MahalanobisDetector, dict(feature_layer="blocks",
                                                       combine="logistic"), "outlier"),
    "binary_features": (BinaryClassifierDetector, dict(on="features", max_epochs=1), "outlier"),
    "defensegan": (DefenseGANDetector, dict(max_epochs=1, n_restarts=2, n_steps=3, width=4,
                                            latent_dim=4), False),
}
# Model-agnostic detectors: loaded without a classifier.
_AGNOSTIC = ("magnet", "defensegan")


def _victim(seed=1):
    torch.manual_seed(seed)
    return SmallCNN()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = np.arange(40) % 10
    return X, y


@pytest.fixture(scope="module")
def victim():
    return _victim()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, data, victim, tmp_path_factory):
    """(fitted detector, path of its saved file, name of the configuration)."""
    cls, params, labelled = CONFIGS[request.param]
    X, y = data
    if labelled == "outlier":
        y = np.where(np.arange(len(X)) % 2 == 0, 1, -1)
    det = cls(victim, **params, **FAST).fit(X, y if labelled else None)
    path = tmp_path_factory.mktemp(request.param) / "detector.safetensors"
    det.save(path)
    return det, path, request.param


def _classifier_for(name):
    """A new classifier object with the fitted weights (load checks them against the
    saved digest); the detector's copy is rebuilt from the file's weights."""
    return None if name in _AGNOSTIC else _victim(seed=1)


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
        assert all(p.device.type == "cpu" for p in b.parameters()), where
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b)
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


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #
def test_outputs_identical_after_save_and_load(case, data):
    det, path, name = case
    X, _ = data
    X_new = np.random.default_rng(1).random((13, 1, 8, 8), dtype=np.float32)
    again = type(det).load(path, classifier=_classifier_for(name))
    for images in (X, X_new):
        np.testing.assert_array_equal(again.score_samples(images), det.score_samples(images))
        np.testing.assert_array_equal(again.decision_function(images),
                                      det.decision_function(images))
        np.testing.assert_array_equal(again.predict(images), det.predict(images))
        pd.testing.assert_frame_equal(again.reconstruction_errors(images),
                                      det.reconstruction_errors(images), check_exact=True)
        if hasattr(det, "transform"):
            np.testing.assert_array_equal(again.transform(images), det.transform(images))
        if hasattr(det, "reconstruct"):
            np.testing.assert_array_equal(again.reconstruct(images), det.reconstruct(images))


def test_every_fitted_attribute_is_restored(case):
    det, path, name = case
    again = load(path, classifier=_classifier_for(name))
    assert type(again) is type(det)
    assert _fitted_names(again) == _fitted_names(det)
    for attr in _fitted_names(det):
        _assert_same(getattr(det, attr), getattr(again, attr), attr)
    # Networks shared between attributes (DAFAR's autoencoder holds its classifier
    # and decoder) are shared again, so that scoring uses one set of weights.
    modules = [k for k in _fitted_names(det) if isinstance(getattr(det, k), torch.nn.Module)]
    for a in modules:
        for b in modules:
            held = any(m is getattr(det, b) for m in getattr(det, a).modules())
            assert held == any(m is getattr(again, b) for m in getattr(again, a).modules())


def test_parameters_are_restored_except_the_classifier(case):
    det, path, name = case
    classifier = _classifier_for(name)
    again = load(path, classifier=classifier)
    expected = det.get_params(deep=False)
    got = again.get_params(deep=False)
    assert got.pop("classifier") is classifier
    expected.pop("classifier")
    assert got == expected


def test_pickle_and_joblib_round_trips_still_keep_scores(case, data):
    import joblib

    det, _, _ = case
    X, _ = data
    scores = det.score_samples(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_samples(X), scores)
    buf = io.BytesIO()
    joblib.dump(det, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).score_samples(X), scores)


def test_file_is_safetensors_with_a_json_header(case):
    det, path, _ = case
    with safe_open(path, framework="pt", device="cpu") as f:
        header = json.loads(f.metadata()["advdetect"])
        keys = set(f.keys())
    assert header["format"] == FORMAT_NAME and header["format_version"] == FORMAT_VERSION
    assert header["class"] == type(det).__name__
    assert len(header["sha256"]) == 64
    assert header["attributes"]["device_"] == "cpu"  # the device it was fitted on
    assert "classifier" not in header["params"]
    if "optimizer" in header["params"]:
        assert header["params"]["optimizer"] == {"$optimizer": "torch.optim.Adam"}
    # Shared weights are stored once.
    assert not set(header["aliases"]) & keys
    assert set(header["aliases"].values()) <= keys
    if isinstance(det, DAFARDetector):
        assert any(k.startswith("classifier_.") for k in header["aliases"])


def test_shared_arrays_stay_one_array(case):
    det, path, name = case
    arrays = {}
    for attr in _fitted_names(det):
        value = getattr(det, attr)
        if isinstance(value, np.ndarray):
            arrays.setdefault(id(value), []).append(attr)
    again = load(path, classifier=_classifier_for(name))
    for attrs in arrays.values():
        assert len({id(getattr(again, a)) for a in attrs}) == 1


# --------------------------------------------------------------------------- #
# The classifier
# --------------------------------------------------------------------------- #
def test_joint_mode_loads_the_trained_classifier_copy_and_leaves_the_given_one_alone(data,
                                                                                   tmp_path):
    from skorch import NeuralNetClassifier

    X, y = data
    victim = _victim()
    det = DAFARDetector(victim, training="joint", max_epochs=1, anomaly_max_epochs=1,
                        **FAST).fit(X, y)
    path = tmp_path / "joint.safetensors"
    det.save(path)
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    net = NeuralNetClassifier(SmallCNN, device="cpu").initialize()
    net.module_.load_state_dict(before)
    for form in (victim, net, FrozenEstimator(net)):
        again = DAFARDetector.load(path, classifier=form)
        np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
        np.testing.assert_array_equal(again.predict_classes(X), det.predict_classes(X))
        trained = again.classifier_.module.state_dict()
        assert any(not torch.equal(trained[k], before[k]) for k in before)  # jointly trained
        assert again.classifier_.module is not victim
    for k, v in victim.state_dict().items():
        assert torch.equal(v, before[k])
        assert torch.equal(net.module_.state_dict()[k], before[k])


@pytest.mark.parametrize("wrong", [
    lambda: SmallCNN(width=8),        # other shapes
    lambda: SmallCNN(n_classes=3),    # other output layer
    lambda: MNISTCNN(),               # other layers
    lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
])
@pytest.mark.parametrize("name", ["cmag", "squeeze"])
def test_wrong_classifier_architecture_is_refused(wrong, name, data, victim, tmp_path):
    cls, params, _ = CONFIGS[name]
    X, _ = data
    path = tmp_path / "det.safetensors"
    cls(victim, **params, **FAST).fit(X).save(path)
    with pytest.raises(ValueError, match="does not match the architecture"):
        load(path, classifier=wrong())


def test_detector_with_a_classifier_needs_one_to_load(case):
    det, path, name = case
    if name in _AGNOSTIC:
        assert isinstance(load(path), type(det))  # model-agnostic: none needed
        return
    with pytest.raises(TypeError, match="classifier"):
        load(path)


# --------------------------------------------------------------------------- #
# Refusing files
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def saved(data, victim, tmp_path_factory):
    X, _ = data
    path = tmp_path_factory.mktemp("saved") / "cmag.safetensors"
    CMAGDetector(victim, max_epochs=1, **FAST).fit(X).save(path)
    return path


def _rewrite(src, dst, edit):
    """Apply ``edit`` to the header and write a valid file (fresh digest) with the writer."""
    header, tensors = persistence._read_file(src)
    edit(header)
    persistence._write_file(dst, header, tensors)
    return dst


def test_flipped_payload_byte_is_refused(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    for where in (start, (start + len(raw)) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[where] ^= 0x01
        path = tmp_path / f"flipped{where}.safetensors"
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="modified after it was saved"):
            load(path, classifier=_victim())


def test_edited_header_is_refused(saved, tmp_path, data):
    with safe_open(saved, framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(metadata["advdetect"])
    header["attributes"]["offset_"] = 1e6  # would flag everything
    path = tmp_path / "edited.safetensors"
    save_file(tensors, path, metadata={"advdetect": json.dumps(header)})
    with pytest.raises(ValueError, match="SHA-256 digest does not match"):
        load(path, classifier=_victim())
    # The same edit through the writer (fresh digest) loads: the check is the digest.
    _rewrite(saved, path, lambda h: h["attributes"].update(offset_=1e6))
    assert load(path, classifier=_victim()).offset_ == 1e6
    # A header that is not JSON at all.
    save_file(tensors, path, metadata={"advdetect": metadata["advdetect"][:-5]})
    with pytest.raises(ValueError, match="not valid JSON"):
        load(path, classifier=_victim())


def test_newer_format_version_is_refused(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "v2.safetensors",
                    lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format version 2 .* Upgrade advdetect"):
        load(path, classifier=_victim())
    path = _rewrite(saved, tmp_path / "other.safetensors",
                    lambda h: h.update(format="someone-else"))
    with pytest.raises(ValueError, match="not an advdetect detector file"):
        load(path, classifier=_victim())


class _Payload:
    """Records being unpickled: a torch pickle executes this on torch.load."""

    ran = []

    def __reduce__(self):
        return (_Payload.ran.append, ("executed",))


@pytest.mark.parametrize("kind", ["random", "empty", "text", "safetensors", "torch_pickle"])
def test_foreign_file_is_refused(kind, tmp_path):
    path = tmp_path / "foreign.bin"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text('{"format": "advdetect-detector"}')
    elif kind == "safetensors":  # someone else's weights
        save_file({"weight": torch.zeros(3, 3)}, path, metadata={"format": "pt"})
    else:
        torch.save({"state": torch.zeros(3), "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="is not an advdetect detector file"):
        load(path)
    assert _Payload.ran == []


@pytest.mark.parametrize("name", ["Pipeline", "os.system", "BaseDetector", "DetectAndPurify"])
def test_class_outside_the_allowlist_is_refused(name, saved, tmp_path):
    path = _rewrite(saved, tmp_path / "class.safetensors", lambda h: h.update({"class": name}))
    with pytest.raises(ValueError, match="not one of the detector classes advdetect loads"):
        load(path, classifier=_victim())


def test_class_method_refuses_another_detector_class(saved):
    with pytest.raises(ValueError, match="holds a CMAGDetector, not a DAFARDetector"):
        DAFARDetector.load(saved, classifier=_victim())
    assert isinstance(BaseDetector.load(saved, classifier=_victim()), CMAGDetector)


@pytest.mark.parametrize("optimizer", ["os.system", "torch.optim.Optimizer.__init__",
                                       "torch.optim.lr_scheduler", "torch.nn.Linear"])
def test_optimizer_is_resolved_only_from_torch_optim(optimizer, saved, tmp_path):
    path = _rewrite(saved, tmp_path / "opt.safetensors",
                    lambda h: h["params"].update(optimizer={"$optimizer": optimizer}))
    with pytest.raises(ValueError, match="not a torch.optim optimizer class"):
        load(path, classifier=_victim())
    path = _rewrite(saved, tmp_path / "sgd.safetensors",
                    lambda h: h["params"].update(optimizer={"$optimizer": "torch.optim.SGD"}))
    assert load(path, classifier=_victim()).optimizer is torch.optim.SGD


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.safetensors")


# --------------------------------------------------------------------------- #
# Loading executes no code
# --------------------------------------------------------------------------- #
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


def test_loading_calls_no_unpickler(case, data, monkeypatch):
    det, path, name = case

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a detector unpickled something")

    for target, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(target, attr, forbidden)
    again = load(path, classifier=_classifier_for(name))
    np.testing.assert_array_equal(again.score_samples(data[0]), det.score_samples(data[0]))


# --------------------------------------------------------------------------- #
# Devices
# --------------------------------------------------------------------------- #
def _as_if_fitted_on_cuda(header):
    header["params"]["device"] = "cuda"
    header["attributes"]["device_"] = "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only fallback")
def test_model_fitted_on_cuda_loads_on_a_cpu_only_machine(case, data, tmp_path):
    det, path, name = case
    X, _ = data
    cuda_file = _rewrite(path, tmp_path / "cuda.safetensors", _as_if_fitted_on_cuda)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        again = load(cuda_file, classifier=_classifier_for(name))
    assert again.device_ == "cpu"
    assert again.get_params()["device"] == "cuda"  # the parameter is kept as saved
    for attr in _fitted_names(again):
        value = getattr(again, attr)
        if isinstance(value, torch.nn.Module):
            assert all(t.device.type == "cpu" for t in value.state_dict().values())
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
    # An explicit device needs no fallback.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(cuda_file, classifier=_classifier_for(name), device="cpu").device_ == "cpu"


def test_auto_device_resolves_on_load(saved):
    header, _ = persistence._read_file(saved)
    assert header["params"]["device"] == "cpu"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        assert load(saved, classifier=_victim(), device="auto").device_ == "cpu"


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("cls", [CMAGDetector, DAFARDetector, MagNetDetector,
                                 FeatureSqueezingDetector])
def test_unfitted_detector_cannot_be_saved(cls, tmp_path):
    with pytest.raises(NotFittedError):
        cls(SmallCNN()).save(tmp_path / "unfitted.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_leaves_one_file_and_replaces_it_whole(tmp_path, data):
    X, _ = data
    path = tmp_path / "det.safetensors"
    det = MagNetDetector(max_epochs=1, **FAST).fit(X)
    det.save(path)
    det.save(str(path))  # str or PathLike, overwriting
    assert [p.name for p in tmp_path.iterdir()] == ["det.safetensors"]
    np.testing.assert_array_equal(load(path).score_samples(X), det.score_samples(X))


def test_unstorable_parameter_is_refused_at_save(data, tmp_path):
    class MyAdam(torch.optim.Adam):
        pass

    X, _ = data
    det = MagNetDetector(max_epochs=1, optimizer=MyAdam, **FAST).fit(X)
    with pytest.raises(ValueError, match="cannot save parameter optimizer"):
        det.save(tmp_path / "det.safetensors")


def test_subclasses_are_refused_at_save(data, tmp_path):
    class MyMagNet(MagNetDetector):
        pass

    X, _ = data
    with pytest.raises(TypeError, match="advdetect's detectors"):
        MyMagNet(max_epochs=1, **FAST).fit(X).save(tmp_path / "det.safetensors")


def test_loaded_detector_refits_and_recalibrates_like_the_original(data, tmp_path):
    X, _ = data
    det = MagNetDetector(max_epochs=1, random_state=np.random.RandomState(3), device="cpu")
    det.fit(X).calibrate(X[:20], fpr=0.1)
    path = tmp_path / "det.safetensors"
    det.save(path)
    again = load(path)
    assert again.offset_ == det.offset_  # the recalibrated threshold is kept
    np.testing.assert_array_equal(again.predict(X), det.predict(X))
    assert isinstance(again.random_state, np.random.RandomState)
    assert again.random_state.randint(1 << 30) == det.random_state.randint(1 << 30)
    refit = MagNetDetector(max_epochs=1, **FAST).fit(X)
    np.testing.assert_array_equal(load(path).set_params(random_state=0).fit(X).score_samples(X),
                                  refit.score_samples(X))


def test_feature_names_round_trip(tmp_path):
    X = np.random.default_rng(0).random((40, 64), dtype=np.float32)
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    det = MagNetDetector(max_epochs=1, input_shape=(1, 8, 8), **FAST).fit(frame)
    path = tmp_path / "det.safetensors"
    det.save(path)
    again = load(path)
    np.testing.assert_array_equal(again.feature_names_in_, det.feature_names_in_)
    np.testing.assert_array_equal(again.score_samples(frame), det.score_samples(frame))
    with pytest.warns(UserWarning, match="feature names"):
        again.score_samples(X)


def test_load_leaves_the_global_random_state_alone(saved):
    classifier = _victim()
    state = torch.get_rng_state()
    load(saved, classifier=classifier)
    assert torch.equal(torch.get_rng_state(), state)


def test_loading_trains_nothing_and_fit_still_trains(case, data, monkeypatch):
    from skorch import NeuralNet

    from advdetect.base import _SKIP_TRAINING

    det, path, name = case
    calls = []
    original = NeuralNet.fit

    def counting_fit(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NeuralNet, "fit", counting_fit)
    load(path, classifier=_classifier_for(name))
    assert calls == [] and _SKIP_TRAINING.get() is False
    MagNetDetector(detectors=("II",), max_epochs=1, **FAST).fit(data[0])
    assert calls == ["DenoisingAutoencoderNet"]


@pytest.mark.parametrize("cls", [CMAGDetector, DAFARDetector, MagNetDetector,
                                 FeatureSqueezingDetector])
def test_flat_unbounded_rows_and_a_lazy_classifier_round_trip(cls, tmp_path):
    """Tabular rows (input_shape="flat", input_range=None) and an nn.LazyLinear classifier,
    which sizes itself on the detector's copy: a fresh lazy one is accepted by load."""
    import warnings

    def lazy():
        torch.manual_seed(7)  # the same weights for the sized layer: load checks them
        return torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 3))

    X = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    params = dict(input_shape="flat", input_range=None, **FAST)
    if cls is not FeatureSqueezingDetector:
        params["max_epochs"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DAFAR's dense-decoder fallback
        det = cls(lazy(), **params).fit(X)
    path = tmp_path / "rows.safetensors"
    det.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback warning is not repeated on load
        again = load(path, classifier=lazy())
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
    for attr in _fitted_names(det):
        _assert_same(getattr(det, attr), getattr(again, attr), attr)


# --------------------------------------------------------------------------- #
# The classifier passed to load is the one fitted (issue 14, item 7)
# --------------------------------------------------------------------------- #
def test_load_refuses_a_classifier_with_other_weights(case, data):
    det, path, name = case
    if name in _AGNOSTIC:  # model-agnostic: no classifier to check
        return
    X, _ = data
    assert det.classifier_digest_ == persistence_digest(_victim(seed=1))
    for other in (_victim(seed=123),                       # another (untrained) network
                  _perturbed(_victim(seed=1))):             # one weight moved by 1e-6
        with pytest.raises(ValueError, match=r"not the one the detector was fitted on: its "
                                             r"weights differ.*refit the detector.*strict=False"):
            load(path, classifier=other)
        # strict=False: loads, with a warning, still scoring with the saved copy.
        with pytest.warns(UserWarning, match="weights differ"):
            again = load(path, classifier=other, strict=False)
        np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))


def test_load_refuses_a_classifier_with_other_layers():
    # Same weights, a Tanh for a ReLU: the weights cannot tell, the layout can.
    X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)

    def net(act):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), act(), torch.nn.Flatten(),
                                   torch.nn.Linear(4 * 6 * 6, 3))

    det = FeatureSqueezingDetector(net(torch.nn.ReLU), **FAST).fit(X)
    buffer = io.BytesIO()
    det.save(buffer)
    with pytest.raises(ValueError, match=r"its layers differ \(fitted with \['1: ReLU'\], "
                                         r"given \['1: Tanh'\]\)"):
        load(io.BytesIO(buffer.getvalue()), classifier=net(torch.nn.Tanh))
    again = load(io.BytesIO(buffer.getvalue()), classifier=net(torch.nn.ReLU))
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))


def test_clone_of_a_loaded_detector_protects_the_fitted_classifier(saved, data, victim):
    from sklearn.base import clone

    X, _ = data
    loaded = load(saved, classifier=_victim(seed=1))
    refit = clone(loaded).fit(X)
    assert refit.classifier_digest_ == loaded.classifier_digest_ == persistence_digest(victim)


def test_file_without_a_classifier_digest_loads_with_a_warning(saved, tmp_path):
    def drop(header):
        del header["attributes"]["classifier_digest_"]
        del header["attributes"]["classifier_layout_"]

    old = _rewrite(saved, tmp_path / "old.safetensors", drop)
    with pytest.warns(UserWarning, match="cannot be checked"):
        again = load(old, classifier=_victim(seed=1))
    assert again.classifier_digest_ == persistence_digest(_victim(seed=1))


def persistence_digest(module):
    from advdetect._fingerprint import classifier_digest

    return classifier_digest(module)


def _perturbed(module):
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] += 1e-6
    return module


# --------------------------------------------------------------------------- #
# File objects (issue 14, item 14)
# --------------------------------------------------------------------------- #
def test_save_and_load_accept_binary_file_objects(saved, data, tmp_path):
    X, _ = data
    det = load(saved, classifier=_victim(seed=1))
    buffer = io.BytesIO()
    det.save(buffer)
    save(det, buffer)  # the function writes at the position too: two files back to back
    size = len(buffer.getvalue()) // 2
    assert buffer.getvalue()[:size] == buffer.getvalue()[size:]
    again = load(io.BytesIO(buffer.getvalue()[:size]), classifier=_victim(seed=1))
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
    # The same bytes as a file written by path; and open files both ways.
    assert buffer.getvalue()[:size] == Path(saved).read_bytes()
    with open(tmp_path / "det.safetensors", "wb") as f:
        det.save(f)
    with open(tmp_path / "det.safetensors", "rb") as f:
        again = CMAGDetector.load(f, _victim(seed=1))
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))


def test_file_objects_of_the_wrong_kind_are_refused(saved, tmp_path):
    det = load(saved, classifier=_victim(seed=1))
    with pytest.raises(TypeError, match="binary mode"):
        det.save(io.StringIO())
    with pytest.raises(TypeError, match="binary mode"):
        load(io.StringIO("text"), classifier=_victim(seed=1))
    with pytest.raises(ValueError, match="BytesIO is not an advdetect detector file"):
        load(io.BytesIO(b"not a safetensors file at all"), classifier=_victim(seed=1))
    data = bytearray(Path(saved).read_bytes())
    data[-1] ^= 0xFF
    with pytest.raises(ValueError, match="corrupted"):
        load(io.BytesIO(bytes(data)), classifier=_victim(seed=1))


def test_save_into_a_missing_folder_names_the_folder(tmp_path, data):
    from advdetect import MagNetDetector
    X, _ = data
    det = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
    target = tmp_path / "missing" / "det.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist.*makedirs"):
        det.save(target)
