"""DAFAR's networks: the feedback decoder D, the feedback autoencoder D(E(.)), the
anomaly detector C and the losses of Eqs. (7) and (8).

Jiliang Liu, Jiaoyang Yi, Xiaodong Lin, Jiayong Shi, Meikang Qiu, *DAFAR:
Defending against Adversaries by Feedback-Autoencoder Reconstruction*,
Section 4.4 and Tables 1-3.

The decoder mirrors the classifier's own feature-extraction layers E. Their
structure is read from one traced forward pass (:func:`trace_encoder`), so it
works for any ``nn.Module`` whose layers are modules, not only the paper's
victims: every ``Conv2d`` becomes a ``ConvTranspose2d`` with the same kernel,
stride, padding and dilation and swapped channels, every ``MaxPool2d`` a
max-unpooling at the encoder's own argmax positions (Table 2), and layers that
keep the shape (activations, dropout, normalisation) are skipped. An encoder
that cannot be mirrored (fully connected layers, flat input, unknown layers
that change the shape, layers reused within the forward pass) gets the dense
decoder instead.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .reconstructors import OutputRange, VectorToImageDecoder

__all__ = [
    "MirrorError",
    "trace_encoder",
    "plan_mirror_decoder",
    "FeedbackDecoder",
    "DenseFeedbackDecoder",
    "make_feedback_decoder",
    "PoolingIndexRecorder",
    "FeedbackAutoencoder",
    "FeedbackLoss",
    "anomaly_hidden_sizes",
    "ReconstructionErrorAutoencoder",
]


class MirrorError(ValueError):
    """The encoder's structure cannot be mirrored by a decoder."""


# --------------------------------------------------------------------------- #
# Tracing the encoder E
# --------------------------------------------------------------------------- #
def _shape(t):
    return tuple(int(s) for s in t.shape[1:]) if torch.is_tensor(t) else None


def trace_encoder(model, feature_layer, x):
    """Leaf layers that compute ``feature_layer``'s output, in execution order.

    Runs ``model(x)`` once with forward hooks on every leaf module and records
    each call until ``feature_layer`` has produced its output.

    Parameters
    ----------
    model : torch.nn.Module
    feature_layer : str
        Dotted name of the last layer of the encoder E.
    x : torch.Tensor
        A small batch in the form ``model`` takes.

    Returns
    -------
    calls : list of dict
        ``name``, ``module``, ``in_shape`` and ``out_shape`` (per sample) of each
        leaf call of the encoder.
    later : set of str
        Names of the leaves called after the encoder (by the output layers F).
    """
    target = model.get_submodule(feature_layer)
    calls, later = [], set()
    done = False

    def hook_for(name, module, is_leaf):
        def hook(_module, inputs, output):
            nonlocal done
            if done:
                if is_leaf:
                    later.add(name)
                return
            if is_leaf:
                first = inputs[0] if inputs else None
                calls.append(dict(name=name, module=module, n_inputs=len(inputs),
                                  in_shape=_shape(first), out_shape=_shape(output)))
            if module is target:
                done = True
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            is_leaf = not list(module.children())
            if (is_leaf and name) or module is target:
                handles.append(module.register_forward_hook(hook_for(name, module, is_leaf)))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, later


# --------------------------------------------------------------------------- #
# Planning the mirror
# --------------------------------------------------------------------------- #
_RESIZING_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
_RESHAPES = (nn.Flatten, nn.Unflatten)
_UNSUPPORTED = (nn.Linear, nn.LazyLinear, nn.Bilinear, nn.Conv1d, nn.Conv3d,
                nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding,
                nn.RNNBase, nn.MultiheadAttention)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _skippable(module):
    """Shape-preserving layers with nothing to invert: activations, dropout, norms."""
    if isinstance(module, _UNSUPPORTED) or isinstance(module, nn.Conv2d):
        return False
    has_params = any(True for _ in module.parameters(recurse=False))
    return not has_params or isinstance(module, (_NormBase, nn.GroupNorm, nn.LayerNorm,
                                                 nn.PReLU))


