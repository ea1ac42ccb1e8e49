"""DAFAR's networks: the feedback decoder D, the feedback autoencoder D(E(.)), the
anomaly detector C and the losses of Eqs. (7) and (8).

Jiliang Liu, Jiaoyang Yi, Xiaodong Lin, Jiayong Shi, Meikang Qiu, *DAFAR:
Defending against Adversaries by Feedback-Autoencoder Reconstruction*,
Section 4.4 and Tables 1-3.

The decoder mirrors the classifier's own feature-extraction layers E. Their
structure is read from one traced forward pass (:func:`trace_encoder`), call
by call, so it works for any ``nn.Module`` whose layers are modules, not only
the paper's victims: every ``Conv2d`` call becomes a ``ConvTranspose2d`` with
the same kernel, stride, padding and dilation and swapped channels, every
``MaxPool2d`` call a max-unpooling at the encoder's own argmax positions
(Table 2), layers that keep the shape (activations, dropout, normalisation)
are skipped, and a residual block becomes a residual decoder block
(:class:`MirrorBlock`). An encoder that cannot be mirrored (fully connected
layers, flat input, unknown layers that change the shape) gets a fallback
decoder instead: the dense one where it is small, the convolutional one
(:class:`ConvFeedbackDecoder`) where a dense projection would be large.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .hooks import as_logits
from .reconstructors import ConvImageDecoder, OutputRange, VectorToImageDecoder

__all__ = [
    "MirrorError",
    "MirrorBlock",
    "trace_encoder",
    "plan_mirror_decoder",
    "FeedbackDecoder",
    "DenseFeedbackDecoder",
    "ConvFeedbackDecoder",
    "make_feedback_decoder",
    "PoolingIndexRecorder",
    "FeedbackAutoencoder",
    "FeedbackLoss",
    "anomaly_hidden_sizes",
    "anomaly_pool_factor",
    "ReconstructionErrorAutoencoder",
]

#: Most error values that the anomaly detector C reads without pooling: 4096
#: (CIFAR-10's 3072 and MNIST's 784 are read as the paper does).
ANOMALY_MAX_FEATURES = 4096


class MirrorError(ValueError):
    """The encoder's structure cannot be mirrored by a decoder."""


# --------------------------------------------------------------------------- #
# Tracing the encoder E
# --------------------------------------------------------------------------- #
def _shape(t):
    return tuple(int(s) for s in t.shape[1:]) if torch.is_tensor(t) else None


def _feeds(prev_out, prev_version, call):
    """Whether ``call`` reads the tensor ``prev_out`` exactly as it was returned."""
    return bool(call.inputs) and call.inputs[0] is prev_out and \
        call.in_versions[0] == prev_version


def _is_chain(call, children, strict):
    """Whether ``call``'s forward is its ``children`` applied one after the other.

    Strict (a block inside the encoder): every child reads the tensor the one
    before returned, untouched (an in-place ``out += identity`` between two
    children bumps the tensor's version and breaks the chain), and the last
    child's output is the call's output. Lenient (the network and the modules
    around the cut, as before): shape-preserving functional operations between
    children are allowed, but no child may read an older tensor (a branch).
    """
    if not children or any(c.n_inputs != 1 or not c.inputs for c in children):
        return False
    if strict:
        prev, version = (call.inputs[0], call.in_versions[0]) if call.inputs else (None, None)
        for c in children:
            if not _feeds(prev, version, c):
                return False
            prev, version = c.output, c.out_version
        return call.output is prev and call.out_version == version
    seen = {id(t) for t in call.inputs[1:]}
    for i, c in enumerate(children):
        if i and id(c.inputs[0]) in seen and c.inputs[0] is not children[i - 1].output:
            return False
        seen.update(id(t) for t in c.inputs)
        if torch.is_tensor(c.output):
            seen.add(id(c.output))
    return True


