"""Torch modules of the binary-classifier detector (Gong et al. 2017; Metzen et al. 2017).

* :class:`BinaryDetectorNet` - a small CNN for images or feature maps
  ``(C, H, W)``, or an MLP for feature vectors ``(d,)``, returning one logit per
  sample: the log-odds that the input is clean.
* :class:`ActivationDetector` - the frozen classifier, read at a named layer,
  followed by a :class:`BinaryDetectorNet` on that layer's output (scoring path).
"""

import math

from torch import nn

__all__ = ["BinaryDetectorNet", "ActivationDetector", "BinaryDecision"]


class BinaryDetectorNet(nn.Module):
    """Two 3x3 convolutions and two dense layers (or three dense layers) -> one logit.

    For ``input_shape = (C, H, W)``: Conv3x3(C, w) - ReLU - max-pool to
    ceil(H/2) x ceil(W/2) - Conv3x3(w, 2w) - ReLU - average-pool to at most 4x4
    - Linear(hidden) - ReLU - Linear(1), the shape of Gong et al.'s and
    Metzen et al.'s detectors scaled down. For ``input_shape = (d,)``:
    Linear(d, hidden) - ReLU - Linear(hidden, hidden) - ReLU - Linear(1).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` or ``(d,)``.
    width : int, default=16
    hidden : int, default=64
    """

    def __init__(self, input_shape, width=16, hidden=64):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            c, h, w = shape
            ph, pw = math.ceil(h / 2), math.ceil(w / 2)
            oh, ow = min(ph, 4), min(pw, 4)
            self.net = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
                nn.AdaptiveMaxPool2d((ph, pw)),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d((oh, ow)), nn.Flatten(),
                nn.Linear(2 * width * oh * ow, hidden), nn.ReLU(),
                nn.Linear(hidden, 1))
        elif len(shape) == 1:
            self.net = nn.Sequential(
                nn.Linear(shape[0], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, 1))
        else:
            raise ValueError(f"BinaryDetectorNet takes inputs of shape (C, H, W) or (d,); got "
                             f"{shape}")

    def forward(self, x):
        return self.net(x).squeeze(1)


class ActivationDetector(nn.Module):
    """``head(features(x))``: a hooked frozen classifier followed by a binary detector.

    Parameters
    ----------
    classifier : torch.nn.Module
        Returns ``(features, class_scores)`` (advdetect's ``HookedClassifier``),
        or ``None`` to apply ``head`` to the input itself.
    head : BinaryDetectorNet
    flatten : bool
        Flatten the features to ``(n, d)`` first (a layer with 3-D output that is
        not a feature map).
    """

    def __init__(self, classifier, head, flatten=False):
        super().__init__()
        self.classifier = classifier
        self.head = head
        self.flatten = flatten

    def features(self, x):
        if self.classifier is None:
            return x
        f = self.classifier(x)[0]
        return f.flatten(1) if self.flatten else f

    def forward(self, x):
        return self.head(self.features(x))


class BinaryDecision(nn.Module):
    """``detector(x) - offset``: the binary detector's decision function (``to_torch``)."""

    def __init__(self, detector, offset):
        super().__init__()
        self.detector = detector
        self.offset = float(offset)

    def forward(self, x):
        return self.detector(x) - self.offset