def _conv_step(conv, in_shape, out_shape):
    k, s, d = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    if isinstance(conv.padding, str):
        # "valid" is 0; "same" (stride 1) pads d*(k-1)/2 each side; an odd total
        # is asymmetric, which the size check after the layer absorbs.
        p = (0, 0) if conv.padding == "valid" else tuple(di * (ki - 1) // 2
                                                          for di, ki in zip(d, k))
    else:
        p = _pair(conv.padding)
    target = in_shape[1:]
    base = [(o - 1) * si - 2 * pi + di * (ki - 1) + 1
            for o, si, pi, di, ki in zip(out_shape[1:], s, p, d, k)]
    # Strided convolutions lose up to stride - 1 rows: output_padding restores
    # them where PyTorch allows it; anything else is cropped or padded later.
    op = tuple(t - b if 0 <= t - b < max(si, di) else 0
               for t, b, si, di in zip(target, base, s, d))
    return dict(op="conv", in_channels=conv.out_channels, out_channels=conv.in_channels,
                kernel_size=k, stride=s, padding=p, dilation=d, groups=conv.groups,
                output_padding=op, out_size=tuple(target))


def plan_mirror_decoder(calls, later, image_shape, unpool="indices"):
    """Decoder steps mirroring the traced encoder, in decoding order.

    Parameters
    ----------
    calls, later : the output of :func:`trace_encoder`.
    image_shape : tuple (C, H, W)
        Shape of one input image: the encoder must start from it.
    unpool : {"indices", "upsample"}, default="indices"
        Invert max-pooling by max-unpooling at the encoder's argmax positions
        (paper Table 2) or by nearest-neighbour upsampling.

    Returns
    -------
    steps : list of dict
        Plain data (picklable) describing the decoder layers.
    pool_layers : list of str
        Names of the encoder's max-pooling layers whose indices the decoder
        needs, in encoder order (empty for ``unpool="upsample"``).

    Raises
    ------
    MirrorError
        With the reason, when the encoder cannot be mirrored.
    """
    if not calls:
        raise MirrorError("no layer of the encoder was traced")
    names = [c["name"] for c in calls]
    reused = sorted({n for n in names if names.count(n) > 1} | (set(names) & later))
    if reused:
        raise MirrorError(f"layers {reused} are called more than once in the forward pass")
    expected = tuple(image_shape)
    if calls[0]["in_shape"] != expected:
        raise MirrorError(f"the encoder's input has shape {calls[0]['in_shape']}, not the "
                          f"image shape {expected}")
    steps, pool_layers = [], []
    for c in calls:
        module, name = c["module"], c["name"]
        if c["n_inputs"] != 1 or c["in_shape"] is None or c["out_shape"] is None:
            raise MirrorError(f"layer {name!r} ({type(module).__name__}) does not map one "
                              "tensor to one tensor")
        if c["in_shape"] != expected:
            raise MirrorError(f"layer {name!r} receives shape {c['in_shape']} but the layer "
                              f"before it returned {expected} (an operation outside "
                              "modules changes the shape)")
        expected = c["out_shape"]
        ins, outs = c["in_shape"], c["out_shape"]
        if isinstance(module, nn.Conv2d):
            if len(ins) != 3:
                raise MirrorError(f"Conv2d {name!r} has unbatched input")
            steps.append(_conv_step(module, ins, outs))
        elif isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                raise MirrorError(f"MaxPool2d {name!r} returns indices")
            if unpool == "indices":
                steps.append(dict(op="unpool", index=len(pool_layers),
                                  kernel_size=_pair(module.kernel_size),
                                  stride=_pair(module.stride or module.kernel_size),
                                  padding=_pair(module.padding), out_size=tuple(ins[1:])))
                pool_layers.append(name)
            else:
                steps.append(dict(op="upsample", out_size=tuple(ins[1:])))
        elif isinstance(module, _RESIZING_POOLS):
            steps.append(dict(op="upsample", out_size=tuple(ins[1:])))
        elif isinstance(module, _RESHAPES):
            steps.append(dict(op="reshape", shape=tuple(ins)))
        elif ins == outs and _skippable(module):
            continue
        else:
            raise MirrorError(f"layer {name!r} ({type(module).__name__}) has no mirror")
    if not any(s["op"] == "conv" for s in steps):
        raise MirrorError("the encoder has no convolution to mirror")
    return steps[::-1], pool_layers


# --------------------------------------------------------------------------- #
# Decoders
# --------------------------------------------------------------------------- #
def _match_size(t, size):
    """Crop or zero-pad the spatial dimensions of ``t`` to ``size``."""
    h, w = t.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return t
    t = t[..., :th, :tw]
    return F.pad(t, (0, max(tw - t.shape[-1], 0), 0, max(th - t.shape[-2], 0)))


