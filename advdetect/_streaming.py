"""Inputs read one batch at a time: memory maps, large arrays, torch Datasets and DataLoaders.

scikit-learn validates the whole of ``X`` before it computes anything, which
needs ``X`` in memory and, for a float64 array or a NaN/range check, one or more
passes over (and copies of) all of it. A detector scores images one batch at a
time anyway (:func:`advdetect.base.batched`), so for inputs that need it the
validation moves into the batch loop: :class:`StreamedImages` hands ``batched``
one validated batch at a time. Results are the same as for the in-memory array:
every batch goes through the same checks and the same forward pass.

What streams (:func:`streams`):

* a ``numpy.memmap`` (``np.load(..., mmap_mode="r")``, ``np.memmap``) of any
  size: it is read batch by batch, never copied whole, and the pages of a batch
  already scored are handed back to the kernel (``madvise(MADV_DONTNEED)``), so
  the process's resident memory does not grow with the file;
* a numpy array larger than :data:`STREAM_BYTES`;
* a ``torch.utils.data.Dataset`` (map-style, with ``len``) or ``DataLoader``
  yielding images or ``(images, labels)`` tuples, in the order it yields them.
"""

import mmap

import numpy as np
import torch
from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset,
                              SequentialSampler)

__all__ = ["STREAM_BYTES", "StreamedImages", "is_torch_data", "materialize", "streams"]

#: In-memory arrays above this size are validated batch by batch (bytes).
STREAM_BYTES = 64 * 2**20


def is_torch_data(X):
    """Whether ``X`` is a torch ``Dataset`` or ``DataLoader``."""
    return isinstance(X, (Dataset, DataLoader))


def streams(X, batch_size):
    """Whether scoring ``X`` should validate and read it one batch at a time."""
    if is_torch_data(X):
        return True
    if not isinstance(X, np.ndarray) or X.ndim < 2 or len(X) <= batch_size:
        return False
    return isinstance(X, np.memmap) or X.nbytes > STREAM_BYTES


def _images_of(batch):
    """The images of a loader batch: the first element of an ``(images, labels)`` tuple."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("the DataLoader yielded an empty batch")
        return batch[0]
    if isinstance(batch, dict):
        raise TypeError("the DataLoader yields dicts; a detector needs batches of images or "
                        "(images, labels) tuples.")
    return batch


def _loader(X, batch_size):
    """``X`` as a DataLoader (a Dataset is read in order, ``batch_size`` items at a time)."""
    if isinstance(X, DataLoader):
        return X
    return DataLoader(X, batch_size=batch_size, shuffle=False)


def _n_samples(loader):
    """Number of samples ``loader`` yields, known without iterating it."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        try:
            return len(dataset)
        except TypeError:
            raise TypeError(
                "an IterableDataset without __len__ cannot be scored in a stream: the "
                "number of samples must be known before the first batch. Give it a "
                "__len__, or pass a map-style Dataset or a numpy.memmap.") from None
    sampler = loader.batch_sampler
    # Scores come back in the order the loader yields; a shuffling sampler would pair
    # them with the wrong samples of the dataset, silently.
    order = loader.sampler if sampler is None or type(sampler) is not BatchSampler \
        else sampler.sampler
    if not isinstance(order, SequentialSampler):
        raise ValueError(
            f"the DataLoader draws its samples with {type(order).__name__}, not in order: the "
            "scores would not line up with the dataset. Pass a DataLoader with shuffle=False "
            "(and no sampler=), or the Dataset itself.")
    if sampler is None:  # automatic batching off: one sample per item
        return len(loader.sampler)
    if type(sampler) is BatchSampler:
        n = len(sampler.sampler)
        return n - n % sampler.batch_size if sampler.drop_last else n
    raise TypeError(
        f"a DataLoader with a custom batch_sampler ({type(sampler).__name__}) yields an "
        "unknown number of samples; pass a DataLoader with batch_size= (and sampler=) "
        "instead, or the Dataset itself.")


