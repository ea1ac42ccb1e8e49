"""Reconstruction networks shared by the detectors.

Both are sized from shapes known at fit time, so they work for any classifier
and image size: a dense projection followed by two stride-2 transposed
convolutions (cropped to the image size) for images of 4 px and more, and a
two-layer perceptron for smaller inputs (the flat vectors of scikit-learn's
common checks).
"""

import math

import torch
from torch import nn

__all__ = ["OutputRange", "VectorToImageDecoder", "ImageToImageReconstructor"]


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
