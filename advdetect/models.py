"""Victim classifiers: the DAFAR paper's Table 1 architectures and a trainer.

* :class:`MNISTCNN` - DAFAR Table 1, T_M: Conv32-Conv32-MaxPool-Conv64-Conv64-
  MaxPool | FC200-FC200-FC10 (3x3 valid convolutions, ~9.95 M multiply-adds,
  312 K parameters on 1x28x28 input).
* :class:`CIFARCNN` - DAFAR Table 1, T_C, for any 3x32x32 data (CIFAR-10,
  GTSRB rescaled): Conv96x3-MaxPool-Conv192x3-MaxPool | Conv192-Conv1x1(192)-
  Conv1x1(10)-FC200-FC200-FC10. The table gives no padding; we pad the 3x3
  convolutions by 1 so that the 32x32 input survives two poolings (8x8 maps).
* :class:`SmallCNN` - a tiny network for small images (scikit-learn's 8x8
  digits) and fast tests.
* :class:`ResNet18` - torchvision's ResNet-18 written out (the same layers and
  state-dict names, so torchvision's weights load into it), for trying the
  detectors on a residual network with global average pooling.

Every network names its layers and splits them into ``features`` (the feature
extraction layers E, whose output the detectors read by default) and ``head``
(the output layers F), returning logits. :func:`train_classifier` fits one
through skorch and returns the fitted ``NeuralNetClassifier``.
"""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .base import resolve_device, seeded, writable

__all__ = ["MNISTCNN", "CIFARCNN", "SmallCNN", "ResNet18", "RandomShift", "train_classifier"]


def _conv_block(specs, in_channels, padding):
    layers = OrderedDict()
    c = in_channels
    conv_i = pool_i = 0
    for spec in specs:
        if spec == "M":
            pool_i += 1
            layers[f"pool{pool_i}"] = nn.MaxPool2d(2)
        else:
            out, k = spec if isinstance(spec, tuple) else (spec, 3)
            conv_i += 1
            layers[f"conv{conv_i}"] = nn.Conv2d(c, out, k, padding=padding if k > 1 else 0)
            layers[f"relu{conv_i}"] = nn.ReLU()
            c = out
    return nn.Sequential(layers), c


def _fc_head(in_features, hidden, n_classes, prefix=()):
    layers = OrderedDict(prefix)
    layers["flatten"] = nn.Flatten()
    for i, h in enumerate(hidden, 1):
        layers[f"fc{i}"] = nn.Linear(in_features, h)
        layers[f"fc_relu{i}"] = nn.ReLU()
        in_features = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(in_features, n_classes)
    return nn.Sequential(layers)


