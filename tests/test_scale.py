"""Scaling out and beyond memory: dask.distributed searches, CUDA-pickled detectors, streams.

* A ``GridSearchCV`` run on a 2-worker ``LocalCluster`` through joblib's dask
  backend gives the ``cv_results_`` of a sequential run (the workers run torch
  with one thread, as the sequential run here does).
* A detector pickled with its networks on CUDA loads on a CPU-only process.
* A ``numpy.memmap``, a torch ``Dataset`` and a ``DataLoader`` score exactly as
  the array does, and a memory map is read batch by batch, never copied whole.
"""

import os
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV
from torch.utils.data import DataLoader, TensorDataset

from advdetect import CMAGDetector, DAFARDetector, MagNetDetector
from advdetect.metrics import roc_auc_scorer
from advdetect.model_selection import CleanTrainSplit, make_detection_dataset

FAST = dict(max_epochs=1, batch_size=32, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


@pytest.fixture(scope="module")
def victim(digits):
    from advdetect.models import train_classifier

    X, y = digits
    return train_classifier(X[:300], y[:300], max_epochs=2, device="cpu", random_state=0)


@pytest.fixture
def one_thread():
    """Torch with one thread, as on the workers: float sums then run in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- #
# dask.distributed
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_set_torch_threads_sets_every_worker(dask_client):
    from advdetect.parallel import set_torch_threads

    assert set(set_torch_threads(dask_client, 2).values()) == {2}
    # Default: the machine's cores shared among the two one-thread workers.
    cores = len(os.sched_getaffinity(0))
    assert set(set_torch_threads(dask_client).values()) == {max(1, cores // 2)}
    set_torch_threads(dask_client, 1)


def test_grid_search_on_dask_equals_sequential(dask_client, digits, victim, one_thread):
    import joblib

    from advdetect.parallel import set_torch_threads

    set_torch_threads(dask_client, 1)
    X, _ = digits
    clean = X[300:420]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)
    X_det, y_det, groups = make_detection_dataset(clean, noisy)
    cv = CleanTrainSplit(n_splits=2)
    det = CMAGDetector(FrozenEstimator(victim), **FAST)
    grid = {"temperature": [1.0, 10.0]}

    def search(n_jobs):
        return GridSearchCV(det, grid, scoring=roc_auc_scorer, cv=cv, n_jobs=n_jobs,
                            error_score="raise").fit(X_det, y_det, groups=groups)

    sequential = search(1)
    with joblib.parallel_config(backend="dask"):
        distributed = search(-1)
    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        np.testing.assert_array_equal(distributed.cv_results_[key],
                                      sequential.cv_results_[key])
    assert distributed.best_params_ == sequential.best_params_
    # The search really ran on the workers: they executed tasks.
    assert sum(len(v) for v in dask_client.run(
        lambda dask_worker: list(dask_worker.state.log)).values()) > 0
    np.testing.assert_array_equal(distributed.best_estimator_.score_samples(X_det),
                                  sequential.best_estimator_.score_samples(X_det))


def test_device_auto_resolves_on_each_worker(dask_client):
    """``device="auto"`` is resolved in ``fit``, where the fit runs: the worker's device."""
    from advdetect.base import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert set(dask_client.run(resolve_device, "auto").values()) == {expected}


# --------------------------------------------------------------------------- #
# Pickling across devices
# --------------------------------------------------------------------------- #
def test_cuda_pickled_detector_loads_on_cpu(digits, monkeypatch):
    """The packed CUDA state is read with map_location="cpu" where CUDA is absent.

    Without a GPU the detector is made to claim CUDA (``device_``), which is
    what selects the packed format; ``torch.load`` is watched for the
    ``map_location`` that maps CUDA tensors to the CPU.
    """
    X, _ = digits
    det = MagNetDetector(**FAST).fit(X[:100])
    expected = det.score_samples(X[:64])
    det.device_ = "cuda"
    payload = pickle.dumps(det)
    det.device_ = "cpu"
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "load", spy)
    with pytest.warns(RuntimeWarning, match="loaded onto the CPU"):
        again = pickle.loads(payload)
    assert seen == ["cpu"]
    assert again.device_ == "cpu"
    np.testing.assert_array_equal(again.score_samples(X[:64]), expected)
    # A CPU detector pickles as before: no packed state, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_samples(X[:64]),
                                      expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_fitted_detector_round_trips(digits, victim):  # pragma: no cover
    X, _ = digits
    det = CMAGDetector(FrozenEstimator(victim), **dict(FAST, device="cuda")).fit(X[:100])
    again = pickle.loads(pickle.dumps(det))
    assert again.device_ == "cuda"
    np.testing.assert_allclose(again.score_samples(X[:64]), det.score_samples(X[:64]))


# --------------------------------------------------------------------------- #
# Streams: memory maps, Datasets, DataLoaders
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def fitted(digits, victim):
    X, _ = digits
    return {cls.__name__: (cls(**FAST) if cls is MagNetDetector else
                           cls(FrozenEstimator(victim), **FAST)).fit(X[:200])
            for cls in (CMAGDetector, DAFARDetector, MagNetDetector)}


