"""The Wasserstein GAN of Defense-GAN, and its latent-space reconstruction.

Samangouei, Kabkab, Chellappa, *Defense-GAN: Protecting classifiers against
adversarial attacks using generative models*, ICLR 2018. The MNIST networks
follow the authors' code (GitHub ``kabkabm/defensegan``,
``models/dataset_models.py``, itself Gulrajani et al.'s WGAN-GP MNIST
networks): a generator Linear(latent -> 4*4*4w) -> ReLU -> three 5x5
stride-2 transposed convolutions (4w -> 2w -> w -> C, ReLU between, the first
output cropped 8 -> 7 px) -> sigmoid, and a critic of three 5x5 stride-2
convolutions (C -> w -> 2w -> 4w, leaky ReLU 0.2) -> Linear(-> 1), no batch
normalisation. Other image sizes get the same stack sized from the shape
(each transposed convolution doubles the map and is cropped to
``ceil(H / 2^k)``); inputs under 4 px a side (flat vectors) get two-layer
perceptrons.

No scikit-learn or skorch here (ARCHITECTURE.md, rule 3).
"""

import math

import torch
from torch import nn

from .reconstructors import CropTo, OutputRange

__all__ = ["WGANGenerator", "WGANCritic", "WGAN", "gradient_penalty", "latent_search",
           "DefenseGANDecision"]


def _levels(image_shape):
    """Number of stride-2 stages (0: a perceptron) and the map size at each stage."""
    _, h, w = image_shape
    if min(h, w) < 4:
        return 0, []
    k = min(3, int(math.log2(min(h, w))))
    return k, [(math.ceil(h / 2 ** i), math.ceil(w / 2 ** i)) for i in range(k + 1)]