def trace_encoder(model, feature_layer, x):
    """The calls that compute ``feature_layer``'s output, in execution order.

    Runs ``model(x)`` once with forward hooks on every module
    (:func:`advdetect.nn.tracing.trace_calls`) and follows the recorded
    *calls*: a module called twice (a reused ReLU) appears twice. Containers
    whose forward chains their children (``nn.Sequential``) are opened; a
    module that is not such a chain (a residual block: its shortcut reads the
    block's input, or ``out += identity`` joins the branches) is one unit,
    which :func:`plan_mirror_decoder` mirrors as a block.

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
        ``name``, ``module``, ``n_inputs``, ``in_shape``, ``out_shape`` (per
        sample), ``unit`` (True for a block mirrored as a whole), ``call``
        (position in the forward pass, from 1) and ``n_calls`` (how often
        the module is called in the whole pass) of each step of the encoder.
    later : set of str
        Names of the leaves called after the encoder (by the output layers F).

    Raises
    ------
    MirrorError
        When ``feature_layer`` is called more than once (the hook reads its
        last call), is not called, or lies inside a block that is not a chain.
    """
    from .tracing import trace_calls

    target = model.get_submodule(feature_layer)
    root, recorded, counts = trace_calls(model, x, stop_after=target)
    ends = [c for c in recorded if c.module is target]
    if not ends:
        raise MirrorError(f"feature_layer {feature_layer!r} is not called in the forward pass")
    end = ends[0]
    if counts.get(end.name, 1) > 1:
        parent = end.name.rpartition(".")[0]
        raise MirrorError(
            f"feature_layer {feature_layer!r} is called {counts[end.name]} times in the forward "
            f"pass and the hook reads its last call" + (
                f"; name the module around it (feature_layer={parent!r})" if parent else ""))
    path = set()
    node = end
    while node is not None:
        path.add(id(node))
        node = node.parent

    def expand(call):
        if call.leaf:
            return [call]
        on_path = id(call) in path and call is not end
        children = call.children
        if on_path:
            # Only the children up to the one holding the cut belong to E.
            last = max(i for i, c in enumerate(children) if id(c) in path)
            children = children[:last + 1]
        if _is_chain(call, children, strict=not on_path):
            return [u for c in children for u in expand(c)]
        if on_path:
            raise MirrorError(
                f"the cut {feature_layer!r} lies inside {call.name!r} "
                f"({type(call.module).__name__}), whose forward is not a chain of its "
                f"layers (a residual block): name {call.name!r} or a layer outside it")
        return [call]

    units = expand(root) if root is not end else [root]
    calls = [dict(name=c.name, module=c.module, n_inputs=c.n_inputs, in_shape=c.in_shape,
                  out_shape=c.out_shape, unit=not c.leaf, call=c.index,
                  n_calls=counts.get(c.name, 1)) for c in units]
    encoder = {c.name for c in recorded}
    later = {n for n, k in counts.items() if n in encoder and k > sum(
        1 for c in recorded if c.name == n)}
    later |= {n for n in counts if n not in encoder and n and
              not any(True for _ in model.get_submodule(n).children())}
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


def _where(c):
    return f"{c['name']!r} ({type(c['module']).__name__}, module call {c.get('call', '?')} of " \
        "the forward pass)"