def _transposed_conv(layer, z):
    """``layer(z)`` for a ``ConvTranspose2d``; with stride 1, as the equivalent convolution.

    A stride-1 transposed convolution is the convolution with the kernel flipped
    spatially, input and output channels swapped, the same dilation and padding
    ``dilation * (kernel - 1) - padding``. On CPU, PyTorch runs ``conv2d``
    through oneDNN but ``conv_transpose2d`` through a slower kernel: at the MNIST
    decoder's shapes the convolution takes 0.4-0.8x the time, which makes
    DAFAR's scoring about 15 % faster. Gradients are the same map, so training
    uses the same path. Strided, grouped or output-padded layers run as they are.
    """
    if (z.device.type != "cpu" or layer.groups != 1 or any(s != 1 for s in layer.stride)
            or any(layer.output_padding) or not isinstance(layer.padding, tuple)):
        return layer(z)
    pad = tuple(d * (k - 1) - p for k, p, d in zip(layer.kernel_size, layer.padding,
                                                   layer.dilation))
    if min(pad) < 0:
        return layer(z)
    weight = layer.weight.flip(-1, -2).transpose(0, 1)
    return F.conv2d(z, weight, layer.bias, padding=pad, dilation=layer.dilation)


class FeedbackDecoder(nn.Module):
    """The feedback decoder D that mirrors the encoder E (paper Table 2).

    Transposed convolutions are followed by ReLU, except the last, whose output
    goes to the input range through :class:`OutputRange`: ``low + (high - low)
    * sigmoid(t)``. That is the paper's Tanh output rescaled, since
    ``sigmoid(t) = (1 + tanh(t / 2)) / 2``, for images in [0, 1] rather than
    [-1, 1].

    Parameters
    ----------
    steps : list of dict
        From :func:`plan_mirror_decoder`.
    image_shape : tuple (C, H, W)
    value_range : (float, float) or None, default=(0, 1)

    Examples
    --------
    >>> import torch
    >>> from advdetect.models import MNISTCNN
    >>> net = MNISTCNN().eval()
    >>> calls, later = trace_encoder(net, "features.pool2", torch.zeros(1, 1, 28, 28))
    >>> steps, pools = plan_mirror_decoder(calls, later, (1, 28, 28))
    >>> [s["op"] for s in steps], pools
    (['unpool', 'conv', 'conv', 'unpool', 'conv', 'conv'], ['features.pool1', 'features.pool2'])
    """

    def __init__(self, steps, image_shape, value_range=(0.0, 1.0)):
        super().__init__()
        self.steps = [dict(s) for s in steps]
        self.image_shape = tuple(image_shape)
        self.layers = nn.ModuleList()
        convs = [i for i, s in enumerate(self.steps) if s["op"] == "conv"]
        self._relu_after = set(convs[:-1])
        for s in self.steps:
            if s["op"] == "conv":
                layer = nn.ConvTranspose2d(
                    s["in_channels"], s["out_channels"], s["kernel_size"], stride=s["stride"],
                    padding=s["padding"], output_padding=s["output_padding"],
                    groups=s["groups"], dilation=s["dilation"])
            elif s["op"] == "unpool":
                layer = nn.MaxUnpool2d(s["kernel_size"], s["stride"], s["padding"])
            elif s["op"] == "upsample":
                layer = nn.Upsample(size=s["out_size"], mode="nearest")
            else:
                layer = nn.Sequential(nn.Flatten(), nn.Unflatten(1, s["shape"]))
            self.layers.append(layer)
        self.output = OutputRange(value_range)

    def forward(self, features, pool_indices=()):
        z = features
        for i, (step, layer) in enumerate(zip(self.steps, self.layers)):
            if step["op"] == "conv":
                z = _match_size(_transposed_conv(layer, z), step["out_size"])
                if i in self._relu_after:
                    z = F.relu(z)
            elif step["op"] == "unpool":
                z = layer(z, pool_indices[step["index"]], output_size=step["out_size"])
            else:
                z = layer(z)
        c, h, w = self.image_shape
        z = _match_size(z.reshape(len(z), c, *z.shape[-2:]), (h, w))
        return self.output(z)


class DenseFeedbackDecoder(nn.Module):
    """The fallback decoder: a dense projection and transposed convolutions.

    For encoders that cannot be mirrored. It reads the flattened features and
    is :class:`~advdetect.nn.reconstructors.VectorToImageDecoder` (a two-layer
    perceptron for inputs under 4 px a side).

    Parameters
    ----------
    feature_shape : tuple
        Shape of one sample's features.
    image_shape : tuple (C, H, W)
    width : int, default=32
    value_range : (float, float) or None, default=(0, 1)
    """

    def __init__(self, feature_shape, image_shape, width=32, value_range=(0.0, 1.0)):
        super().__init__()
        self.net = VectorToImageDecoder(int(math.prod(feature_shape)), image_shape, width=width,
                                        value_range=value_range)

    def forward(self, features, pool_indices=()):
        return self.net(features.flatten(1))


