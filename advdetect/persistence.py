"""Save and load fitted detectors in a format that cannot execute code on load.

``pickle`` and ``joblib`` round trips of a fitted detector work (and keep the
scores identical), but unpickling runs whatever code the file names, so a
detector file from someone else is as dangerous as a script from them. Here a
fitted detector is stored as data only, and loading one builds the networks
from advdetect's own code and fills them with that data.

**The file.** One `safetensors <https://huggingface.co/docs/safetensors>`_
file. Its tensors are the state dicts of the detector's networks
(``"fmr_.net.0.weight"``) and its numeric arrays (``"calibration_scores_"``);
its string metadata holds, under the key ``"advdetect"``, one JSON header:

* ``format`` (``"advdetect-detector"``) and ``format_version`` (an integer,
  :data:`FORMAT_VERSION`); ``advdetect_version`` and ``torch_version`` of the
  writer; ``class``, the detector's class name;
* ``params``: ``get_params()`` without ``classifier`` (which is passed to
  :func:`load` again); the ``optimizer`` class is stored as its dotted path
  and resolved only from :mod:`torch.optim`;
* ``attributes``: every fitted attribute (a name ending in ``_``): networks as
  references to their tensors, numpy arrays as tensors, DataFrames, scalars,
  strings, tuples and lists as tagged JSON. ``device_`` records the device
  the detector was fitted on;
* ``aliases``: tensors shared between networks (DAFAR's feedback autoencoder
  contains its classifier and decoder) are stored once;
* ``sha256``: the SHA-256 digest of the rest of the header and of every
  tensor (name, dtype, shape and bytes).

**Why one safetensors file.** A single file is what users copy, upload and
attach. safetensors is already a dependency; its reader parses a
length-prefixed JSON header and raw little-endian buffers and has no code path
that can execute anything; any safetensors tool lists the tensors, and the
header is readable with ``safetensors.safe_open(path, "pt").metadata()``. A
zip of ``model.safetensors`` and ``config.json`` would add a container format
and a second parser for nothing.

The digest detects corrupted or edited files; it is not a signature (anyone
who edits a file can recompute it). Safety does not rest on it: nothing in
the file is ever turned into code. Detector classes come from a fixed
allowlist (:data:`DETECTOR_CLASSES`), optimizers from ``torch.optim`` only,
and attributes that hold functions (Feature Squeezing's ``squeezers_``) are
not read back at all: they are rebuilt from the parameters and checked
against the description stored for them.

**Rebuilding the networks.** :func:`load` builds the detector from its
parameters and runs the detector's own ``_fit`` on a few placeholder images of
the saved ``image_shape_`` with training switched off (each skorch net is only
initialised), which builds every network exactly as ``fit`` does, from the
shapes seen at fit time: no second description of the architectures to keep
in step with ``fit``, and a fitted attribute added to a detector is saved and
restored with no change here. It then
loads every state dict from the file (strictly: a missing, unexpected or
reshaped weight is an error) and restores every fitted attribute from the
file, so none of the placeholder results survives. The global torch random
state is left as it was. ``fit`` itself is unchanged.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> from advdetect import MagNetDetector
>>> from advdetect.persistence import load, save
>>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
>>> det = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = os.path.join(tmp, "magnet.safetensors")
...     save(det, path)
...     again = load(path)
>>> type(again).__name__, bool(np.array_equal(again.score_samples(X), det.score_samples(X)))
('MagNetDetector', True)
"""

import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import uuid
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.utils.validation import check_is_fitted

from .base import resolve_device, skip_training, unwrap_classifier

__all__ = ["save", "load", "FORMAT_NAME", "FORMAT_VERSION", "DETECTOR_CLASSES"]

#: Name of the format, stored in every file.
FORMAT_NAME = "advdetect-detector"
#: Version of the format written; files of a higher version are refused.
FORMAT_VERSION = 1
#: The only classes :func:`load` builds.
DETECTOR_CLASSES = ("CMAGDetector", "DAFARDetector", "FeatureSqueezingDetector",
                    "MagNetDetector", "MahalanobisDetector", "BinaryClassifierDetector",
                    "DefenseGANDetector", "MaxSoftmaxDetector")

_METADATA_KEY = "advdetect"
# Images run through ``_fit`` (untrained) to build the networks on load.
_N_PLACEHOLDER = 8