def plan_mirror_decoder(calls, later, image_shape, unpool="indices"):
    """Decoder steps mirroring the traced encoder, in decoding order.

    Every traced call is mirrored, so a module called twice is mirrored twice:
    a ``Conv2d`` call becomes a ``ConvTranspose2d`` with the same kernel,
    stride, padding and dilation and swapped channels, a ``MaxPool2d`` call a
    max-unpooling at the encoder's argmax positions (paper Table 2), a
    resizing pooling an upsampling, and shape-preserving layers (activations,
    dropout, normalisation) nothing. A block traced as a unit (a residual
    block) becomes a residual decoder block (:class:`MirrorBlock`) that
    inverts its channel change and stride. A max-pooling layer called more than
    once is inverted by upsampling (its argmax indices are kept per layer).

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
        With the reason (which module, which call), when the encoder cannot
        be mirrored.
    """
    if not calls:
        raise MirrorError("no layer of the encoder was traced")
    expected = tuple(image_shape)
    if calls[0]["in_shape"] != expected:
        raise MirrorError(f"the encoder's input has shape {calls[0]['in_shape']}, not the "
                          f"image shape {expected}")
    steps, pool_layers = [], []
    for c in calls:
        module, name = c["module"], c["name"]
        if c["n_inputs"] != 1 or c["in_shape"] is None or c["out_shape"] is None:
            raise MirrorError(f"layer {_where(c)} does not map one tensor to one tensor")
        if c["in_shape"] != expected:
            raise MirrorError(f"layer {_where(c)} receives shape {c['in_shape']} but the layer "
                              f"before it returned {expected} (an operation outside "
                              "modules changes the shape)")
        expected = c["out_shape"]
        ins, outs = c["in_shape"], c["out_shape"]
        reused = c.get("n_calls", 1) > 1 or name in later
        if c.get("unit"):
            if len(ins) != 3 or len(outs) != 3:
                raise MirrorError(f"block {_where(c)} maps {ins} to {outs}; only blocks of "
                                  "feature maps (C, H, W) are mirrored")
            stride = tuple(max(1, round(i / o)) for i, o in zip(ins[1:], outs[1:]))
            steps.append(dict(op="block", in_channels=outs[0], out_channels=ins[0],
                              stride=stride, out_size=tuple(ins[1:])))
        elif isinstance(module, nn.Conv2d):
            if len(ins) != 3:
                raise MirrorError(f"Conv2d {_where(c)} has unbatched input")
            steps.append(_conv_step(module, ins, outs))
        elif isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                raise MirrorError(f"MaxPool2d {_where(c)} returns indices")
            if unpool == "indices" and not reused:
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
            raise MirrorError(f"layer {_where(c)} has no mirror")
    if not any(s["op"] in ("conv", "block") for s in steps):
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


class MirrorBlock(nn.Module):
    """The mirror of a residual block: a residual decoder block.

    ``ConvTranspose2d(3x3)`` - ReLU - ``ConvTranspose2d(3x3, stride s)`` mirrors
    the block's two convolutions in reverse order, with its channel change and
    stride inverted; the shortcut is the mirror of the block's projection
    shortcut (a strided ``ConvTranspose2d(1x1)``) where the block changes the
    channels or the resolution, the identity elsewhere. Outputs are cropped
    or zero-padded to the block's input size.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block's output and input (decoding runs backwards).
    stride : (int, int)
        The block's stride (input size over output size).
    out_size : (int, int)
        Spatial size of the block's input.
    """

    def __init__(self, in_channels, out_channels, stride=(1, 1), out_size=None):
        super().__init__()
        stride = _pair(stride)
        op = tuple(s - 1 for s in stride)
        self.out_size = tuple(out_size) if out_size is not None else None
        self.conv1 = nn.ConvTranspose2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=stride, padding=1,
                                        output_padding=op)
        self.shortcut = None if (stride == (1, 1) and in_channels == out_channels) else \
            nn.ConvTranspose2d(in_channels, out_channels, 1, stride=stride, output_padding=op)

    def forward(self, z):
        size = self.out_size
        y = _transposed_conv(self.conv2, F.relu(_transposed_conv(self.conv1, z)))
        short = z if self.shortcut is None else self.shortcut(z)
        if size is not None:
            y, short = _match_size(y, size), _match_size(short, size)
        return y + short


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
        convs = [i for i, s in enumerate(self.steps) if s["op"] in ("conv", "block")]
        self._relu_after = set(convs[:-1])
        for s in self.steps:
            if s["op"] == "conv":
                layer = nn.ConvTranspose2d(
                    s["in_channels"], s["out_channels"], s["kernel_size"], stride=s["stride"],
                    padding=s["padding"], output_padding=s["output_padding"],
                    groups=s["groups"], dilation=s["dilation"])
            elif s["op"] == "block":
                layer = MirrorBlock(s["in_channels"], s["out_channels"], s["stride"],
                                    s["out_size"])
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
            if step["op"] in ("conv", "block"):
                z = _transposed_conv(layer, z) if step["op"] == "conv" else layer(z)
                z = _match_size(z, step["out_size"])
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


class ConvFeedbackDecoder(nn.Module):
    """The convolutional fallback decoder, for features too large for a dense projection.

    :class:`~advdetect.nn.reconstructors.ConvImageDecoder` on the feature map's
    own grid: its size depends on the feature channels, not on the pixel count
    (from a ResNet-18's ``layer4`` at 224 x 224, 1.4 M weights; the dense
    decoder would need 2.5 billion).

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
        self.net = ConvImageDecoder(feature_shape, image_shape, width=width,
                                    value_range=value_range)

    def forward(self, features, pool_indices=()):
        return self.net(features)


def make_feedback_decoder(spec):
    """Build a decoder from a plain-data ``spec`` (``kind`` "mirror", "dense" or "conv")."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "mirror":
        return FeedbackDecoder(**spec)
    if kind == "conv":
        return ConvFeedbackDecoder(**spec)
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
            loss = loss + F.cross_entropy(as_logits(scores, self.output_kind), y.long())
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