@pytest.fixture(scope="module")
def memmap(digits, tmp_path_factory):
    X, _ = digits
    path = tmp_path_factory.mktemp("scale") / "digits.npy"
    np.save(path, X)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("name", ["CMAGDetector", "DAFARDetector", "MagNetDetector"])
def test_memmap_dataset_and_loader_score_as_the_array(name, fitted, digits, memmap):
    det = fitted[name]
    X, y = digits
    images, labels = torch.from_numpy(X), torch.from_numpy(y)
    expected = det.score_samples(X)
    sources = {"memmap": memmap, "Dataset": TensorDataset(images),
               "DataLoader of (images, labels)": DataLoader(TensorDataset(images, labels),
                                                            batch_size=100)}
    for what, source in sources.items():
        np.testing.assert_array_equal(det.score_samples(source), expected, err_msg=what)
    np.testing.assert_array_equal(det.predict(memmap), det.predict(X))
    np.testing.assert_array_equal(det.decision_function(memmap), det.decision_function(X))
    assert det.reconstruction_errors(memmap).equals(det.reconstruction_errors(X))
    np.testing.assert_array_equal(det.reconstruct(memmap), det.reconstruct(X))
    if hasattr(det, "transform"):
        np.testing.assert_array_equal(det.transform(sources["DataLoader of (images, labels)"]),
                                      det.transform(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memmap_is_read_in_batches_not_copied(fitted, tmp_path, dtype):
    det = fitted["MagNetDetector"]
    X = np.random.default_rng(0).random((20000, 1, 8, 8)).astype(dtype)
    path = tmp_path / "big.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    expected = det.score_samples(X)
    tracemalloc.start()
    try:
        scores = det.score_samples(mm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(scores, expected)
    # 5 or 10 MB of images; numpy holds one 32-image batch and the 20,000 float64 scores
    # (a float64 array validated whole would be copied to float32 whole).
    assert peak < mm.nbytes / 4, peak


def test_memmap_is_validated_per_batch(fitted, tmp_path):
    """NaN and out-of-range values are found in the batch that holds them."""
    det = fitted["MagNetDetector"]
    X = np.random.default_rng(0).random((500, 1, 8, 8), dtype=np.float32)
    for bad, match in [(np.nan, "NaN"), (2.0, r"outside \[0")]:
        X_bad = X.copy()
        X_bad[-1, 0, 0, 0] = bad  # the last batch
        path = tmp_path / "bad.npy"
        np.save(path, X_bad)
        with pytest.raises(ValueError, match=match):
            det.score_samples(np.load(path, mmap_mode="r"))
    with pytest.raises(ValueError, match="fitted on images of shape"):
        det.score_samples(DataLoader(TensorDataset(torch.zeros(10, 1, 6, 6)), batch_size=4))


def test_fit_reads_a_dataloader_as_the_array(digits):
    X, y = digits
    loader = DataLoader(TensorDataset(torch.from_numpy(X[:200]), torch.from_numpy(y[:200])),
                        batch_size=50)
    from_loader = MagNetDetector(**FAST).fit(loader)
    from_array = MagNetDetector(**FAST).fit(X[:200])
    np.testing.assert_array_equal(from_loader.score_samples(X[200:300]),
                                  from_array.score_samples(X[200:300]))


# --------------------------------------------------------------------------- #
# The benchmark's parallel fits
# --------------------------------------------------------------------------- #
def test_benchmark_with_n_jobs_equals_sequential(one_thread):
    """Fits in 2 joblib worker processes (one torch thread each, as here) change nothing."""
    from advdetect.benchmark import run_benchmark

    kw = dict(n_train=150, n_test=40, n_attack=20, victim_epochs=3, detector_epochs=1,
              verbose=0, plots=False, log=lambda *_: None)
    sequential = run_benchmark("digits", ["fgsm:0.3"], ["magnet", "squeeze"], **kw)
    parallel = run_benchmark("digits", ["fgsm:0.3"], ["magnet", "squeeze"], n_jobs=2, **kw)
    assert parallel["settings"]["n_jobs"] == 2
    assert len(sequential["results"]) > 2
    assert parallel["results"].equals(sequential["results"])
    assert list(parallel["timing"]["detector"]) == ["MagNet", "Feature Squeezing"]


def test_cli_passes_n_jobs_and_scheduler(monkeypatch):
    from advdetect import cli

    seen = {}

    def fake_run_benchmark(**kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "run_benchmark", fake_run_benchmark)
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "--n-jobs", "2", "--scheduler", "tcp://scheduler:8786"])
    assert seen["n_jobs"] == 2 and seen["scheduler"] == "tcp://scheduler:8786"


def test_a_shuffling_dataloader_is_refused_not_scored_out_of_order(digits_small):
    # Scores follow the loader's order: a shuffled one would pair them with the wrong images.
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    from advdetect import MagNetDetector

    X, _ = digits_small
    det = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X[:100])
    data = TensorDataset(torch.from_numpy(X[:50].copy()))
    shuffled = [DataLoader(data, batch_size=16, shuffle=True),
                DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), 16, False))]
    for loader in shuffled:
        with pytest.raises(ValueError, match="shuffle=False"):
            det.score_samples(loader)
    np.testing.assert_array_equal(det.score_samples(DataLoader(data, batch_size=16)),
                                  det.score_samples(X[:50]))