class MNISTCNN(nn.Module):
    """The MNIST victim of DAFAR Table 1 (T_M).

    Parameters
    ----------
    n_classes : int, default=10
    in_channels : int, default=1
    image_size : int, default=28

    Examples
    --------
    >>> import torch
    >>> MNISTCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes=10, in_channels=1, image_size=28):
        super().__init__()
        self.features, c = _conv_block([32, 32, "M", 64, 64, "M"], in_channels, padding=0)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"MNISTCNN needs images of at least 16 px, got {image_size}")
        self.head = _fc_head(c * side * side, (200, 200), n_classes)

    def forward(self, x):
        return self.head(self.features(x))


class CIFARCNN(nn.Module):
    """The CIFAR-10 victim of DAFAR Table 1 (T_C), for 3x32x32 inputs.

    Parameters
    ----------
    n_classes : int, default=10
    in_channels : int, default=3
    image_size : int, default=32

    Examples
    --------
    >>> import torch
    >>> CIFARCNN()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes=10, in_channels=3, image_size=32):
        super().__init__()
        self.features, c = _conv_block([96, 96, 96, "M", 192, 192, 192, "M"], in_channels,
                                       padding=1)
        side = image_size // 4
        convs = OrderedDict([
            ("conv7", nn.Conv2d(c, 192, 3, padding=1)), ("relu7", nn.ReLU()),
            ("conv8", nn.Conv2d(192, 192, 1)), ("relu8", nn.ReLU()),
            ("conv9", nn.Conv2d(192, 10, 1)), ("relu9", nn.ReLU()),
        ])
        self.head = _fc_head(10 * side * side, (200, 200), n_classes, prefix=convs)

    def forward(self, x):
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """A small CNN for small images and tests: Conv-Conv-MaxPool | FC-FC.

    Parameters
    ----------
    n_classes : int, default=10
    in_channels : int, default=1
    image_size : int, default=8
    width : int, default=16
        Channels of the convolutions.

    Examples
    --------
    >>> import torch
    >>> SmallCNN()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes=10, in_channels=1, image_size=8, width=16):
        super().__init__()
        self.features, c = _conv_block([width, width, "M"], in_channels, padding=1)
        side = image_size // 2
        self.head = _fc_head(c * side * side, (64,), n_classes)

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: conv-bn-relu-conv-bn, shortcut, relu.

    As in torchvision, one ``self.relu`` is called twice in ``forward``, and
    the shortcut is a 1x1 strided convolution with batch normalisation where
    the block changes the channels or the resolution.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 in torchvision's layout (He et al. 2016), written out.

    ``conv1`` (7x7, stride 2) - ``bn1`` - ``relu`` - ``maxpool`` - ``layer1`` ...
    ``layer4`` (two :class:`BasicBlock` each, strides 1, 2, 2, 2) - ``avgpool``
    (global) - ``fc``. The module and parameter names are torchvision's, so
    ``load_state_dict`` takes the weights of ``torchvision.models.resnet18``
    (at ``width=64``). torchvision itself is not needed.

    Parameters
    ----------
    n_classes : int, default=10
    in_channels : int, default=3
    image_size : int, default=224
        Not used (global pooling takes any size of 32 px and more); accepted
        so that :func:`train_classifier` can build it.
    width : int, default=64
        Channels of ``layer1``; the stages have width, 2, 4 and 8 times it.

    Examples
    --------
    >>> import torch
    >>> ResNet18(n_classes=5, width=8)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 5])
    >>> sum(p.numel() for p in ResNet18(n_classes=1000).parameters())
    11689512
    """

    def __init__(self, n_classes=10, in_channels=3, image_size=224, width=64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(2 * width, 2)
        self.layer3 = self._make_layer(4 * width, 2)
        self.layer4 = self._make_layer(8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, n_classes)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample),
                  BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class RandomShift:
    """Collate function that translates each training image by a random offset.

    Used as ``iterator_train__collate_fn`` of a skorch net: the batch is
    zero-padded by ``max_shift`` pixels and every image is cropped back to its
    size at its own random offset in ``[-max_shift, max_shift]`` along each axis
    - in one gather over the batch, with torch's global generator (so
    ``random_state`` makes it reproducible). Small translations are the classic
    augmentation for digit images; the victim of our MNIST benchmarks uses 2 px.

    Parameters
    ----------
    max_shift : int, default=2
        Largest translation in pixels along each axis.

    Examples
    --------
    >>> import torch
    >>> batch = [(torch.ones(1, 6, 6), 0), (torch.ones(1, 6, 6), 1)]
    >>> X, y = RandomShift(max_shift=1)(batch)
    >>> tuple(X.shape), y.tolist()
    ((2, 1, 6, 6), [0, 1])
    """

    def __init__(self, max_shift=2):
        if int(max_shift) != max_shift or max_shift < 0:
            raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
        self.max_shift = int(max_shift)

    def __call__(self, batch):
        from torch.utils.data import default_collate

        X, y = default_collate(batch)
        s = self.max_shift
        if s == 0:
            return X, y
        n, c, h, w = X.shape
        padded = torch.nn.functional.pad(X, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n, 1)) + torch.arange(h)
        dx = torch.randint(0, 2 * s + 1, (n, 1)) + torch.arange(w)
        rows = torch.arange(n)[:, None, None, None]
        return padded[rows, torch.arange(c)[None, :, None, None],
                      dy[:, None, :, None], dx[:, None, None, :]], y

    def __repr__(self):
        return f"RandomShift(max_shift={self.max_shift})"