def anomaly_pool_factor(image_shape, max_features=ANOMALY_MAX_FEATURES):
    """Average-pooling factor k of the errors C reads: 1 up to ``max_features`` values.

    Table 3's C is fully connected on the flattened error: at 3 x 224 x 224
    its first layer alone would hold 150,528 x 1,024 weights (154 M). For
    images of more than ``max_features`` values, C reads the error averaged
    over k x k patches, k the smallest integer that brings ``C * ceil(H / k)
    * ceil(W / k)`` to ``max_features`` or fewer (k = 7 at 3 x 224 x 224:
    3 x 32 x 32), and its reconstruction is upsampled back (nearest), so the
    anomaly score ``||delta - C(delta)||_2`` keeps its form.

    Examples
    --------
    >>> anomaly_pool_factor((1, 28, 28)), anomaly_pool_factor((3, 32, 32))
    (1, 1)
    >>> anomaly_pool_factor((3, 224, 224))
    7
    """
    c, h, w = image_shape
    if h < 4 or w < 4:
        return 1
    k = 1
    while c * math.ceil(h / k) * math.ceil(w / k) > max_features:
        k += 1
    return k


class ReconstructionErrorAutoencoder(nn.Module):
    """The anomaly detector C (paper Table 3): a fully connected autoencoder.

    ``Linear(d, h) ReLU, Linear(h, b) ReLU, Linear(b, h) ReLU, Linear(h, d) Tanh``
    on the flattened reconstruction error divided by ``scale`` (the width of
    the input range, the largest possible error); the Tanh is scaled back by it.

    Parameters
    ----------
    n_features : int
    hidden : (int, int) or None, default=None
        ``(h, b)``; None: :func:`anomaly_hidden_sizes` of the values C reads.
    scale : float or None, default=1.0
        Output bound; None for unbounded errors (no Tanh).
    image_shape : tuple (C, H, W) or None, default=None
        Shape of the error as an image. Errors of more than 4,096 values are
        read average-pooled (:func:`anomaly_pool_factor`) and C's output is
        upsampled back; None, or smaller errors, read as they are (Table 3).
    """

    def __init__(self, n_features, hidden=None, scale=1.0, image_shape=None):
        super().__init__()
        self.pool = 1 if image_shape is None else anomaly_pool_factor(image_shape)
        self.image_shape = None if image_shape is None else tuple(image_shape)
        if self.pool > 1:
            c, hh, ww = self.image_shape
            self.pooled_shape = (c, math.ceil(hh / self.pool), math.ceil(ww / self.pool))
            n_features = math.prod(self.pooled_shape)
        h, b = hidden if hidden is not None else anomaly_hidden_sizes(n_features)
        self.net = nn.Sequential(
            nn.Linear(n_features, h), nn.ReLU(), nn.Linear(h, b), nn.ReLU(),
            nn.Linear(b, h), nn.ReLU(), nn.Linear(h, n_features))
        self.scale = scale

    def forward(self, delta):
        if self.scale is not None and self.scale != 1:
            # Errors of images on another range than [0, 1] are mapped to [-1, 1] on
            # the way in too, so C sees what it sees for scaled images.
            delta = delta / self.scale
        if self.pool > 1:
            k = self.pool
            z = F.avg_pool2d(delta.reshape(len(delta), *self.image_shape), k, k,
                             ceil_mode=True)
            z = self.net(z.flatten(1)).view(len(delta), *self.pooled_shape)
            # Nearest upsampling by k, cropped: each patch gets its pooled value back.
            _, hh, ww = self.image_shape
            out = z.repeat_interleave(k, -2).repeat_interleave(k, -1)[..., :hh, :ww].flatten(1)
        else:
            out = self.net(delta.flatten(1))
        return out if self.scale is None else self.scale * torch.tanh(out)
