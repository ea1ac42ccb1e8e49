"""The classifier, read in torch: devices, the hooked forward pass, batching, logits.

Torch only (no scikit-learn, no skorch): the detectors' shared way of running
the protected classifier. :class:`HookedClassifier` returns a chosen layer's
activations beside the class scores; :func:`default_feature_layer` chooses
that layer; :func:`batched` maps a function over aligned mini-batches of
numpy arrays without gradients; :func:`as_logits`, :func:`logit_margin` and
:func:`infer_output_kind` read class scores whether the classifier returns
logits or probabilities.
"""

import contextlib
import warnings

import numpy as np
import torch

__all__ = ["resolve_device", "default_feature_layer", "HookedClassifier", "as_logits",
           "logit_margin", "infer_output_kind", "writable", "eval_mode", "batched"]


def resolve_device(device, stacklevel=3):
    """Map ``"auto"`` to ``"cuda"`` when CUDA is available, else ``"cpu"``.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or str or torch.device
        ``"cuda"`` (or ``"mps"``) on a machine without it falls back to the CPU
        with a warning, so a model configured on a GPU machine still runs
        elsewhere.
    stacklevel : int, default=3
        The fallback warning's ``stacklevel`` (3: the caller's caller).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        When ``device`` is not a torch device string (``"gpu"``, ``"tpu"``).

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device: use 'auto', 'cpu', 'cuda' "
                         f"or 'cuda:N' ({exc})") from None
    available = {"cuda": torch.cuda.is_available,
                 "mps": lambda: torch.backends.mps.is_available()}.get(kind)
    if available is not None and not available():
        warnings.warn(f"device={device!r} requested but {kind.upper()} is not available; "
                      "using the CPU.", RuntimeWarning, stacklevel=stacklevel)
        return "cpu"
    return device


_SKIP_AS_FEATURE = (torch.nn.Flatten, torch.nn.Dropout, torch.nn.Identity)


_LINEAR = (torch.nn.Linear, torch.nn.LazyLinear)


def default_feature_layer(module, example_input=None):
    """Name of the layer whose output the detectors read by default.

    With ``example_input`` (what the detectors pass: the first images given to
    ``fit``), one forward pass is traced and the layer is the one whose output
    is the **last feature map with spatial extent**: the last module output
    that is 4-D with H x W > 1, which the head's flatten, global pooling or
    first fully connected layer then reads. A 1 x 1 globally pooled output is
    never chosen. Of the modules returning that very tensor, the layer itself is
    named if it is called once, else the innermost enclosing module called once:
    a residual block whose ReLU is called twice (torchvision's ``BasicBlock``)
    names the block, ``"layer4.1"`` on a ResNet-18 at 224 x 224
    (:func:`advdetect.nn.tracing.spatial_feature_layer`). On the package's own
    networks this is the layer named without tracing: ``"features.pool2"`` for
    :class:`~advdetect.models.MNISTCNN`, ``"head.relu9"`` for
    :class:`~advdetect.models.CIFARCNN`, ``"features.pool1"`` for
    :class:`~advdetect.models.SmallCNN`.

    Without ``example_input``, or when no module returns such a feature map (a
    network of fully connected layers, flat input), the rule reads the
    registration order: the layer feeding the first fully connected layer,
    skipping ``Flatten``, ``Dropout`` and ``Identity`` (for a network of fully
    connected layers only, the layer feeding the last one).

    Parameters
    ----------
    module : torch.nn.Module
    example_input : torch.Tensor or None, default=None
        A small batch in the form ``module`` takes.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        When no layer qualifies (name one with ``feature_layer=...``).

    Examples
    --------
    >>> import torch
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    >>> default_feature_layer(net)
    '2'
    >>> gap = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 10))
    >>> default_feature_layer(gap, torch.zeros(1, 1, 28, 28))
    '1'
    """
    if example_input is not None:
        from .tracing import spatial_feature_layer

        from torch.nn.modules.dropout import _DropoutNd

        try:
            name = spatial_feature_layer(module, example_input,
                                         skip=_SKIP_AS_FEATURE + (_DropoutNd,))
        except (RuntimeError, TypeError):  # a module that refuses hooks: use the names
            name = None
        if name is not None:
            return name
    leaves = [(name, m) for name, m in module.named_modules()
              if name and not list(m.children())]
    linear_at = [i for i, (_, m) in enumerate(leaves) if isinstance(m, _LINEAR)]
    if not linear_at:
        raise ValueError(
            "cannot choose a default feature_layer: the classifier has no fully connected "
            "(nn.Linear) layer. Name the layer to read with feature_layer=...")
    for stop in (linear_at[0], linear_at[-1]):
        before = [name for name, m in leaves[:stop] if not isinstance(m, _SKIP_AS_FEATURE)]
        if before:
            return before[-1]
    raise ValueError(
        "cannot choose a default feature_layer: no layer precedes the classifier's "
        "first fully connected layer. Name the layer to read with feature_layer=...")


class HookedClassifier(torch.nn.Module):
    """A frozen classifier that returns ``(features, class_scores)``.

    Model awareness by a forward hook on the named submodule: one forward pass
    gives both the hidden representation the detectors reconstruct from and
    the output logits.

    Parameters
    ----------
    module : torch.nn.Module
        The classifier (used as is: pass a copy if it must not change).
    feature_layer : str
        Dotted name of the submodule, as in ``module.named_modules()``.
    flat_input : bool, default=False
        Feed the classifier ``(n, C*H*W)`` instead of ``(n, C, H, W)``.
    """

    def __init__(self, module, feature_layer, flat_input=False):
        super().__init__()
        self.module = module
        self.feature_layer = feature_layer
        self.flat_input = flat_input
        try:
            module.get_submodule(feature_layer)
        except AttributeError:
            names = [n for n, _ in module.named_modules() if n]
            raise ValueError(
                f"feature_layer={feature_layer!r} does not exist in "
                f"{type(module).__name__}; its layers are: {names}") from None

    def forward(self, x):
        if self.flat_input:
            x = x.flatten(1)
        captured = []
        # The hook lives for one forward pass only: the module stays free of
        # hooks between calls, so it pickles and deep-copies cleanly.
        handle = self.module.get_submodule(self.feature_layer).register_forward_hook(
            lambda _m, _i, out: captured.append(out))
        try:
            scores = self.module(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"feature_layer {self.feature_layer!r} was not called in the classifier's "
                "forward pass; choose a layer that the forward pass uses.")
        return captured[-1], scores


def as_logits(scores, output_kind):
    """Class scores as logits: probabilities are mapped through ``log``."""
    if output_kind == "proba":
        return torch.log(scores.clamp_min(1e-12))
    return scores


def logit_margin(logits):
    """The classifier's confidence as a logit margin, ``log p_max - log(1 - p_max)``.

    Computed from logits without forming probabilities (``z_max`` minus the
    log-sum-exp of the other logits), so it keeps its resolution where the
    softmax saturates at 1 in float32. Used by the confidence tests of CMAG
    and DAFAR.
    """
    top, idx = logits.max(dim=1, keepdim=True)
    others = logits.scatter(1, idx, float("-inf"))
    return top.squeeze(1) - torch.logsumexp(others, dim=1)


def infer_output_kind(scores):
    """``"proba"`` if every row is a probability vector, else ``"logits"``."""
    s = scores.detach()
    if bool((s >= 0).all()) and bool((s <= 1).all()) and \
            torch.allclose(s.sum(dim=1), torch.ones(len(s), dtype=s.dtype, device=s.device),
                           atol=1e-4):
        return "proba"
    return "logits"


def writable(array):
    """``array``, copied if it is a read-only numpy array, else as it is.

    Every numpy array handed to torch goes through this: torch cannot share the
    memory of a read-only array (a memory map opened with ``mmap_mode="r"``, the
    values of a pandas 3 DataFrame, an unpickled array) and warns "The given NumPy
    array is not writable" (an error under ``-W error``).
    """
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        return array.copy()
    return array


_writable = writable


@contextlib.contextmanager
def eval_mode(module):
    """Eval mode for the block; every submodule's own ``training`` flag restored after.

    ``module.train(was_training)`` would set one flag on every submodule, losing
    a mix (a frozen BatchNorm in a training network); this restores each.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def batched(fn, arrays, batch_size, device, dtype=torch.float32):
    """Apply ``fn`` to aligned mini-batches of numpy ``arrays`` under ``no_grad``.

    ``fn`` returns a tensor or a tuple of tensors per batch; the result is
    one numpy array per tensor, allocated once and filled batch by batch, so
    that peak memory does not grow with the number of samples beyond the
    outputs themselves.

    A short last batch is zero-padded to ``batch_size`` (and the padding
    dropped): torch's float32 kernels pick their summation order from the
    batch shape, so without padding a sample's score would change in the last
    bits with the number of samples scored beside it.
    """
    if not isinstance(arrays, (list, tuple)):
        arrays = (arrays,)
    n = len(arrays[0])
    outs = None
    with torch.no_grad():
        for start in range(0, n, batch_size):
            # A read-only array (a memory map, a pickled array) is copied one batch at
            # a time: torch cannot share its memory and would warn on every call.
            batch = [torch.as_tensor(_writable(a[start:start + batch_size]), dtype=dtype,
                                     device=device) for a in arrays]
            m = len(batch[0])
            if m < batch_size and n > 0:
                batch = [torch.cat([b, b.new_zeros((batch_size - m,) + b.shape[1:])])
                         for b in batch]
            res = fn(*batch)
            single = not isinstance(res, tuple)
            res = (res,) if single else res
            res = [r[:m].detach().cpu().numpy() for r in res]
            if outs is None:
                # One output array per result, filled in place: no per-batch pieces
                # to concatenate (which would double the peak for large outputs), and
                # no small long-lived blocks left between the batches' large buffers,
                # which kept glibc from reusing them (memory grew with n).
                outs = [np.empty((n,) + r.shape[1:], dtype=r.dtype) for r in res]
            for out, r in zip(outs, res):
                out[start:start + m] = r
    if outs is None:
        raise ValueError("cannot run a forward pass on zero samples")
    return outs[0] if single else tuple(outs)


def _probe(module, x):
    """One no-grad forward pass whose failure names the problem."""
    with torch.no_grad():
        try:
            return module(x)
        except RuntimeError as exc:
            if "feature_layer" in str(exc):
                raise ValueError(str(exc)) from exc
            raise ValueError(
                f"the classifier failed on inputs of shape {tuple(x.shape)}: {exc}") from exc
