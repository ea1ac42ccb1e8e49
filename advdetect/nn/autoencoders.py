"""MagNet's convolutional autoencoders (Meng & Chen, CCS 2017), as torch modules.

The reference Keras code's ``DenoisingAutoEncoder`` (GitHub
``Trevillie/MagNet``, ``defensive_models.py``); the detector that trains and
reads them is :class:`advdetect.MagNetDetector`.
"""

import numbers

from torch import nn

from .reconstructors import CropTo, OutputRange

__all__ = ["MagNetAutoencoder", "MNIST_STRUCTURES"]

# The reference MNIST autoencoders (train_defense.py): an integer is a 3x3
# convolution with that many filters, "average" a 2x2 average pooling; the
# decoder mirrors the encoder, and a last 3x3 convolution maps back to C channels.
MNIST_STRUCTURES = {"I": (3, "average", 3), "II": (3,)}


class MagNetAutoencoder(nn.Module):
    """MagNet's convolutional autoencoder (reference ``DenoisingAutoEncoder``).

    For ``structure=(3, "average", 3)`` (detector I on MNIST):
    Conv3x3(3) -> AvgPool2 -> Conv3x3(3) | Conv3x3(3) -> Upsample2 -> Conv3x3(3)
    -> Conv3x3(C); for ``structure=(3,)`` (detector II): Conv3x3(3) -> Conv3x3(3)
    -> Conv3x3(C). Same padding and sigmoid activations throughout, the last one
    mapped to ``value_range`` (:class:`~advdetect.nn.reconstructors.OutputRange`);
    Glorot-uniform weights and zero biases (Keras's defaults).

    Inputs smaller than 4 px on a side (or flat vectors, ``(1, 1, d)``) get a
    small fully connected autoencoder of the same depth instead: a 3x3
    convolution has nothing to slide over there.

    Parameters
    ----------
    image_shape : tuple (C, H, W)
    structure : sequence of int or {"average", "max"}, default=(3, "average", 3)
        The encoder; the decoder mirrors it.
    value_range : (float, float) or None, default=(0, 1)
        Range of the input and the output; ``None`` leaves the last layer
        linear. Another range than (0, 1) is mapped to [0, 1] on the way in.

    Attributes
    ----------
    activity_ : torch.Tensor or None
        After a forward pass in training mode: the sum of squared activations
        of every layer (the output taken on [0, 1]), averaged over the batch
        (the reference's L2 activity regulariser acts on it).

    Examples
    --------
    >>> import torch
    >>> ae = MagNetAutoencoder((1, 28, 28))
    >>> ae(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    """

    def __init__(self, image_shape, structure=(3, "average", 3), value_range=(0.0, 1.0)):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        self.convolutional = h >= 4 and w >= 4
        layers = []
        if self.convolutional:
            channels, sizes = c, [(h, w)]
            for item in structure:
                if isinstance(item, numbers.Integral):
                    layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.Sigmoid()]
                    channels = int(item)
                else:
                    # Keras "same" pooling: odd sizes round up, the edge window
                    # averages only the pixels it covers (ceil_mode does both).
                    pool = nn.AvgPool2d if item == "average" else nn.MaxPool2d
                    layers.append(pool(2, ceil_mode=True))
                    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
            for item in reversed(structure):
                if isinstance(item, numbers.Integral):
                    layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.Sigmoid()]
                    channels = int(item)
                else:
                    sizes.pop()
                    layers += [nn.Upsample(scale_factor=2, mode="nearest"), CropTo(sizes[-1])]
            layers.append(nn.Conv2d(channels, c, 3, padding=1))
        else:
            d = c * h * w
            hidden = max(4, d)
            n_hidden = 2 * sum(isinstance(s, numbers.Integral) for s in structure) or 1
            layers.append(nn.Flatten())
            width = d
            for _ in range(n_hidden):
                layers += [nn.Linear(width, hidden), nn.Sigmoid()]
                width = hidden
            layers.append(nn.Linear(width, d))
        self.body = nn.Sequential(*layers)
        self.output = OutputRange(value_range)
        self.activity_ = None
        # Keras's defaults, as in the reference: Glorot-uniform weights, zero biases.
        # With sigmoid activations they also leave the initial plateau sooner
        # than torch's defaults.
        for m in self.body:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        track = self.training
        activity = 0.0
        # The reference works on [0, 1]; another value_range is mapped to it on the
        # way in (and the activity regulariser sees the output on [0, 1] too), so
        # (0, 255) images train the same network as scaled ones.
        z = self.output.to_unit(x)
        for layer in self.body:
            z = layer(z)
            if track and isinstance(layer, nn.Sigmoid):
                activity = activity + z.pow(2).flatten(1).sum(1).mean()
        out = self.output(z)
        if track:
            out_act = self.output.to_unit(out).pow(2).flatten(1).sum(1).mean()
            self.activity_ = activity + out_act
        else:
            self.activity_ = None
        c, h, w = self.image_shape
        return out.reshape(-1, c, h, w)