def _page_releaser(X):
    """A function that hands the pages of a contiguous slice of memmap ``X`` back.

    ``madvise(MADV_DONTNEED)`` on a shared file mapping only unmaps the pages
    from this process (the data stays in the file and the page cache), so the
    resident memory of a process reading a large file stays that of one batch.
    Not for private (``mode="c"``) maps, whose changes it would discard, nor
    where the platform has no ``madvise``.
    """
    mm = getattr(X, "_mmap", None)
    if (mm is None or getattr(X, "mode", "c") == "c" or not hasattr(mm, "madvise")
            or not hasattr(mmap, "MADV_DONTNEED")):
        return lambda chunk: None
    try:
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError):
        return lambda chunk: None
    page, size = mmap.PAGESIZE, len(mm)

    def release(chunk):
        if not chunk.flags.c_contiguous:
            return
        start = chunk.ctypes.data - base
        stop = start + chunk.nbytes
        start = -(-start // page) * page  # whole pages inside the chunk only
        stop = min(stop // page * page, size)
        if 0 <= start < stop:
            try:
                mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
            except (OSError, ValueError):
                pass
    return release


def _array_batches(X, batch_size):
    release = _page_releaser(X)
    for start in range(0, len(X), batch_size):
        chunk = X[start:start + batch_size]
        yield chunk
        # The consumer asks for the next batch once it has scored this one.
        release(chunk)


class StreamedImages:
    """Validated images of ``X``, read one batch at a time, in order.

    A sequence as :func:`advdetect.base.batched` reads it: ``len`` and
    consecutive slices ``[start:stop]``. Each raw batch of ``X`` goes through
    ``check`` (the detector's own validation of an in-memory array) when it is
    read, so a NaN, a value out of range or a wrong shape is reported by the
    same error as for an array, for the batch that holds it.

    Parameters
    ----------
    X : numpy.ndarray, numpy.memmap, torch Dataset or DataLoader
    check : callable
        Maps one raw batch to float32 ``(m, C, H, W)`` images.
    batch_size : int
        Batch size of reading a numpy array or a Dataset (a DataLoader keeps
        its own; its batches are split or joined as the consumer asks).
    """

    def __init__(self, X, check, batch_size):
        if isinstance(X, np.ndarray):
            self._n = len(X)
            self._raw = _array_batches(X, batch_size)
        else:
            loader = _loader(X, batch_size)
            self._n = _n_samples(loader)
            self._raw = (_images_of(b) for b in loader)
        if self._n == 0:
            raise ValueError("X holds no images (0 samples); a detector needs at least one.")
        self._check = check
        self._pending = None
        self._pos = 0

    def __len__(self):
        return self._n

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1) or \
                (key.start or 0) != self._pos:
            raise TypeError("streamed images are read once, in order, by consecutive slices")
        stop = self._n if key.stop is None else min(key.stop, self._n)
        pieces, need = [], stop - self._pos
        while need > 0:
            if self._pending is None or len(self._pending) == 0:
                raw = next(self._raw, None)
                if raw is None:
                    raise ValueError(f"the data ended after {stop - need} samples, but "
                                     f"reported {self._n}")
                self._pending = self._check(raw)
            piece, self._pending = self._pending[:need], self._pending[need:]
            pieces.append(piece)
            need -= len(piece)
        self._pos = stop
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def materialize(X, y=None):
    """``(images, labels)`` of a Dataset or DataLoader as numpy arrays, for ``fit``.

    A detector trains on all its clean images at once (skorch shuffles them
    every epoch), so ``fit`` reads a Dataset or DataLoader whole. Labels of
    ``(images, labels)`` batches become ``y`` when ``y`` is None. Anything else
    is returned as it is.
    """
    if not is_torch_data(X):
        return X, y
    images, labels = [], []
    for batch in _loader(X, 256):
        if isinstance(batch, (list, tuple)) and len(batch) > 1:
            labels.append(np.asarray(batch[1]))
        batch = _images_of(batch)
        images.append(batch.detach().cpu().numpy() if torch.is_tensor(batch)
                      else np.asarray(batch))
    if not images:
        raise ValueError("X holds no images (0 samples); a detector needs at least one.")
    if y is None and len(labels) == len(images):
        y = np.concatenate(labels)
    return np.concatenate(images), y