def make_feedback_decoder(spec):
    """Build a decoder from a plain-data ``spec`` (``kind`` "mirror" or "dense")."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "mirror":
        return FeedbackDecoder(**spec)
    return DenseFeedbackDecoder(**spec)


# --------------------------------------------------------------------------- #
# The feedback autoencoder D(E(.))
# --------------------------------------------------------------------------- #
class PoolingIndexRecorder:
    """Record the argmax indices of max-pooling layers in one forward pass.

    Inside :meth:`recording`, the pooling layers return their indices from the
    same pass (``return_indices`` is switched on for the block) and a forward
    hook keeps them and hands the values on, so the classifier's output is
    unchanged. The hooks exist for the block only: no hook and no hook handle
    is part of a fitted detector. (Torch numbers hooks with a per-process
    counter; a hook pickled under its number from the fitting process was
    replaced, in a new process, by a later registration that drew the same
    number, and the layer then handed ``(values, indices)`` to the next layer.)
    """

    def __init__(self, pool_modules):
        self.pool_modules = list(pool_modules)
        self.indices = [None] * len(self.pool_modules)
        self.forced = [False] * len(self.pool_modules)

    @contextlib.contextmanager
    def recording(self):
        """Let the pooling layers compute their indices in the forward pass itself.

        Saves the second max-pooling per layer (about 10 % of DAFAR's scoring
        time on MNIST). A layer's own ``return_indices`` is restored, and the
        hooks removed, on exit.
        """
        saved = [m.return_indices for m in self.pool_modules]
        handles = []
        try:
            for i, m in enumerate(self.pool_modules):
                _drop_pickled_record_hooks(m)
                # First, so that every other hook (the feature hook) sees the values only.
                handles.append(m.register_forward_hook(_RecordHook(self, i), prepend=True))
                self.forced[i] = not saved[i]
                m.return_indices = True
            yield self
        finally:
            for h in handles:
                h.remove()
            for m, r in zip(self.pool_modules, saved):
                m.return_indices = r
            self.forced = [False] * len(self.pool_modules)

    def take(self):
        out, self.indices = self.indices, [None] * len(self.pool_modules)
        if any(o is None for o in out):
            raise RuntimeError("a max-pooling layer of the encoder was not called")
        return out


def _drop_pickled_record_hooks(module):
    """Remove the permanent record hooks that detectors pickled before issue 14 carry."""
    for key, hook in list(module._forward_hooks.items()):
        if isinstance(hook, _RecordHook):
            del module._forward_hooks[key]
            module._forward_hooks_with_kwargs.pop(key, None)
            module._forward_hooks_always_called.pop(key, None)


class _RecordHook:
    """The forward hook of :class:`PoolingIndexRecorder` (a class, so old pickles load)."""

    def __init__(self, recorder, i):
        self.recorder, self.i = recorder, i

    def __call__(self, m, inputs, output):
        if isinstance(output, tuple):
            self.recorder.indices[self.i] = output[1]
            # Values only when recording() asked for the indices; a layer built
            # with return_indices=True keeps returning its pair.
            return output[0] if self.recorder.forced[self.i] else None
        # A pooling layer that ignores return_indices: recompute them.
        with torch.no_grad():
            _, idx = F.max_pool2d(inputs[0], m.kernel_size, m.stride, m.padding, m.dilation,
                                  ceil_mode=m.ceil_mode, return_indices=True)
        self.recorder.indices[self.i] = idx
        return None


class FeedbackAutoencoder(nn.Module):
    """D(E(x)): the classifier's encoder E followed by the feedback decoder D.

    Returns ``(reconstruction, class_scores)`` from one classifier forward.

    Parameters
    ----------
    classifier : torch.nn.Module
        Returns ``(features, class_scores)`` (a
        :class:`~advdetect.base.HookedClassifier`).
    decoder : dict
        Spec for :func:`make_feedback_decoder`; the decoder is built here so
        that skorch creates fresh weights on each fit.
    pool_layers : list of torch.nn.MaxPool2d, default=()
        The encoder's max-pooling layers whose indices the decoder unpools at.
    train_classifier : bool, default=False
        Joint training (Eq. 7). When False the classifier stays frozen in eval
        mode and runs without gradients (plug-in mode).
    """

    def __init__(self, classifier, decoder, pool_layers=(), train_classifier=False):
        super().__init__()
        self.classifier = classifier
        self.decoder = make_feedback_decoder(decoder)
        self.train_classifier = train_classifier
        self.recorder = PoolingIndexRecorder(pool_layers) if pool_layers else None

    def train(self, mode=True):
        super().train(mode)
        if not self.train_classifier:
            self.classifier.eval()
        return self

    def forward(self, x):
        with torch.set_grad_enabled(self.train_classifier and torch.is_grad_enabled()):
            if self.recorder is None:
                features, scores = self.classifier(x)
                indices = ()
            else:
                with self.recorder.recording():
                    features, scores = self.classifier(x)
                indices = self.recorder.take()
        return self.decoder(features, indices), scores


class FeedbackLoss(nn.Module):
    """Loss of the feedback autoencoder, paper Eq. (7).

    ``mean over the batch of ||x - D(E(x))||_2`` (per-sample L2 norm), plus the
    cross-entropy of the classifier's output when training jointly.

    Parameters
    ----------
    reconstruction : {"l2", "squared"}, default="l2"
        The paper's per-sample L2 norm, or its square (summed over pixels).
    classification : bool, default=False
        Add ``cross_entropy(F(E(x)), y)`` (joint mode).
    output_kind : {"logits", "proba"}, default="logits"
        What the classifier returns; probabilities are mapped through ``log``.
    data_range : float, default=1.0
        Width of the input range: the reconstruction error is measured in its
        units, ``||(x - D(E(x))) / data_range||``, so that its balance with the
        cross-entropy is the paper's (images in [0, 1]) whatever the scale.
    """

    def __init__(self, reconstruction="l2", classification=False, output_kind="logits",
                 data_range=1.0):
        super().__init__()
        self.reconstruction = reconstruction
        self.classification = classification
        self.output_kind = output_kind
        self.data_range = data_range

    def forward(self, y_pred, x, y=None):
        recon, scores = y_pred
        diff = x - recon if self.data_range == 1 else (x - recon) / self.data_range
        sq = diff.flatten(1).pow(2).sum(dim=1)
        per_sample = sq if self.reconstruction == "squared" else torch.sqrt(sq + 1e-12)
        loss = per_sample.mean()
        if self.classification:
            logits = scores if self.output_kind == "logits" else \
                torch.log(scores.clamp_min(1e-12))
            loss = loss + F.cross_entropy(logits, y.long())
        return loss


# --------------------------------------------------------------------------- #
# The anomaly detector C
# --------------------------------------------------------------------------- #
def anomaly_hidden_sizes(n_features):
    """Hidden sizes ``(h, b)`` of C for flattened errors of ``n_features`` values.

    Paper Table 3 gives (256, 32) for MNIST (784) and (512, 64) for CIFAR-10
    (3072). Other sizes follow the power law through those two points,
    ``h = 256 * (d / 784) ** 0.508``, within [8, 1024], with ``b = h / 8``.

    Examples
    --------
    >>> anomaly_hidden_sizes(784), anomaly_hidden_sizes(3072), anomaly_hidden_sizes(64)
    ((256, 32), (512, 64), (72, 9))
    """
    exponent = math.log(512 / 256) / math.log(3072 / 784)
    h = 256 * (n_features / 784) ** exponent
    h = int(round(min(max(h, 8), 1024)))
    return h, max(2, int(round(h / 8)))


class ReconstructionErrorAutoencoder(nn.Module):
    """The anomaly detector C (paper Table 3): a fully connected autoencoder.

    ``Linear(d, h) ReLU, Linear(h, b) ReLU, Linear(b, h) ReLU, Linear(h, d) Tanh``
    on the flattened reconstruction error divided by ``scale`` (the width of
    the input range, the largest possible error); the Tanh is scaled back by it.

    Parameters
    ----------
    n_features : int
    hidden : (int, int) or None, default=None
        ``(h, b)``; None: :func:`anomaly_hidden_sizes`.
    scale : float or None, default=1.0
        Output bound; None for unbounded errors (no Tanh).
    """

    def __init__(self, n_features, hidden=None, scale=1.0):
        super().__init__()
        h, b = hidden if hidden is not None else anomaly_hidden_sizes(n_features)
        self.net = nn.Sequential(
            nn.Linear(n_features, h), nn.ReLU(), nn.Linear(h, b), nn.ReLU(),
            nn.Linear(b, h), nn.ReLU(), nn.Linear(h, n_features))
        self.scale = scale

    def forward(self, delta):
        delta = delta.flatten(1)
        if self.scale is None:
            return self.net(delta)
        # Errors of images on another range than [0, 1] are mapped to [-1, 1] on
        # the way in too, so C sees what it sees for scaled images.
        out = self.net(delta if self.scale == 1 else delta / self.scale)
        return self.scale * torch.tanh(out)
