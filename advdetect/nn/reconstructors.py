"""Reconstruction networks shared by the detectors.

All are sized from shapes known at fit time, so they work for any classifier
and image size. Two designs reconstruct an image from a classifier's
representation:

* **dense** (:class:`VectorToImageDecoder`): a dense projection of the
  flattened input to a quarter-resolution grid, then two stride-2 transposed
  convolutions (cropped to the image size); a two-layer perceptron for inputs
  under 4 px a side (the flat vectors of scikit-learn's common checks). Its
  projection has ``in_features * width * ceil(H / 4) * ceil(W / 4)`` weights:
  1.6 M from the MNIST CNN's features, but 2.5 billion from a ResNet-18's
  ``layer4`` at 224 x 224.
* **conv** (:class:`ConvImageDecoder`): convolutional from the feature map's
  own grid, with stride-2 upsampling stages up to the image size; its size
  depends on the channels, not on the pixel count.

``design="auto"`` (:func:`choose_design`) keeps the dense design where its
projection has at most :data:`DENSE_MAX_WEIGHTS` weights and switches to the
convolutional one above.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CropTo", "OutputRange", "VectorToImageDecoder", "ConvImageDecoder",
           "ImageToImageReconstructor", "DENSE_MAX_WEIGHTS", "dense_projection_weights",
           "choose_design"]

#: Largest dense projection (in weights) that ``design="auto"`` builds: 2**22,
#: about 4.2 M weights (16 MB in float32). Above it the convolutional design is
#: built. The package's own victims stay below, at their default feature layers:
#: MNISTCNN 1.6 M (1x28x28), CIFARCNN 1.3 M (3x32x32), SmallCNN 33 K (8x8 digits).
DENSE_MAX_WEIGHTS = 2 ** 22


class CropTo(nn.Module):
    """Crop a feature map's spatial size to ``size`` after upsampling an odd-sized map.

    Shared by every decoder that doubles its resolution stage by stage (MagNet's
    autoencoder, Defense-GAN's generator): ``(n, C, H', W') -> (n, C, *size)``.

    Parameters
    ----------
    size : tuple of int
        ``(H, W)``, at most the input's spatial size.

    Examples
    --------
    >>> import torch
    >>> CropTo((7, 7))(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 3, 7, 7])
    """

    def __init__(self, size):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x):
        return x[:, :, :self.size[0], :self.size[1]]

    def extra_repr(self):
        return f"size={self.size}"


class OutputRange(nn.Module):
    """Squash to ``[low, high]`` with a sigmoid; identity when ``value_range`` is None."""

    def __init__(self, value_range=(0.0, 1.0)):
        super().__init__()
        self.value_range = None if value_range is None else tuple(map(float, value_range))

    def forward(self, x):
        if self.value_range is None:
            return x
        low, high = self.value_range
        return low + (high - low) * torch.sigmoid(x)

    def to_unit(self, x):
        """``x`` mapped from ``value_range`` to [0, 1] (unchanged for (0, 1) or None).

        What a network whose input is an image in this range applies first, so
        that it sees the [0, 1] images it was designed for.
        """
        if self.value_range is None or self.value_range == (0.0, 1.0):
            return x
        low, high = self.value_range
        return (x - low) / (high - low)


def _is_image(shape):
    return shape[1] >= 4 and shape[2] >= 4


def dense_projection_weights(in_features, image_shape, width=32):
    """Weights of :class:`VectorToImageDecoder`'s projection for these shapes.

    Examples
    --------
    >>> dense_projection_weights(64 * 4 * 4, (1, 28, 28))
    1605632
    >>> dense_projection_weights(512 * 7 * 7, (3, 224, 224))
    2517630976
    """
    c, h, w = image_shape
    if not _is_image(image_shape):
        return int(in_features) * max(16, 4 * width)
    return int(in_features) * width * math.ceil(h / 4) * math.ceil(w / 4)


def choose_design(design, in_features, image_shape, width=32):
    """Resolve ``design`` (``"auto"``, ``"dense"`` or ``"conv"``) to ``"dense"`` or ``"conv"``.

    ``"auto"`` is ``"dense"`` where the dense projection has at most
    :data:`DENSE_MAX_WEIGHTS` weights, else ``"conv"``. An output that is not an
    image (under 4 px a side: flat tabular rows) is always ``"dense"`` (its
    perceptron grows linearly with the input).

    Examples
    --------
    >>> choose_design("auto", 1024, (1, 28, 28)), choose_design("auto", 25088, (3, 224, 224))
    ('dense', 'conv')
    """
    if design not in ("auto", "dense", "conv"):
        raise ValueError(f"design must be 'auto', 'dense' or 'conv', got {design!r}")
    if not _is_image(image_shape):
        return "dense"
    if design != "auto":
        return design
    if dense_projection_weights(in_features, image_shape, width) <= DENSE_MAX_WEIGHTS:
        return "dense"
    return "conv"


class VectorToImageDecoder(nn.Module):
    """Reconstruct an image from a vector (CMAG's FMR and LR).

    Parameters
    ----------
    in_features : int
        Size of the (flattened) input: the feature maps for FMR, the number of
        classes for LR.
    image_shape : tuple (C, H, W)
    width : int, default=32
        Channels of the transposed-convolution stack.
    value_range : (float, float) or None, default=(0, 1)
        Range of the output pixels.
    """

    def __init__(self, in_features, image_shape, width=32, value_range=(0.0, 1.0)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        if _is_image(self.image_shape):
            self.base = (width, math.ceil(h / 4), math.ceil(w / 4))
            self.project = nn.Sequential(
                nn.Flatten(), nn.Linear(in_features, width * self.base[1] * self.base[2]),
                nn.ReLU())
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(width, c, 4, stride=2, padding=1))
        else:
            self.base = None
            hidden = max(16, 4 * width)
            self.project = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
            self.upsample = nn.Linear(hidden, c * h * w)
        self.output = OutputRange(value_range)

    def forward(self, z):
        c, h, w = self.image_shape
        z = self.project(z)
        if self.base is not None:
            z = self.upsample(z.view(-1, *self.base))[:, :, :h, :w]
        else:
            z = self.upsample(z).view(-1, c, h, w)
        return self.output(z)


def _resize(t, size):
    """``t`` at spatial ``size``: cropped when at most one stride too large, else resized."""
    h, w = t.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return t
    if th <= h < 2 * th and tw <= w < 2 * tw and (h - th) * 4 < h and (w - tw) * 4 < w:
        top, left = (h - th) // 2, (w - tw) // 2
        return t[..., top:top + th, left:left + tw]
    return F.interpolate(t, size=(th, tw), mode="bilinear", align_corners=False)


class ConvImageDecoder(nn.Module):
    """Reconstruct an image convolutionally from a feature map (or a vector).

    The convolutional design of CMAG's FMR and LR and DAFAR's fallback decoder,
    for inputs whose dense projection would be large (:func:`choose_design`):

    1. A feature map ``(C_f, h, w)`` with h x w > 1 is read on its own grid: a
       1x1 convolution mixes its channels into ``c0 = min(max(C_f, width),
       8 * width)``. Anything else (a vector of logits, a 1x1 or flat feature)
       gets a small dense start: a projection to a ``2 * width`` x s x s seed
       grid, whose side s is the image side halved until it is 7 or less
       (7 x 7 for 224 px).
    2. A 3x3 convolution, then as many stride-2 upsampling stages
       (``ConvTranspose2d(k=4, s=2, p=1)`` and ReLU) as the resolution needs,
       halving the channels after every stage down to ``max(width // 4, 8)``.
    3. A 3x3 convolution to the image's channels, a centre crop (when the grid
       overshoots by less than a quarter) or bilinear resize to exactly
       (H, W), and :class:`OutputRange`.

    Its parameter count depends on the channels and the number of stages, not
    on the pixel count: from a ResNet-18's ``layer4`` (512 x 7 x 7) to
    3 x 224 x 224 at ``width=32``, 1.4 M weights (the dense design: 2.5 billion).

    Parameters
    ----------
    in_shape : tuple
        Shape of one input: ``(C_f, h, w)`` for a feature map, ``(d,)`` for a
        vector (a flat input is reshaped to ``in_shape``).
    image_shape : tuple (C, H, W)
    width : int, default=32
    value_range : (float, float) or None, default=(0, 1)

    Examples
    --------
    >>> import torch
    >>> dec = ConvImageDecoder((512, 7, 7), (3, 224, 224))
    >>> dec(torch.zeros(2, 512 * 7 * 7)).shape, sum(p.numel() for p in dec.parameters())
    (torch.Size([2, 3, 224, 224]), 1420243)
    """

    def __init__(self, in_shape, image_shape, width=32, value_range=(0.0, 1.0)):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        grid = len(self.in_shape) == 3 and self.in_shape[1] * self.in_shape[2] > 1
        if grid:
            self.seed = None
            gh, gw = self.in_shape[1:]
            ch = min(max(self.in_shape[0], width), 8 * width)
            self.project = nn.Sequential(nn.Conv2d(self.in_shape[0], ch, 1), nn.ReLU())
        else:
            gh, gw, ch = h, w, 2 * width
            while max(gh, gw) > 7:
                gh, gw = math.ceil(gh / 2), math.ceil(gw / 2)
            self.seed = (ch, gh, gw)
            self.project = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(self.in_shape), ch * gh * gw), nn.ReLU())
        layers = [nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU()]
        floor = max(width // 4, 8)
        while gh < h or gw < w:
            out = max(ch // 2, floor)
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1), nn.ReLU()]
            ch, gh, gw = out, 2 * gh, 2 * gw
        self.upsample = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(ch, c, 3, padding=1)
        self.output = OutputRange(value_range)

    def forward(self, z):
        if self.seed is None:
            z = self.project(z.reshape(len(z), *self.in_shape))
        else:
            z = self.project(z.reshape(len(z), -1)).view(-1, *self.seed)
        z = self.to_image(self.upsample(z))
        return self.output(_resize(z, self.image_shape[1:]))


class ImageToImageReconstructor(nn.Module):
    """Reconstruct an image from an image-shaped input (CMAG's GR).

    A small convolutional autoencoder: two stride-2 convolutions down to a
    quarter of the resolution, two transposed convolutions back up.

    Parameters
    ----------
    image_shape : tuple (C, H, W)
    width : int, default=32
    value_range : (float, float) or None, default=(0, 1)
        Range of the input and output images; the input is mapped to [0, 1]
        before the first layer.
    """

    def __init__(self, image_shape, width=32, value_range=(0.0, 1.0)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        half = max(width // 2, 1)
        if _is_image(self.image_shape):
            self.net = nn.Sequential(
                nn.Conv2d(c, half, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(half, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(width, half, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(half, c, 4, stride=2, padding=1))
        else:
            d = c * h * w
            hidden = max(16, 2 * width)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d))
        self.output = OutputRange(value_range)

    def forward(self, x):
        c, h, w = self.image_shape
        z = self.net(self.output.to_unit(x))
        z = z[:, :, :h, :w] if z.ndim == 4 else z.view(-1, c, h, w)
        return self.output(z)