def _detector_classes():
    from .cmag import CMAGDetector
    from .dafar import DAFARDetector
    from .defensegan import DefenseGANDetector
    from .magnet import MagNetDetector
    from .squeeze import FeatureSqueezingDetector

    classes = (CMAGDetector, DAFARDetector, FeatureSqueezingDetector, MagNetDetector)
    from .binary import BinaryClassifierDetector
    from .mahalanobis import MahalanobisDetector
    from .max_softmax import MaxSoftmaxDetector

    classes += (MahalanobisDetector, BinaryClassifierDetector, DefenseGANDetector,
                MaxSoftmaxDetector)
    return {c.__name__: c for c in classes}


def _fitted_names(detector):
    """Fitted attributes, as scikit-learn's ``check_is_fitted`` sees them (public only)."""
    return [k for k in vars(detector) if k.endswith("_") and not k.startswith("_")]


# --------------------------------------------------------------------------- #
# Encoding values as JSON plus tensors
# --------------------------------------------------------------------------- #
class _Unencodable(TypeError):
    pass


class _Writer:
    """Collects the tensors of a file, storing tensors that share memory once."""

    def __init__(self):
        self.tensors = {}
        self.aliases = {}
        self._seen = {}
        self._alive = []  # so that no address is freed and reused by a later tensor

    def add(self, name, tensor):
        t = tensor.detach()
        self._alive.append(t)
        if t.numel():
            key = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(),
                   tuple(t.shape), tuple(t.stride()), t.dtype)
            if key in self._seen:
                self.aliases[name] = self._seen[key]
                return
            self._seen[key] = name
        # A copy: safetensors refuses tensors that share memory (views of one buffer).
        self.tensors[name] = t.to("cpu", copy=True).contiguous()


def _qualified_name(obj):
    module = getattr(obj, "__module__", None) or "builtins"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _encode_float(x):
    x = float(x)
    return x if math.isfinite(x) else {"$float": repr(x)}


def _encode_array_values(values):
    """A numpy array as a JSON list (object/str dtypes; DataFrame columns)."""
    if values.dtype.kind == "f":
        return [v if math.isfinite(v) else repr(v) for v in values.tolist()]
    if values.dtype.kind in "iub":
        return values.tolist()
    return [_encode(v, None, None, "") for v in values.tolist()]


def _decode_array_values(values, dtype):
    if dtype.kind == "f":
        return np.array([float(v) for v in values], dtype=dtype)
    if dtype.kind in "iub":
        return np.array(values, dtype=dtype)
    out = np.empty(len(values), dtype=object)
    out[:] = [_decode(v, None, "") for v in values]
    return out


def _encode_index(index):
    if isinstance(index, pd.MultiIndex):
        raise _Unencodable("a DataFrame with a MultiIndex")
    if isinstance(index, pd.RangeIndex):
        return {"range": [index.start, index.stop, index.step],
                "name": _encode(index.name, None, None, "")}
    return {"values": _encode_array_values(index.to_numpy()), "dtype": str(index.dtype),
            "name": _encode(index.name, None, None, "")}


def _decode_index(spec):
    if "range" in spec:
        start, stop, step = (int(v) for v in spec["range"])
        return pd.RangeIndex(start, stop, step, name=_decode(spec["name"], None, ""))
    dtype = pd.api.types.pandas_dtype(spec["dtype"])
    values = _decode_array_values(spec["values"], np.dtype(dtype) if isinstance(
        dtype, np.dtype) else np.dtype(object))
    return pd.Index(values, dtype=dtype, name=_decode(spec["name"], None, ""))


def _encode_frame(frame):
    columns = []
    for i in range(frame.shape[1]):
        col = frame.iloc[:, i]
        if not isinstance(col.dtype, np.dtype) and not pd.api.types.is_string_dtype(col.dtype):
            raise _Unencodable(f"a DataFrame column of dtype {col.dtype}")
        columns.append({"dtype": str(col.dtype),
                        "values": _encode_array_values(col.to_numpy())})
    return {"$dataframe": {"index": _encode_index(frame.index),
                           "columns": _encode_index(frame.columns), "data": columns}}


def _decode_frame(spec):
    index = _decode_index(spec["index"])
    columns = _decode_index(spec["columns"])
    data = {}
    for i, col in enumerate(spec["data"]):
        dtype = pd.api.types.pandas_dtype(col["dtype"])
        values = _decode_array_values(col["values"], dtype if isinstance(dtype, np.dtype)
                                      else np.dtype(object))
        data[i] = pd.Series(values, index=index, dtype=dtype)
    frame = pd.DataFrame(data, index=index)
    frame.columns = columns
    return frame