def _pick_architecture(shape):
    c, h, w = shape
    if h != w:
        raise ValueError(f"the built-in victims need square images, got {h}x{w}")
    if (c, h) == (1, 28):
        return MNISTCNN
    if (c, h) == (3, 32):
        return CIFARCNN
    return SmallCNN


def train_classifier(X, y, arch="auto", max_epochs=10, batch_size=128, lr=1e-3,
                     lr_schedule="constant", max_shift=0, device="auto", random_state=0,
                     verbose=0, **net_params):
    """Train a victim classifier with skorch and return the fitted net.

    Parameters
    ----------
    X : array-like of shape (n_samples, C, H, W)
        Images in [0, 1].
    y : array-like of shape (n_samples,)
        Integer class labels.
    arch : {"auto", "mnist", "cifar", "small", "resnet18"} or nn.Module class, default="auto"
        ``"auto"``: :class:`MNISTCNN` for 1x28x28, :class:`CIFARCNN` for 3x32x32,
        :class:`SmallCNN` otherwise.
    max_epochs, batch_size, lr : training settings (Adam, cross-entropy).
    lr_schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"`` anneals the learning rate to 0 over ``max_epochs``
        (skorch ``LRScheduler`` with ``CosineAnnealingLR``).
    max_shift : int, default=0
        Random translation of the training images by up to this many pixels
        (:class:`RandomShift`); 0 trains on the images as given. The MNIST
        victim of the benchmarks uses ``lr_schedule="cosine", max_shift=2``
        for 30 epochs, which lifts its subset test accuracy above 97 %
        (``benchmarks/bench_victims.py`` compares it with the plain recipe).
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int or None, default=0
    verbose : int, default=0
        skorch's per-epoch log when > 0.
    **net_params
        Passed to ``skorch.NeuralNetClassifier`` (e.g. ``callbacks``).

    Returns
    -------
    skorch.NeuralNetClassifier
        Fitted; its ``module_`` returns logits and ``predict_proba`` applies softmax.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    >>> net = train_classifier(X, np.arange(20) % 2, max_epochs=1, device="cpu")
    >>> net.predict(X).shape
    (20,)
    """
    from skorch import NeuralNetClassifier

    # A read-only array (a memory map, a pandas 3 frame's values) is copied: torch
    # cannot share its memory and warns.
    X = writable(np.asarray(X, dtype=np.float32))
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4:
        raise ValueError(f"X must be images of shape (n, C, H, W); got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-D with one label per image; got shape {y.shape}")
    classes = np.unique(y)
    if not np.issubdtype(y.dtype, np.integer) or classes.min() < 0:
        raise ValueError("y must hold non-negative integer class labels")
    n_classes = int(max(classes.max() + 1, 2))
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    net_params = dict(net_params)
    if lr_schedule == "cosine":
        from skorch.callbacks import LRScheduler

        net_params["callbacks"] = list(net_params.get("callbacks") or []) + [
            ("lr_schedule", LRScheduler(torch.optim.lr_scheduler.CosineAnnealingLR,
                                        T_max=max(int(max_epochs), 1)))]
    if max_shift:
        if "iterator_train__collate_fn" in net_params:
            raise ValueError("max_shift augments through iterator_train__collate_fn; "
                             "pass one or the other")
        net_params["iterator_train__collate_fn"] = RandomShift(max_shift)
    shape = X.shape[1:]
    modules = {"mnist": MNISTCNN, "cifar": CIFARCNN, "small": SmallCNN, "resnet18": ResNet18}
    if arch == "auto":
        module = _pick_architecture(shape)
    elif isinstance(arch, str):
        if arch not in modules:
            raise ValueError(f"arch must be 'auto', {sorted(modules)} or an nn.Module class; "
                             f"got {arch!r}")
        module = modules[arch]
    else:
        module = arch
    with seeded(random_state):
        net = NeuralNetClassifier(
            module,
            module__n_classes=n_classes,
            module__in_channels=shape[0],
            module__image_size=shape[1],
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=None,
            iterator_train__shuffle=True,
            device=resolve_device(device),
            verbose=verbose,
            **net_params,
        )
        net.fit(X, y.astype(np.int64))
    net.module_.eval()
    return net
