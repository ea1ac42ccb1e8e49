"""The detector file format: safetensors tensors and a JSON header with a SHA-256 digest.

This module only reads and writes files; it imports nothing from advdetect.
What a detector's state *is* is decided by :class:`advdetect.base.BaseDetector`
(``_get_state`` / ``_from_state``); this module decides how it is written.

**The file.** One `safetensors <https://huggingface.co/docs/safetensors>`_
file. Its tensors are the state dicts of the detector's networks
(``"network/feature_map_reconstructor_/net.0.weight"``), the columns of its calibration metrics
(``"calibration/ssim_fmr"``) and its numeric fitted arrays
(``"value/logistic_coef_"``). Its string metadata holds, under the key
``"advdetect"``, one JSON header:

* ``format`` (:data:`FORMAT_NAME`) and ``format_version``
  (:data:`FORMAT_VERSION`); ``advdetect_version`` and ``torch_version`` of the
  writer; ``class``, the detector's class name;
* ``params``: ``get_params()`` without ``classifier`` (which is passed to
  ``load`` again); values are JSON, with tuples, non-finite floats, numpy
  arrays and ``torch.optim`` classes tagged (see :func:`encode`);
* ``values``: the fitted plain values the detector declares (input
  attributes, classifier shapes and digest, ...), tagged the same way;
* ``networks``: the names of the detector's networks, ``null`` for one
  that was not fitted (DAFAR without C);
* ``calibration``: the calibration columns in order;
* ``offset``: ``offset_`` (moved by ``calibrate``);
* ``sha256``: the SHA-256 digest of the rest of the header and of every
  tensor (name, dtype, shape and bytes).

**Why one safetensors file.** A single file is what users copy, upload and
attach. safetensors' reader parses a length-prefixed JSON header and raw
little-endian buffers and has no code path that can execute anything; any
safetensors tool lists the tensors, and the header is readable with
``safetensors.safe_open(path, "pt").metadata()``.

The digest detects corrupted or edited files; it is not a signature (anyone
who edits a file can recompute it). Safety does not rest on it: nothing in
the file is turned into code. A detector class is looked up by name among
advdetect's registered detector classes, an optimizer only in ``torch.optim``.

**Versions.** Version 1 (advdetect before the structural step of issue 17)
stored every fitted attribute and rebuilt the networks by a placeholder fit;
version 2 stores only the state above. Files of version 1 are refused with a
message that says to refit and save again (nothing was released in format 1).
"""

import contextlib
import hashlib
import hmac
import json
import math
import os
import uuid

import numpy as np
import torch

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "read", "write", "encode", "decode"]

FORMAT_NAME = "advdetect-detector"
#: The version this module writes; it reads this version only.
FORMAT_VERSION = 2

_METADATA_KEY = "advdetect"


class Unencodable(ValueError):
    """A value the format cannot store (raised by :func:`encode`)."""


# --------------------------------------------------------------------------- #
# Values: JSON with a few tags
# --------------------------------------------------------------------------- #
def encode(value, name, tensors):
    """``value`` as JSON, numeric arrays added to ``tensors`` under ``"value/<name>"``.

    Stored as they are: None, bool, int, str, finite float, lists and dicts
    of str keys. Tagged: tuples (``{"$tuple": [...]}``), non-finite floats
    (``{"$float": "inf"}``), numpy scalars (as Python numbers), numpy arrays
    (numeric: a tensor ``{"$array": name, "dtype": ...}``; strings:
    ``{"$strings": [...]}``) and classes of ``torch.optim``
    (``{"$optimizer": "Adam"}``).

    Raises
    ------
    Unencodable
        For anything else (a function, an optimizer from outside
        ``torch.optim``, an arbitrary object).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: encode(v, f"{name}.{k}", tensors) for k, v in value.items()}}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            key = f"value/{name}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
            return {"$array": key}
        if value.dtype.kind in "OUS" and all(isinstance(v, str) for v in value.ravel()):
            return {"$strings": value.tolist()}
    if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) \
            and getattr(torch.optim, value.__name__, None) is value:
        return {"$optimizer": value.__name__}
    raise Unencodable(f"{name}={value!r} ({type(value).__name__})")


def decode(spec, tensors):
    """The inverse of :func:`encode`; ``ValueError`` for a malformed or unknown tag."""
    if spec is None or isinstance(spec, (bool, int, float, str)):
        return spec
    if isinstance(spec, list):
        return [decode(v, tensors) for v in spec]
    if isinstance(spec, dict) and len(spec) == 1:
        (tag, body), = spec.items()
        if tag == "$tuple" and isinstance(body, list):
            return tuple(decode(v, tensors) for v in body)
        if tag == "$dict" and isinstance(body, dict):
            return {k: decode(v, tensors) for k, v in body.items()}
        if tag == "$float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag == "$array" and isinstance(body, str) and body in tensors:
            return tensors[body].numpy().copy()
        if tag == "$strings" and isinstance(body, list):
            return np.asarray(body, dtype=object)
        if tag == "$optimizer" and isinstance(body, str):
            cls = getattr(torch.optim, body, None)
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) \
                    and cls is not torch.optim.Optimizer:
                return cls
            raise ValueError(f"torch.optim has no optimizer {body!r}")
    raise ValueError(f"malformed advdetect header: cannot read the value {spec!r}")


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
        if t.numel():  # an empty tensor has no bytes (and no stride to view them by)
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
            f"{header.get('advdetect_version')!r}; this advdetect reads version "
            f"{FORMAT_VERSION}. Upgrade advdetect to load it.")
    if version < FORMAT_VERSION:
        raise ValueError(
            f"{shown} was written in format version {version} by advdetect "
            f"{header.get('advdetect_version')!r}, before detectors saved only their state; "
            f"this advdetect reads version {FORMAT_VERSION}. Load it with that advdetect "
            "version and refit, or refit the detector here and save it again.")
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


def write(path, header, tensors):
    """Write ``header`` (a JSON-able dict) and ``tensors`` to ``path``, with a digest.

    ``format``, ``format_version`` and ``sha256`` are added to the header.
    Tensors are written from the CPU, each its own copy (safetensors refuses
    tensors that share memory). A path is written to a temporary name beside
    it and renamed (an existing file is replaced only by a complete one); a
    binary file object is written in one ``write`` call.

    Raises
    ------
    FileNotFoundError
        When the folder of ``path`` does not exist.
    TypeError
        When ``path`` is a file object that is not writable in binary mode.
    """
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = dict(header, format=FORMAT_NAME, format_version=FORMAT_VERSION)
    _write_file(path, header, tensors)


def read(path):
    """``(header, tensors)`` of a detector file, tensors on the CPU.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    TypeError
        When ``path`` is a file object that is not readable in binary mode.
    ValueError
        When the file is not an advdetect detector file (another safetensors
        file, a torch pickle, random bytes), is of another format version, or
        fails its digest check (corrupted or edited).
    """
    return _read_file(path)