def _encode(value, path, writer, kind):
    """JSON for ``value``; arrays go to ``writer`` under ``path``.

    ``kind`` is ``"param"`` (optimizer classes and RandomState allowed),
    ``"attribute"`` (functions stored as descriptions, see :func:`_describe`)
    or ``""`` (plain data only).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        if value.dtype.kind not in "fiub":
            raise _Unencodable(f"a numpy scalar of dtype {value.dtype}")
        return {"$numpy": value.dtype.str, "value": _encode(value.item(), None, None, "")}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _encode_float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fiub" and writer is not None:
            array = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
            writer.add(path, torch.from_numpy(array))
            return {"$ndarray": path}
        if value.dtype.kind in "OU":
            return {"$ndarray_values": _encode_array_values(value.ravel()),
                    "dtype": "object" if value.dtype.kind == "O" else value.dtype.str,
                    "shape": list(value.shape)}
        raise _Unencodable(f"a numpy array of dtype {value.dtype}")
    if isinstance(value, torch.nn.Module):
        raise _Unencodable("a torch module inside a container (only attributes that are "
                           "modules themselves are stored)")
    if isinstance(value, torch.Tensor) and writer is not None:
        writer.add(path, value)
        return {"$tensor": path, "requires_grad": bool(value.requires_grad)}
    if isinstance(value, pd.DataFrame):
        return _encode_frame(value)
    if isinstance(value, (tuple, list)):
        items = [_encode(v, f"{path}.{i}", writer, kind) for i, v in enumerate(value)]
        return {"$tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, None, None, ""), _encode(v, f"{path}.{i}", writer, kind)]
                          for i, (k, v) in enumerate(value.items())]}
    if kind == "param" and isinstance(value, np.random.RandomState):
        return {"$random_state": _encode(value.get_state(legacy=True), path, writer, "")}
    if kind == "param" and isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
        if getattr(torch.optim, value.__name__, None) is not value:
            raise _Unencodable(f"the optimizer {_qualified_name(value)} (only classes from "
                               "torch.optim can be stored)")
        return {"$optimizer": f"torch.optim.{value.__name__}"}
    if kind == "attribute" and callable(value):
        return _describe(value)
    raise _Unencodable(f"a value of type {_qualified_name(type(value))}")


def _describe(fn):
    """A function as a description only: it is compared on load, never imported."""
    if isinstance(fn, functools.partial):
        return {"$partial": [_describe(fn.func),
                             _encode(fn.args, None, None, "attribute"),
                             _encode(fn.keywords, None, None, "attribute")]}
    return {"$callable": _qualified_name(fn)}


def _decode(spec, store, path):
    """Inverse of :func:`_encode` (functions excepted: see :func:`_restore_attributes`).

    Anything unexpected in the header is a ValueError naming where it is.
    """
    try:
        return _decode_value(spec, store, path)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed advdetect header: the value of {path!r} cannot be "
                         f"read ({type(exc).__name__}: {exc}).") from None


def _decode_value(spec, store, path):
    if spec is None or isinstance(spec, (bool, int, float, str)):
        return spec
    if isinstance(spec, list):
        return [_decode_value(v, store, path) for v in spec]
    tags = [k for k in spec if k.startswith("$")] if isinstance(spec, dict) else []
    if len(tags) != 1:
        raise ValueError(f"malformed advdetect header: the value of {path!r} is not a "
                         "tagged value")
    tag = tags[0]
    if tag == "$float":
        if spec[tag] not in ("nan", "inf", "-inf"):
            raise ValueError(f"malformed float at {path!r}")
        return float(spec[tag])
    if tag == "$numpy":
        dtype = np.dtype(spec[tag])
        if dtype.kind not in "fiub":
            raise ValueError(f"malformed numpy scalar at {path!r}")
        value = spec["value"]
        if not isinstance(value, (bool, int, float, dict)):
            raise ValueError(f"malformed numpy scalar at {path!r}")
        return dtype.type(_decode_value(value, None, path))
    if tag == "$ndarray":
        return store.array(spec[tag])
    if tag == "$ndarray_values":
        dtype = np.dtype(spec["dtype"])
        if dtype.kind not in "OU":
            raise ValueError(f"malformed array at {path!r}")
        values = _decode_array_values(spec[tag], np.dtype(object))
        return values.astype(dtype).reshape([int(s) for s in spec["shape"]])
    if tag == "$tensor":
        return store.tensor(spec[tag]).clone().requires_grad_(bool(spec["requires_grad"]))
    if tag == "$dataframe":
        return _decode_frame(spec[tag])
    if tag == "$tuple":
        return tuple(_decode_value(v, store, path) for v in spec[tag])
    if tag == "$dict":
        return {_decode_value(k, None, path): _decode_value(v, store, path)
                for k, v in spec[tag]}
    if tag == "$random_state":
        state = np.random.RandomState()
        state.set_state(_decode_value(spec[tag], store, path))
        return state
    if tag == "$optimizer":
        return _resolve_optimizer(spec[tag])
    raise ValueError(f"unknown value type {tag!r} at {path!r}")


def _resolve_optimizer(dotted):
    """A class from ``torch.optim`` by its dotted path; nothing else is imported."""
    prefix = "torch.optim."
    name = dotted[len(prefix):] if isinstance(dotted, str) and dotted.startswith(prefix) else ""
    cls = getattr(torch.optim, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer {dotted!r} is not a torch.optim optimizer class; only "
                         "those are loaded.")
    return cls


class _Store:
    """The tensors of a file by name, aliases included, for decoding.

    Arrays that were one array when saved (two attributes holding the same
    array) are one array again.
    """

    def __init__(self, tensors, aliases):
        self.tensors = {k: _tensor(tensors, v) for k, v in aliases.items()}
        self.tensors.update(tensors)
        self._arrays = {}

    def tensor(self, name):
        return _tensor(self.tensors, name)

    def array(self, name):
        t = self.tensor(name)
        if id(t) not in self._arrays:
            self._arrays[id(t)] = t.numpy().copy()  # a copy: not backed by the file
        return self._arrays[id(t)]


def _tensor(tensors, name):
    if not isinstance(name, str) or name not in tensors:
        raise ValueError(f"the file lacks the tensor {name!r}")
    return tensors[name]


# --------------------------------------------------------------------------- #
# Reading and writing the file
# --------------------------------------------------------------------------- #
def _canonical(header):
    body = {k: v for k, v in header.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True).encode("ascii")


def _digest(header, tensors):
    h = hashlib.sha256(_canonical(header))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(json.dumps([name, str(t.dtype), list(tensors[name].shape)]).encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _is_file_object(path):
    return hasattr(path, "read") or hasattr(path, "write")


def _name(path):
    """How messages name a path or a file object."""
    if _is_file_object(path):
        name = getattr(path, "name", None)
        return repr(name) if isinstance(name, (str, bytes)) else f"the {type(path).__name__}"
    return repr(os.fspath(path))


def _write_file(path, header, tensors):
    """Write ``header`` (with a fresh digest) and ``tensors`` to ``path`` atomically.

    A binary file object (``io.BytesIO``, ``open(..., "wb")``) is written to in
    one ``write`` call at its current position, as ``torch.save`` does.
    """
    from safetensors.torch import save, save_file

    header = dict(header, sha256=_digest(header, tensors))
    metadata = {_METADATA_KEY: json.dumps(header, sort_keys=True, allow_nan=False)}
    if _is_file_object(path):
        if not hasattr(path, "write"):
            raise TypeError(f"save() needs a path or a writable binary file object; "
                            f"got {type(path).__name__}, which has no write().")
        data = save(tensors, metadata=metadata)
        try:
            path.write(data)
        except TypeError:
            raise TypeError("save() writes bytes: open the file in binary mode "
                            "(open(path, 'wb')), or use io.BytesIO, not a text stream.") \
                from None
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {os.fspath(path)!r}: the folder {folder!r} "
                                "does not exist (create it first, e.g. os.makedirs).")
    # A new name beside the target: same file system, so the rename is atomic.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _parse_safetensors(data):
    """``(metadata, tensors)`` of safetensors bytes (``safe_open`` reads paths only).

    The format: an 8-byte little-endian header length, the JSON header (its
    ``"__metadata__"`` holds the string metadata), then the raw buffers, which
    ``safetensors.torch.load`` reads and checks.
    """
    from safetensors.torch import load as load_bytes

    if len(data) < 8:
        raise ValueError("fewer than 8 bytes")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("the header length exceeds the data")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"the header is not UTF-8 ({exc})") from None
    metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
    if not isinstance(metadata, dict):
        raise ValueError("malformed __metadata__")
    return metadata, load_bytes(data)


def _refuse_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _read_file(path):
    """``(header, tensors)`` of an advdetect file, tensors on the CPU; ValueError if not one."""
    from safetensors import SafetensorError, safe_open

    shown = _name(path)
    not_ours = f"{shown} is not an advdetect detector file"
    if _is_file_object(path):
        if not hasattr(path, "read"):
            raise TypeError(f"load() needs a path or a readable binary file object; got "
                            f"{type(path).__name__}, which has no read().")
        data = path.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("load() reads bytes: open the file in binary mode "
                            "(open(path, 'rb')), or use io.BytesIO, not a text stream.")
        try:
            metadata, tensors = _parse_safetensors(bytes(data))
        except (SafetensorError, ValueError) as exc:
            raise ValueError(f"{not_ours}: it is not a safetensors file ({exc}).") from None
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path!r}")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as exc:
            raise ValueError(f"{not_ours}: it is not a safetensors file ({exc}).") from None
    if _METADATA_KEY not in metadata:
        raise ValueError(f"{not_ours}: it is a safetensors file without an advdetect header "
                         "(a plain set of weights, not a saved detector).")
    try:
        header = json.loads(metadata[_METADATA_KEY], parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{not_ours}: its advdetect header is not valid JSON ({exc}).") \
            from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{not_ours}: its header does not name the format {FORMAT_NAME!r}.")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{shown} has an invalid format version {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{shown} was written in format version {version} by advdetect "
            f"{header.get('advdetect_version')!r}; this advdetect reads versions up to "
            f"{FORMAT_VERSION}. Upgrade advdetect to load it.")
    stored = header.get("sha256")
    try:
        actual = _digest(header, tensors)
    except ValueError:  # a number JSON cannot write back (1e999 reads as inf)
        actual = ""
    if not isinstance(stored, str) or not hmac.compare_digest(stored.encode("utf-8"),
                                                              actual.encode("ascii")):
        raise ValueError(f"{shown} is corrupted or was modified after it was saved: its "
                         "SHA-256 digest does not match its contents.")
    return header, tensors


# --------------------------------------------------------------------------- #
# save
# --------------------------------------------------------------------------- #
def save(detector, path):
    """Save a fitted detector to one file that cannot execute code when loaded.

    The file is a safetensors file: the weights of every network and the
    numeric fitted arrays as tensors, and a JSON header with the parameters,
    the other fitted attributes and a SHA-256 digest (see the module
    docstring). The protected classifier's architecture is not stored (its
    weights in the detector's copy are): pass the classifier to :func:`load`
    again. The file is written to a temporary name and renamed, so an
    existing file is replaced only by a complete one.

    Parameters
    ----------
    detector : CMAGDetector, DAFARDetector, MagNetDetector or FeatureSqueezingDetector
        A fitted detector.
    path : str, os.PathLike or binary file object
        File to write (``.safetensors`` is the customary suffix), written to a
        temporary name and renamed; or a writable binary file object
        (``open(path, "wb")``, ``io.BytesIO``), written at its position in
        one call, as ``pickle.dump`` and ``torch.save`` do.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When the detector is not fitted.
    TypeError
        When ``detector`` is not one of advdetect's detector classes, or
        ``path`` is a file object that is not writable in binary mode.
    ValueError
        When a parameter or fitted attribute has a type the format cannot
        store (for example an optimizer from outside ``torch.optim``).

    See Also
    --------
    load : the inverse.

    Examples
    --------
    >>> import json, os, tempfile
    >>> import numpy as np
    >>> from safetensors import safe_open
    >>> from advdetect import FeatureSqueezingDetector
    >>> from advdetect.models import SmallCNN
    >>> from advdetect.persistence import save
    >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    >>> det = FeatureSqueezingDetector(SmallCNN(), device="cpu").fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "squeeze.safetensors")
    ...     save(det, path)
    ...     with safe_open(path, framework="pt") as f:
    ...         header = json.loads(f.metadata()["advdetect"])
    ...         names = sorted(f.keys())
    >>> header["format"], header["class"], header["attributes"]["threshold_"] == det.threshold_
    ('advdetect-detector', 'FeatureSqueezingDetector', True)
    >>> all(name.startswith("classifier_.module.") for name in names)
    True
    """
    classes = _detector_classes()
    if classes.get(type(detector).__name__) is not type(detector):
        raise TypeError(f"save() stores advdetect's detectors ({', '.join(DETECTOR_CLASSES)}); "
                        f"got {_qualified_name(type(detector))}.")
    check_is_fitted(detector)
    from . import __version__

    writer = _Writer()
    params = {}
    for name, value in detector.get_params(deep=False).items():
        if name == "classifier":
            continue
        try:
            params[name] = _encode(value, f"params.{name}", writer, "param")
        except _Unencodable as exc:
            raise ValueError(f"cannot save parameter {name}={value!r}: the format does not "
                             f"store {exc}.") from None
    attributes = {}
    for name in _fitted_names(detector):
        value = getattr(detector, name)
        if isinstance(value, torch.nn.Module):
            for key, tensor in value.state_dict().items():
                writer.add(f"{name}.{key}", tensor)
            attributes[name] = {"$module": _qualified_name(type(value))}
            continue
        try:
            attributes[name] = _encode(value, name, writer, "attribute")
        except _Unencodable as exc:
            raise ValueError(f"cannot save the fitted attribute {name}: the format does not "
                             f"store {exc}.") from None
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "advdetect_version": __version__,
        "torch_version": torch.__version__,
        "class": type(detector).__name__,
        "params": params,
        "attributes": attributes,
        "aliases": writer.aliases,
    }
    _write_file(path, header, writer.tensors)


# --------------------------------------------------------------------------- #
# load
# --------------------------------------------------------------------------- #
def load(path, classifier=None, *, device=None, expected_class=None, strict=True):
    """Load a detector saved by :func:`save`; nothing in the file is executed.

    The detector's networks are built by advdetect's own code from the saved
    parameters and shapes, then filled with the saved weights; the fitted
    attributes are restored from the file. Scores equal those of the saved
    detector (on the same device).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A file written by :func:`save` (or :meth:`BaseDetector.save
        <advdetect.base.BaseDetector.save>`), or a readable binary file
        object holding one (``open(path, "rb")``, ``io.BytesIO``), read from
        its position to its end.
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator, default=None
        The protected classifier, as given to the detector at construction:
        the same architecture and the same weights (checked against the
        saved digest, see ``strict``). The saved weights of the detector's copy (in
        DAFAR's joint mode, the jointly trained ones) are loaded into a new
        copy; the object passed in is never modified. Not needed by
        :class:`~advdetect.MagNetDetector`.
    device : str or None, default=None
        Device to load onto. ``None``: the saved ``device`` parameter, resolved
        by :func:`~advdetect.base.resolve_device` (``"auto"`` is CUDA when
        available; a detector fitted on CUDA loads onto the CPU, with a
        warning, where CUDA is absent). Tensors are always read to the CPU
        first and moved after.
    expected_class : type or None, default=None
        Refuse a file that holds a detector of another class (used by
        :meth:`BaseDetector.load <advdetect.base.BaseDetector.load>`).
    strict : bool, default=True
        Refuse (``ValueError``) a ``classifier`` whose weights or layers
        differ from those of the classifier the detector was fitted on;
        ``False`` warns instead (see Notes).

    Returns
    -------
    detector
        The fitted detector, of the class named in the file.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    ValueError
        When the file is not an advdetect detector file (another safetensors
        file, a torch pickle, random bytes), has a newer format version, fails
        its digest check (tampered or corrupted), names a class outside
        :data:`DETECTOR_CLASSES` or other than ``expected_class``, or when
        ``classifier`` does not match the saved classifier weights (missing
        or unexpected layers, other shapes), or, with ``strict=True``, is not
        the classifier the detector was fitted on (other weights: its SHA-256
        differs from ``classifier_digest_``; other layers, such as a Tanh
        for a ReLU: ``classifier_layout_`` differs).
    TypeError
        When the detector needs a classifier and ``classifier`` is None.

    See Also
    --------
    save : the inverse.

    Notes
    -----
    Why a different classifier is refused rather than warned about: the
    loaded detector scores with its own saved copy of the fitted weights,
    but ``detector.classifier`` is the object passed here, and that is the
    network ``clone(detector).fit(X)``, ``DetectAndPurify`` and Pipelines
    use. A retrained or untrained network would then be guarded by a
    detector calibrated on another one, silently. ``torch``'s
    ``load_state_dict(strict=True)`` refuses a mismatch for the same
    reason; ``strict=False`` here loads anyway, with a warning.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from advdetect import DAFARDetector
    >>> from advdetect.models import SmallCNN
    >>> from advdetect.persistence import load
    >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    >>> victim = SmallCNN()
    >>> det = DAFARDetector(victim, max_epochs=1, anomaly_max_epochs=1, device="cpu",
    ...                     random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     det.save(os.path.join(tmp, "dafar.safetensors"))
    ...     again = load(os.path.join(tmp, "dafar.safetensors"), classifier=victim)
    >>> bool(np.array_equal(again.decision_function(X), det.decision_function(X)))
    True
    """
    header, tensors = _read_file(path)
    name = header.get("class")
    classes = _detector_classes()
    if name not in DETECTOR_CLASSES or name not in classes:
        raise ValueError(f"{_name(path)} holds a {name!r}, which is not one of the "
                         f"detector classes advdetect loads: {', '.join(DETECTOR_CLASSES)}.")
    cls = classes[name]
    if expected_class is not None and not issubclass(cls, expected_class):
        raise ValueError(f"{_name(path)} holds a {name}, not a "
                         f"{expected_class.__name__}; load it with "
                         f"advdetect.persistence.load or {name}.load.")
    return _build(cls, header, tensors, classifier, device, strict)


def _build(cls, header, tensors, classifier, device, strict=True):
    params, attributes, aliases = (header.get(k) for k in ("params", "attributes", "aliases"))
    if not all(isinstance(x, dict) for x in (params, attributes, aliases)) \
            or "image_shape_" not in attributes:
        raise ValueError("malformed advdetect header: it needs the objects params, attributes "
                         "(with image_shape_) and aliases.")
    known = set(cls._get_param_names())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"the file stores parameters {unknown} that {cls.__name__} does not "
                         "have (it was saved by another version of advdetect).")
    store = _Store(tensors, aliases)
    detector = cls()
    detector.set_params(classifier=classifier,
                        **{k: _decode(v, store, f"params.{k}") for k, v in params.items()})
    classifier_spec = attributes.get("classifier_")
    if isinstance(classifier_spec, dict) and "$module" in classifier_spec:
        if classifier is None:
            raise TypeError(f"this {cls.__name__} protects a classifier: pass the same "
                            "architecture it was fitted with as load(path, classifier=...) "
                            "(its saved weights are loaded into the detector's copy).")
        _check_classifier(classifier, store.tensors)
        _check_classifier_identity(classifier, attributes, store, strict)

    target = getattr(detector, "device", "cpu") if device is None else device
    _rebuild(detector, attributes, store, resolve_device(target))
    _restore_attributes(detector, attributes, store)
    detector._eval_mode()
    return detector


def _check_classifier(classifier, state):
    """ValueError unless ``classifier`` has the saved classifier's weight names and shapes."""
    prefix = "classifier_.module."
    saved = {k[len(prefix):]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}
    given = {k: v for k, v in unwrap_classifier(classifier).state_dict().items()}
    missing = sorted(set(saved) - set(given))
    unexpected = sorted(set(given) - set(saved))
    reshaped = [f"{k}: saved {saved[k]}, given {tuple(given[k].shape)}" for k in sorted(saved)
                if k in given and not isinstance(given[k], torch.nn.parameter.UninitializedBuffer)
                and not isinstance(given[k], torch.nn.parameter.UninitializedParameter)
                and tuple(given[k].shape) != saved[k]]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"weights missing from the classifier given: {missing}")
        if unexpected:
            problems.append(f"weights the saved classifier did not have: {unexpected}")
        if reshaped:
            problems.append(f"shapes differ: {reshaped}")
        raise ValueError(
            "the classifier passed to load does not match the architecture the detector was "
            "saved with (" + "; ".join(problems) + "). Pass the same architecture.")


