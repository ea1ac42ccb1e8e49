"""Torch modules of the Mahalanobis detector (Lee et al., NeurIPS 2018).

* :class:`LayerFeatures` - one forward pass of a classifier that also returns
  the outputs of several named layers (forward hooks that live for that pass only).
* :class:`ClassConditionalGaussian` - class means and a tied precision matrix of
  one layer's features; returns the squared Mahalanobis distance to every class
  mean (paper Eq. 2).
* :func:`spatial_mean` - a layer's output as a vector per sample: feature maps
  averaged over their spatial positions (the reference code's
  ``torch.mean(out.view(n, C, -1), 2)``).

Plain torch only (no scikit-learn, no skorch): the covariance is estimated by the
detector in :mod:`advdetect.mahalanobis` and copied into these buffers.
"""

import math

import torch
from torch import nn

__all__ = ["LayerFeatures", "ClassConditionalGaussian", "spatial_mean", "sign_step"]


def spatial_mean(features):
    """``(n, C, *spatial)`` -> ``(n, C)`` by averaging; ``(n, d)`` is returned as it is."""
    if features.ndim > 2:
        return features.flatten(2).mean(dim=2)
    return features


def sign_step(grad):
    """The reference's sign of a gradient: +1 where it is >= 0, -1 elsewhere.

    ``(torch.ge(grad, 0).float() - 0.5) * 2`` in ``lib_generation.py``: unlike
    ``torch.sign`` a zero gradient steps by +1.
    """
    return torch.where(grad >= 0, 1.0, -1.0).to(grad.dtype)


class LayerFeatures(nn.Module):
    """A frozen classifier returning ``(list of layer outputs, class scores)``.

    Parameters
    ----------
    module : torch.nn.Module
        The classifier (used as is: pass a copy if it must not change).
    layers : list of str
        Dotted names of submodules, as in ``module.named_modules()``.
    flat_input : bool, default=False
        Feed the classifier ``(n, C*H*W)`` instead of ``(n, C, H, W)``.
    """

    def __init__(self, module, layers, flat_input=False):
        super().__init__()
        self.module = module
        self.layers = list(layers)
        self.flat_input = flat_input
        names = [n for n, _ in module.named_modules() if n]
        for layer in self.layers:
            try:
                module.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"feature_layer {layer!r} does not exist in "
                                 f"{type(module).__name__}; its layers are: {names}") from None

    def forward(self, x):
        if self.flat_input:
            x = x.flatten(1)
        captured = {}
        handles = []
        for layer in self.layers:
            def hook(_m, _i, out, layer=layer):
                captured[layer] = out  # the last call wins, as in HookedClassifier
            handles.append(self.module.get_submodule(layer).register_forward_hook(hook))
        try:
            scores = self.module(x)
        finally:
            for h in handles:
                h.remove()
        missing = [layer for layer in self.layers if layer not in captured]
        if missing:
            raise RuntimeError(f"feature_layer {missing[0]!r} was not called in the "
                               "classifier's forward pass; choose a layer that the forward "
                               "pass uses.")
        return [captured[layer] for layer in self.layers], scores


class ClassConditionalGaussian(nn.Module):
    """Class-conditional Gaussians with a tied covariance on one layer's features.

    ``forward(f)`` returns ``(f - mu_c)^T Sigma^-1 (f - mu_c)`` for every class c
    (the squared Mahalanobis distance, paper Eq. 2), ``inf`` for classes with no
    training sample (``observed`` False).

    Parameters
    ----------
    n_classes, n_features : int

    Attributes (buffers)
    --------------------
    means : (n_classes, n_features) float32
    precision : (n_features, n_features) float32, the (pseudo-)inverse of Sigma
    observed : (n_classes,) bool
    """

    def __init__(self, n_classes, n_features):
        super().__init__()
        self.register_buffer("means", torch.zeros(n_classes, n_features))
        self.register_buffer("precision", torch.eye(n_features))
        self.register_buffer("observed", torch.ones(n_classes, dtype=torch.bool))

    def forward(self, f):
        diff = f.unsqueeze(1) - self.means.unsqueeze(0)               # (n, K, d)
        d2 = ((diff @ self.precision) * diff).sum(dim=2)               # (n, K)
        return d2.masked_fill(~self.observed, float("inf"))


class MahalanobisDecision(nn.Module):
    """The Mahalanobis detector's decision function as one module (``to_torch``).

    ``forward(x)``: per layer l the confidence score
    ``M_l(x) = max_c -(f_l(x) - mu_c)^T Sigma_l^-1 (f_l(x) - mu_c)`` (on the
    pre-processed input when ``noise_magnitude > 0``), then
    ``weights . M(x) + bias - offset``.
    """

    def __init__(self, features, gaussians, weights, bias, offset, noise_magnitude,
                 image_shape=None):
        super().__init__()
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.features = features
        self.gaussians = gaussians
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(float(bias) - float(offset)))
        self.noise_magnitude = float(noise_magnitude)

    def layer_scores(self, x):
        return mahalanobis_layer_scores(self.features, self.gaussians, x, self.noise_magnitude)

    def train(self, mode=True):
        """Kept in eval mode: batch statistics would change the decision."""
        return super().train(False)

    def forward(self, x):
        if self.image_shape is not None and x.ndim == 2 \
                and x.shape[1] == math.prod(self.image_shape):
            x = x.reshape((len(x),) + self.image_shape)   # flat rows, as the detector takes
        return self.layer_scores(x) @ self.weights + self.bias


def _scores(features, gaussians, x):
    feats, _ = features(x)
    return [-g(spatial_mean(f)).min(dim=1).values for g, f in zip(gaussians, feats)]


def mahalanobis_layer_scores(features, gaussians, x, noise_magnitude=0.0):
    """``(n, L)`` confidence scores ``M_l(x)``, with the paper's input pre-processing.

    With ``noise_magnitude = eps > 0`` each layer scores its own
    ``x_l = x - eps * sign(grad_x D_l(x))`` where ``D_l`` is the squared distance to
    the closest class mean at layer l (paper Eq. 4; ``lib_generation.py``'s
    ``get_Mahalanobis_score``). The step's sign is held constant, so the result
    stays differentiable in ``x`` (straight through the sign). Works under
    ``torch.no_grad()``: the step's gradient is taken in its own enabled block.
    """
    if noise_magnitude == 0:
        return torch.stack(_scores(features, gaussians, x), dim=1)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        feats, _ = features(xg)
        dists = [g(spatial_mean(f)).min(dim=1).values for g, f in zip(gaussians, feats)]
        grads = [torch.autograd.grad(d.sum(), xg, retain_graph=i < len(dists) - 1)[0]
                 for i, d in enumerate(dists)]
    out = []
    for i, grad in enumerate(grads):
        x_hat = x - noise_magnitude * sign_step(grad)
        feats, _ = features(x_hat)
        out.append(-gaussians[i](spatial_mean(feats[i])).min(dim=1).values)
    return torch.stack(out, dim=1)
