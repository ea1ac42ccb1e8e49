"""A fitted detector's decision function as a differentiable torch module.

:class:`DetectorDecision` is what ``detector.to_torch()`` returns: a frozen,
eval-mode ``torch.nn.Module`` whose ``forward(x)`` gives the detector's
``decision_function`` (``score - offset_``, negative = flagged) with a gradient
with respect to the input, so that an attacker (Carlini & Wagner 2017;
Tramèr et al. 2020) or a user's own torch pipeline can optimise through it.

The module holds its own copy of the detector's fitted state (networks,
thresholds, ``offset_``), taken when ``to_torch`` was called: refitting or
recalibrating the detector afterwards does not change it.

Non-differentiable steps (Feature Squeezing's bit-depth reduction and median
filter) are replaced in the backward pass by the identity, the Backward Pass
Differentiable Approximation of Athalye, Carlini & Wagner (2018); the forward
pass stays exact. :func:`straight_through` is that construction.
"""

import math

import torch
from torch import nn

__all__ = ["DetectorDecision", "straight_through"]


def straight_through(fn, x):
    """``fn(x)`` in the forward pass, the identity in the backward pass (BPDA).

    A. Athalye, N. Carlini, D. Wagner, "Obfuscated Gradients Give a False Sense
    of Security: Circumventing Defenses to Adversarial Examples", ICML 2018,
    Section 4.1 (BPDA with g(x) = x).

    Parameters
    ----------
    fn : callable
        A (possibly non-differentiable) map of tensors of one shape.
    x : torch.Tensor

    Returns
    -------
    torch.Tensor
        Equal to ``fn(x)``; its gradient with respect to ``x`` is the
        incoming gradient unchanged.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.2, 0.7], requires_grad=True)
    >>> y = straight_through(torch.round, x)
    >>> y.tolist()
    [0.0, 1.0]
    >>> y.sum().backward(); x.grad.tolist()
    [1.0, 1.0]
    """
    return x + (fn(x) - x).detach()


class DetectorDecision(nn.Module):
    """Differentiable decision function of a fitted detector (``detector.to_torch()``).

    Parameters
    ----------
    scorer : object
        A private copy of the fitted detector; ``scorer._score_torch(x)`` maps
        a float32 batch ``(n, C, H, W)`` to the score ``(n,)`` with autograd.
    offset : float
        The detector's ``offset_`` when the module was made.
    image_shape : tuple of int
        ``(C, H, W)`` the detector was fitted on (``(1, 1, d)`` for
        ``input_shape="flat"``).
    modules : dict of str to torch.nn.Module
        The networks ``scorer`` uses, registered here so that ``.to(device)``,
        ``.parameters()`` and ``state_dict()`` see them.

    Notes
    -----
    ``forward`` takes ``(n, C, H, W)`` images in the detector's input range, or
    flat rows ``(n, C*H*W)`` (reshaped to ``image_shape``; a detector fitted on
    flat rows reads them as it did in ``fit``). Unlike ``decision_function`` it
    does not validate or clip its input, and it returns float32 on the
    module's device, not float64 numpy: the two agree to about 1e-5.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from advdetect import FeatureSqueezingDetector
    >>> from advdetect.models import SmallCNN
    >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    >>> det = FeatureSqueezingDetector(SmallCNN(), device="cpu").fit(X)
    >>> decision = det.to_torch()
    >>> type(decision).__name__, decision.training
    ('DetectorDecision', False)
    >>> x = torch.from_numpy(X[:2]).requires_grad_(True)
    >>> decision(x).sum().backward()    # BPDA through the squeezers
    >>> bool(torch.isfinite(x.grad).all())
    True
    """

    def __init__(self, scorer, offset, image_shape, modules):
        super().__init__()
        self.scorer = scorer
        self.offset = float(offset)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.networks = nn.ModuleDict(modules)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode=True):
        """Kept in eval mode: dropout or batch statistics would change the decision."""
        return super().train(False)

    def forward(self, x):
        """Decision ``score(x) - offset`` per sample, float32 ``(n,)``; negative = flagged."""
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}.")
        d = math.prod(self.image_shape)
        if x.ndim == 2 and x.shape[1] == d:
            x = x.reshape((len(x),) + self.image_shape)
        elif x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"x must have shape (n, {', '.join(map(str, self.image_shape))}) or "
                f"(n, {d}); got {tuple(x.shape)}.")
        return self.scorer._score_torch(x.to(torch.float32)) - self.offset

    def extra_repr(self):
        return (f"detector={type(self.scorer).__name__}, image_shape={self.image_shape}, "
                f"offset={self.offset:.6g}")