def _check_classifier_identity(classifier, attributes, store, strict):
    """ValueError (a warning with ``strict=False``) unless ``classifier`` is the one fitted.

    The detector scores with its saved copy of the classifier's weights, but
    ``detector.classifier`` is the object passed to :func:`load`, and that is
    what ``clone(detector).fit(X)``, ``DetectAndPurify`` and a Pipeline use: a
    classifier with other weights (retrained, fine-tuned, untrained) or other
    layers would be protected by a detector calibrated on another network.
    """
    from ._fingerprint import classifier_digest, classifier_layout

    saved_digest = attributes.get("classifier_digest_")
    saved_layout = attributes.get("classifier_layout_")
    if saved_digest is None and saved_layout is None:
        warnings.warn("this file was saved before detectors recorded their classifier's "
                      "digest: the classifier passed to load cannot be checked against the "
                      "one the detector was fitted on. Save the detector again to record it.",
                      UserWarning, stacklevel=4)
        return
    module = unwrap_classifier(classifier)
    problems = []
    if saved_layout is not None:
        saved_layout = _decode(saved_layout, store, "classifier_layout_")
        given_layout = classifier_layout(module)
        if tuple(saved_layout) != given_layout:
            saved_set, given_set = set(saved_layout), set(given_layout)
            only_saved = [x for x in saved_layout if x not in given_set]
            only_given = [x for x in given_layout if x not in saved_set]
            problems.append(f"its layers differ (fitted with {only_saved[:5]}, given "
                            f"{only_given[:5]})")
    if saved_digest is not None:
        given_digest = classifier_digest(module)
        if given_digest != saved_digest:
            problems.append(f"its weights differ (SHA-256 of the state_dict: fitted "
                            f"{str(saved_digest)[:12]}..., given {given_digest[:12]}...)")
    if not problems:
        return
    message = (
        "the classifier passed to load is not the one the detector was fitted on: "
        + "; ".join(problems) + ". The detector would score with its saved copy of the "
        "fitted classifier while detector.classifier, which clone(), refitting and "
        "DetectAndPurify use, would be the one passed. Pass the classifier with the weights "
        "the detector was fitted on; if the classifier was retrained, refit the detector on "
        "it (clone(detector).set_params(classifier=new).fit(X_clean)); strict=False loads "
        "anyway, with a warning.")
    if strict:
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def _rebuild(detector, attributes, store, device):
    """Build every network as ``fit`` does, by ``_fit`` on placeholder images, untrained."""
    shape = _decode(attributes["image_shape_"], store, "image_shape_")
    if not (isinstance(shape, tuple) and len(shape) == 3
            and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"malformed advdetect header: image_shape_ is {shape!r}")
    detector.image_shape_ = shape
    detector.flat_input_ = bool(_decode(attributes.get("flat_input_", False), store,
                                        "flat_input_"))
    detector.n_features_in_ = int(np.prod(shape))
    detector.device_ = device
    rng = np.random.default_rng(0)
    value_range = detector._value_range
    if value_range is None:
        X = rng.standard_normal((_N_PLACEHOLDER,) + shape)
    else:
        X = value_range[0] + (value_range[1] - value_range[0]) * rng.random(
            (_N_PLACEHOLDER,) + shape)
    X = X.astype(np.float32)
    # Class labels for detectors that train on them (never all one class, never -1).
    n_classes = _decode(attributes.get("n_classes_", 2), store, "n_classes_")
    y = np.arange(_N_PLACEHOLDER, dtype=np.int64) % max(2, int(n_classes))
    # Silent, and batches of the placeholder's size (batched() pads every batch to
    # batch_size); neither shapes a network. Both parameters are put back after.
    quiet = {k: v for k, v in (("verbose", 0), ("batch_size", _N_PLACEHOLDER))
             if hasattr(detector, k)}
    saved = {k: getattr(detector, k) for k in quiet}
    vars(detector).update(quiet)
    try:
        # The placeholder fit's warnings (a fallback decoder, say) were given at fit time.
        with skip_training(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector._fit(X, y, rng)
    finally:
        vars(detector).update(saved)


def _restore_attributes(detector, attributes, store):
    rebuilt = set(_fitted_names(detector))
    # Files saved before the classifier fingerprints existed still load (the check
    # warned); the rebuilt values, those of the classifier passed, stay.
    missing = sorted(rebuilt - set(attributes) - {"classifier_digest_", "classifier_layout_"})
    if missing:
        raise ValueError(f"the file lacks the fitted attributes {missing} that this version "
                         f"of {type(detector).__name__} sets: refit and save it again.")
    for name, spec in attributes.items():
        if not (isinstance(name, str) and name.endswith("_") and not name.startswith("_")):
            raise ValueError(f"malformed advdetect header: attribute name {name!r}")
        if name == "device_":
            continue  # set by _rebuild to the device loaded onto
        if isinstance(spec, dict) and "$module" in spec:
            _load_module(detector, name, spec["$module"], store.tensors)
        elif _holds_functions(spec):
            current = getattr(detector, name, None)
            try:
                again = _encode(current, name, None, "attribute")
            except _Unencodable:
                again = None
            if again != spec:
                raise ValueError(
                    f"the fitted attribute {name} holds functions, which are rebuilt from the "
                    f"parameters rather than read from the file, and the rebuilt value "
                    f"differs from the saved description: {again!r} != {spec!r}.")
        else:
            setattr(detector, name, _decode(spec, store, name))


def _holds_functions(spec):
    if isinstance(spec, dict):
        if "$callable" in spec or "$partial" in spec:
            return True
        return any(_holds_functions(v) for v in spec.values())
    if isinstance(spec, list):
        return any(_holds_functions(v) for v in spec)
    return False


def _load_module(detector, name, class_name, state):
    module = getattr(detector, name, None)
    if not isinstance(module, torch.nn.Module) or _qualified_name(type(module)) != class_name:
        raise ValueError(f"the saved {name} is a {class_name}, but {type(detector).__name__} "
                         f"builds a {_qualified_name(type(module))} from these parameters.")
    prefix = f"{name}."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        what = "the classifier passed to load does not match the saved classifier" \
            if name == "classifier_" else f"the saved weights of {name} do not fit the network"
        raise ValueError(f"{what}: {exc}") from None