class WGANGenerator(nn.Module):
    """Defense-GAN's generator G: latent ``(n, latent_dim)`` -> images ``(n, C, H, W)``.

    Parameters
    ----------
    image_shape : tuple (C, H, W)
    latent_dim : int, default=128
        Size of z (the reference: 128).
    width : int, default=64
        w above (the reference: 64).
    value_range : (float, float) or None, default=(0, 1)
        Output range (a scaled sigmoid; the reference's sigmoid for MNIST);
        ``None``: linear output.

    Examples
    --------
    >>> import torch
    >>> g = WGANGenerator((1, 28, 28), latent_dim=8, width=4)
    >>> g(torch.zeros(2, 8)).shape
    torch.Size([2, 1, 28, 28])
    """

    def __init__(self, image_shape, latent_dim=128, width=64, value_range=(0.0, 1.0)):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = int(latent_dim)
        c, h, w = self.image_shape
        k, sizes = _levels(self.image_shape)
        if k:
            top = width * 2 ** (k - 1)
            self.base = (top,) + sizes[k]
            layers = [nn.Linear(self.latent_dim, top * sizes[k][0] * sizes[k][1]), nn.ReLU(),
                      nn.Unflatten(1, self.base)]
            channels = top
            for i in range(k - 1, -1, -1):
                out = c if i == 0 else channels // 2
                layers += [nn.ConvTranspose2d(channels, out, 5, stride=2, padding=2,
                                              output_padding=1), CropTo(sizes[i])]
                if i:
                    layers.append(nn.ReLU())
                channels = out
        else:
            hidden = 4 * width
            layers = [nn.Linear(self.latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                      nn.ReLU(), nn.Linear(hidden, c * h * w), nn.Unflatten(1, self.image_shape)]
        self.body = nn.Sequential(*layers)
        self.output = OutputRange(value_range)

    def forward(self, z):
        return self.output(self.body(z))


class WGANCritic(nn.Module):
    """Defense-GAN's critic D: images ``(n, C, H, W)`` -> scores ``(n,)`` (no sigmoid).

    Parameters
    ----------
    image_shape : tuple (C, H, W)
    width : int, default=64

    Examples
    --------
    >>> import torch
    >>> WGANCritic((1, 28, 28), width=4)(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3])
    """

    def __init__(self, image_shape, width=64):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        k, sizes = _levels(self.image_shape)
        if k:
            layers, channels = [], c
            for i in range(k):
                out = width * 2 ** i
                layers += [nn.Conv2d(channels, out, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
                channels = out
            layers += [nn.Flatten(), nn.Linear(channels * sizes[k][0] * sizes[k][1], 1)]
        else:
            hidden = 4 * width
            layers = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.LeakyReLU(0.2),
                      nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)[:, 0]


class WGAN(nn.Module):
    """Generator and critic in one module (what the skorch net trains).

    ``forward(z)`` is the generator's.

    Parameters
    ----------
    image_shape : tuple (C, H, W)
    latent_dim : int, default=128
    width : int, default=64
    value_range : (float, float) or None, default=(0, 1)
    """

    def __init__(self, image_shape, latent_dim=128, width=64, value_range=(0.0, 1.0)):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.generator = WGANGenerator(image_shape, latent_dim, width, value_range)
        self.critic = WGANCritic(image_shape, width)

    def forward(self, z):
        return self.generator(z)


def gradient_penalty(critic, real, fake):
    """WGAN-GP's penalty E[(||grad_x D(x_hat)||_2 - 1)^2] (Gulrajani et al. 2017, Eq. 3).

    ``x_hat`` is uniform on the segments between ``real`` and ``fake``.
    """
    alpha = torch.rand((len(real),) + (1,) * (real.ndim - 1), device=real.device,
                       dtype=real.dtype)
    x_hat = (real + alpha * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def latent_search(generator, x, z0, n_steps, lr, momentum=0.7):
    """Defense-GAN's reconstruction: ``z* = argmin_z ||G(z) - x||^2`` from every start in ``z0``.

    All images and all random restarts go through the generator as one batch
    of ``n * L`` latent vectors; only the ``n_steps`` gradient-descent steps
    are a Python loop. Gradient descent with momentum on the per-image mean
    squared error, as the authors' code (``MomentumOptimizer``, momentum 0.7,
    learning rate 10 on MNIST). The best restart per image is kept.

    Autograd is switched on inside (the search needs gradients with respect to
    z even under ``torch.no_grad()``); the generator's parameters receive no
    gradient. The result is detached from the search: a gradient of the
    returned error with respect to ``x`` (taken by the caller on the final
    ``||G(z*) - x||^2``) is the exact gradient of ``min_z ||G(z) - x||^2`` at
    a minimum (the envelope theorem), and an approximation elsewhere.

    Parameters
    ----------
    generator : torch.nn.Module
        ``(m, latent_dim) -> (m, C, H, W)``.
    x : torch.Tensor of shape (n, C, H, W)
    z0 : torch.Tensor of shape (L, latent_dim)
        The L starting points, shared by every image (so that an image's
        reconstruction does not depend on the images scored beside it).
    n_steps : int
        R, the gradient-descent steps (0: the best of the starting points).
    lr : float
        Step size on the per-image mean squared error.
    momentum : float, default=0.7

    Returns
    -------
    reconstruction : torch.Tensor of shape (n, C, H, W)
        G(z*) of the best restart, detached.
    z : torch.Tensor of shape (n, latent_dim)
        Its latent vector.
    """
    n, n_restarts = len(x), len(z0)
    target = x.detach().repeat_interleave(n_restarts, dim=0)
    z = z0.to(device=x.device, dtype=x.dtype).repeat(n, 1)
    velocity = torch.zeros_like(z)
    with torch.enable_grad():
        for _ in range(int(n_steps)):
            z = z.detach().requires_grad_(True)
            err = (generator(z) - target).pow(2).flatten(1).mean(1)
            (grad,) = torch.autograd.grad(err.sum(), z)
            velocity = momentum * velocity + grad
            z = z - lr * velocity
    z = z.detach()
    with torch.no_grad():
        rec = generator(z)
        err = (rec - target).pow(2).flatten(1).sum(1).view(n, n_restarts)
        best = err.argmin(dim=1) + torch.arange(n, device=x.device) * n_restarts
    return rec[best].detach(), z[best]


class DefenseGANDecision(nn.Module):
    """Defense-GAN's decision function as a torch module (``DefenseGANDetector.to_torch``).

    ``forward(x)`` returns ``-||G(z*) - x||_2^2 - offset`` of shape ``(n,)``,
    negative for inputs flagged as adversarial. ``x`` is ``(n, C, H, W)`` or
    anything with ``n * C * H * W`` values (it is reshaped). The latent search
    runs with autograd switched on inside (even under ``torch.no_grad()``);
    the gradient of the output with respect to ``x`` flows through the final
    ``||G(z*) - x||^2`` only, with ``z*`` held fixed: the exact gradient of
    ``min_z ||G(z) - x||^2`` at a minimum (the envelope theorem), which is
    what an adaptive attack on the detector needs.

    Parameters
    ----------
    generator : torch.nn.Module
    latent_start : torch.Tensor of shape (L, latent_dim)
    n_steps : int
    lr : float
    momentum : float
    offset : float
    image_shape : tuple (C, H, W)
    """

    def __init__(self, generator, latent_start, n_steps, lr, momentum, offset, image_shape):
        super().__init__()
        self.generator = generator
        self.register_buffer("latent_start", latent_start.detach().clone())
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.n_steps = int(n_steps)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.image_shape = tuple(int(s) for s in image_shape)

    def forward(self, x):
        x = x.reshape((len(x),) + self.image_shape)
        _, z = latent_search(self.generator, x, self.latent_start, self.n_steps, self.lr,
                             self.momentum)
        err = (self.generator(z) - x).pow(2).flatten(1).sum(1)
        return -err - self.offset.to(err.dtype)
