"""Detector-aware (adaptive) attacks: fool the classifier *and* pass the detector.

A detector of adversarial examples is evaluated fairly only against an
attacker who knows it is there. N. Carlini, D. Wagner, "Adversarial Examples
Are Not Easily Detected: Bypassing Ten Detection Methods", ACM Workshop on
Artificial Intelligence and Security (AISec) 2017, bypass detectors by
attacking the classifier and the detector together (their Section 4); F.
Tramer, N. Carlini, W. Brendel, A. Madry, "On Adaptive Attacks to Adversarial
Example Defenses", NeurIPS 2020, make the case that every defence must be
evaluated this way. Both attacks here minimise a classifier term and a
detector term, the latter weighted by ``lambda`` (searched per example):

* :func:`adaptive_pgd`, within a budget ``||x' - x||_norm <= eps`` (the PGD of
  A. Madry et al., "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018)::

      relu(margin(x') / m + kappa) + lambda * relu(kappa - decision(x') / s)

* :func:`adaptive_carlini_wagner_l2`, the smallest L2 example (the L2 attack
  of Carlini & Wagner, S&P 2017, :mod:`advdetect.attacks.cw`), over ``x' =
  (tanh(w) + 1) / 2``::

      ||x' - x||_2^2 + c * (relu(margin(x') + confidence)
                            + lambda * m * relu(kappa - decision(x') / s))

``margin = Z_y - max_{j != y} Z_j`` on the classifier's logits,
``decision`` the detector's differentiable decision function (negative =
flagged, e.g. ``detector.to_torch()``), and ``m``, ``s`` the median absolute
margin and decision of the clean batch, so that ``lambda = 1`` balances the
two terms whatever the detector's units. ``generate(..., detector=det)`` runs
these on numpy images and re-checks every example through the detector's
public ``predict``.
"""

import math

import numpy as np
import torch

from .cw import _TANH_SHRINK

__all__ = ["adaptive_carlini_wagner_l2", "adaptive_pgd"]


# An iterate counts as a success inside the loop only with this much room on
# both sides, so that the float64 re-check through the public predict methods
# (whose batches are padded and summed in another order) agrees.
_ADAPTIVE_TOLERANCE = 1e-4
# Bounds of the per-example weight of the detector term.
_LAMBDA_RANGE = (1e-3, 1e4)


def _class_margin(logits, y):
    """``Z_y - max_{j != y} Z_j``: negative exactly when the input is misclassified."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return real - other


class _AdaptiveObjective:
    """The two terms of a detector-aware attack, each in units of its clean spread.

    ``classifier_term = relu(margin(x') / m + kappa)`` and ``detector_term =
    relu(kappa - decision(x') / s)``, where ``m`` and ``s`` are the median
    absolute class margin and decision of the clean batch, so that a weight
    ``lambda = 1`` balances them whatever the detector's units.
    """

    def __init__(self, module, decision, x, y, kappa):
        self.module, self.decision, self.y, self.kappa = module, decision, y, kappa
        with torch.no_grad():
            m = _class_margin(module(x), y).abs().median()
            s = decision(x).abs().median()
        self.m_scale = float(m.clamp_min(1e-3))
        self.d_scale = float(s.clamp_min(1e-6))

    def __call__(self, x_adv, idx=None):
        y = self.y if idx is None else self.y[idx]
        margin = _class_margin(self.module(x_adv), y)
        dec = self.decision(x_adv)
        cls_term = (margin / self.m_scale + self.kappa).clamp_min(0)
        det_term = (self.kappa - dec / self.d_scale).clamp_min(0)
        fooled = margin < -_ADAPTIVE_TOLERANCE * self.m_scale
        evaded = dec >= _ADAPTIVE_TOLERANCE * self.d_scale
        return cls_term, det_term, fooled, evaded


def _next_lambda(lam, lower, upper, raise_it):
    """One step of a per-example geometric bisection on the detector weight."""
    lower = torch.where(raise_it, torch.maximum(lower, lam), lower)
    upper = torch.where(raise_it, upper, torch.minimum(upper, lam))
    bisect = torch.sqrt(lower * upper)
    lam = torch.where(raise_it, torch.where(torch.isinf(upper), lam * 10, bisect),
                      torch.where(lower > 0, bisect, lam / 10))
    return lam.clamp(*_LAMBDA_RANGE), lower, upper


def _project(delta, x, eps, norm):
    if norm == np.inf:
        delta = delta.clamp(-eps, eps)
    else:
        size = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / size).clamp(max=1.0).view(-1, *[1] * (delta.ndim - 1))
    return (x + delta).clamp(0, 1) - x


def _random_start(x, eps, norm, generator):
    shape, dev = x.shape, x.device
    if norm == np.inf:
        u = torch.rand(shape, generator=generator, device=dev)
        return _project((2 * u - 1) * eps, x, eps, norm)
    g = torch.randn(shape, generator=generator, device=dev)
    g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
    r = torch.rand(len(x), generator=generator, device=dev).view(-1, *[1] * (x.ndim - 1))
    return _project(g * eps * r, x, eps, norm)


def adaptive_pgd(module, decision, x, y, *, eps=0.3, norm=np.inf, max_iter=100, eps_step=None,
                 restarts=2, lambda_steps=3, initial_lambda=1.0, kappa=0.05, random_state=None):
    """Detector-aware PGD: fool the classifier *and* pass the detector, within ``eps``.

    The adaptive attack of Carlini & Wagner ("Adversarial Examples Are Not
    Easily Detected: Bypassing Ten Detection Methods", AISec 2017) and Tramèr
    et al. ("On Adaptive Attacks to Adversarial Example Defenses", NeurIPS
    2020), in the PGD form of Madry et al. (ICLR 2018). Each example
    minimises, over ``||x' - x||_norm <= eps`` and ``x'`` in [0, 1],

    ``relu(margin(x') / m + kappa) + lambda * relu(kappa - decision(x') / s)``

    with ``margin = Z_y - max_{j != y} Z_j`` on the logits and ``decision``
    the detector's decision function (negative = flagged), each divided by its
    median absolute value on the clean batch (``m``, ``s``) so that
    ``lambda = 1`` balances them. Steps are signed gradients (L-infinity) or
    normalised gradients (L2) whose size follows a cosine schedule from
    ``eps_step`` to 0.

    Every iterate is checked; per example the attack keeps a success
    (misclassified with ``decision >= 0``) first, then the smallest
    perturbation (in ``norm``). ``restarts`` runs per weight, the first from
    ``x`` itself and the others from uniform random points of the ball; the
    weight ``lambda`` is then searched per example, geometrically, for the
    examples not yet successful: raised when the example was misclassified
    but flagged, lowered when it was never misclassified.

    Parameters
    ----------
    module : torch.nn.Module
        The classifier, returning logits (or log-probabilities), in eval mode.
    decision : callable
        Tensor ``(n, C, H, W)`` -> decision ``(n,)`` with autograd, e.g.
        ``detector.to_torch()``.
    x : Tensor of shape (n, C, H, W) in [0, 1]
    y : Tensor of shape (n,), int64
    eps : float, default=0.3
    norm : {np.inf, 2}, default=np.inf
    max_iter : int, default=100
        Steps per run.
    eps_step : float or None, default=None
        First step size; None: ``eps / 4``.
    restarts : int, default=2
        Runs per value of ``lambda``.
    lambda_steps : int, default=3
        Values of ``lambda`` tried per example.
    initial_lambda : float, default=1.0
    kappa : float, default=0.05
        Margin by which both goals are aimed past their boundary, in units of
        the clean spreads.
    random_state : int or None, default=None
        Seed of the random starts.

    Returns
    -------
    x_adv : Tensor like ``x``
        The best example per input: a success if one was found, else the
        smallest misclassified (flagged) iterate, else ``x`` itself.

    See Also
    --------
    generate : runs this attack with ``detector=`` and re-checks every example
        through the public ``predict`` methods.

    Examples
    --------
    A linear model and a "detector" that flags images brighter than 0.5 on
    average; the examples must stay below it:

    >>> import torch
    >>> from advdetect.attacks import adaptive_pgd
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> decision = lambda x: 0.5 - x.flatten(1).mean(1)
    >>> x = torch.tensor([[[[0.2, 0.6], [0.4, 0.5]]], [[[0.4, 0.1], [0.5, 0.3]]]])
    >>> y = net(x).argmax(1)
    >>> x_adv = adaptive_pgd(net, decision, x, y, eps=0.5, max_iter=20, restarts=1)
    >>> ((net(x_adv).argmax(1) != y) & (decision(x_adv) >= 0)).tolist()
    [True, True]
    """
    x = x.detach().clamp(0, 1)
    n = len(x)
    shape = (-1,) + (1,) * (x.ndim - 1)
    eps_step = eps / 4 if eps_step is None else float(eps_step)
    objective = _AdaptiveObjective(module, decision, x, y, kappa)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(0 if random_state is None else int(random_state))
    lam = torch.full((n,), float(initial_lambda), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), math.inf, device=x.device)
    best = x.clone()
    best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
    # Rank of the kept example: 2 success, 1 misclassified but flagged, 0 neither.
    best_rank = torch.zeros(n, dtype=torch.int64, device=x.device)
    best_size = torch.full((n,), math.inf, device=x.device)

    def size_of(d):
        f = d.flatten(1)
        return f.abs().amax(dim=1) if norm == np.inf else f.norm(dim=1)

    for _ in range(lambda_steps):
        active = torch.nonzero(~best_success).flatten()
        if len(active) == 0:
            break
        xa, lam_a = x[active], lam[active]
        ever_fooled = torch.zeros(len(active), dtype=torch.bool, device=x.device)
        for run in range(restarts):
            # The examples of this weight not yet successful; each leaves the working
            # set at its first success (the attack's goal is met at this budget).
            pos = torch.nonzero(~best_success[active]).flatten()
            if len(pos) == 0:
                break
            xr, idx, lam_r = xa[pos], active[pos], lam_a[pos]
            delta = torch.zeros_like(xr) if run == 0 else _random_start(xr, eps, norm, generator)
            for step in range(max_iter + 1):
                delta.requires_grad_(True)
                x_adv = xr + delta
                cls_term, det_term, fooled, evaded = objective(x_adv, idx)
                with torch.no_grad():
                    ok = fooled & evaded
                    ever_fooled[pos] |= fooled
                    size = size_of(delta)
                    rank = 2 * ok.long() + (fooled & ~evaded).long()
                    cur_rank, cur_size = best_rank[idx], best_size[idx]
                    better = (rank > cur_rank) | ((rank == cur_rank) & (size < cur_size))
                    sel = idx[better]
                    best[sel] = x_adv[better].detach()
                    best_success[sel] = ok[better]
                    best_rank[sel] = rank[better]
                    best_size[sel] = size[better]
                    keep = ~best_success[idx]
                if step == max_iter or not keep.any():
                    break
                loss = (cls_term + lam_r * det_term).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                alpha = eps_step * 0.5 * (1 + math.cos(math.pi * step / max_iter))
                with torch.no_grad():
                    if norm == np.inf:
                        direction = grad.sign()
                    else:
                        direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                    delta = _project(delta.detach() - alpha * direction, xr, eps, norm)
                    if not keep.all():
                        xr, idx, lam_r, pos, delta = xr[keep], idx[keep], lam_r[keep], \
                            pos[keep], delta[keep]
        lam[active], lower[active], upper[active] = _next_lambda(
            lam_a, lower[active], upper[active], ever_fooled)
    return best


def adaptive_carlini_wagner_l2(module, decision, x, y, *, confidence=0.0, max_iter=100,
                               binary_search_steps=6, initial_const=1.0, learning_rate=0.1,
                               initial_lambda=1.0, kappa=0.05, abort_early=True):
    """Detector-aware Carlini-Wagner L2: the smallest L2 example that fools both.

    Carlini & Wagner, "Adversarial Examples Are Not Easily Detected:
    Bypassing Ten Detection Methods", AISec 2017 (Section 4: attacking the
    classifier and the detector together), on the L2 attack of their S&P 2017
    paper. Each example minimises, over ``x' = (tanh(w) + 1) / 2``,

    ``||x' - x||_2^2 + c * (relu(margin(x') + confidence)
    + lambda * m * relu(kappa - decision(x') / s))``

    with ``margin = Z_y - max_{j != y} Z_j``, ``decision`` the detector's
    decision function (negative = flagged), ``m`` and ``s`` the median
    absolute margin and decision of the clean batch. Two per-example searches
    run side by side over ``binary_search_steps`` rounds of ``max_iter`` Adam
    steps: ``c`` as in :func:`carlini_wagner_l2` (halved towards the last
    success, times 10 while the example is never misclassified) and
    ``lambda`` (times 10 when it was misclassified but always flagged). Each
    example keeps its smallest-L2 success; an example never successful keeps
    its smallest misclassified (but flagged) example, or ``x`` itself.

    Parameters
    ----------
    module : torch.nn.Module
        Logits (or log-probabilities), eval mode.
    decision : callable
        Tensor -> decision ``(n,)`` with autograd, e.g. ``detector.to_torch()``.
    x : Tensor of shape (n, C, H, W) in [0, 1]
    y : Tensor of shape (n,), int64
    confidence : float, default=0.0
    max_iter : int, default=100
    binary_search_steps : int, default=6
    initial_const : float, default=1.0
    learning_rate : float, default=0.1
    initial_lambda : float, default=1.0
    kappa : float, default=0.05
    abort_early : bool, default=True

    Returns
    -------
    Tensor like ``x``

    See Also
    --------
    carlini_wagner_l2 : the attack on the classifier alone.
    generate : runs this attack with ``detector=`` and re-checks every example.

    Examples
    --------
    >>> import torch
    >>> from advdetect.attacks import adaptive_carlini_wagner_l2
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> decision = lambda x: 0.5 - x.flatten(1).mean(1)
    >>> x = torch.tensor([[[[0.2, 0.6], [0.4, 0.5]]], [[[0.4, 0.1], [0.5, 0.3]]]])
    >>> y = net(x).argmax(1)
    >>> x_adv = adaptive_carlini_wagner_l2(net, decision, x, y, max_iter=30,
    ...                                    binary_search_steps=3)
    >>> ((net(x_adv).argmax(1) != y) & (decision(x_adv) >= 0)).tolist()
    [True, True]
    """
    n = len(x)
    x = x.detach().clamp(0, 1)
    objective = _AdaptiveObjective(module, decision, x, y, kappa)
    w0 = torch.atanh((2 * x - 1) * (1 - _TANH_SHRINK))
    const = torch.full((n,), float(initial_const), device=x.device)
    lam = torch.full((n,), float(initial_lambda), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), math.inf, device=x.device)
    best_l2 = torch.full((n,), math.inf, device=x.device)
    best_adv = x.clone()
    # Kept when no success is found: the smallest misclassified (flagged) example.
    fallback_l2 = torch.full((n,), math.inf, device=x.device)
    fallback = x.clone()
    check_every = max(max_iter // 10, 1)

    for _ in range(binary_search_steps):
        w = w0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=learning_rate)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        ever_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        previous = math.inf
        for step in range(max_iter):
            x_new = (torch.tanh(w) + 1) / 2
            cls_term, det_term, fooled, evaded = objective(x_new)
            # The classifier term in logits (CW's f6 with its confidence).
            margin_term = ((cls_term - objective.kappa) * objective.m_scale
                           + confidence).clamp_min(0)
            l2 = (x_new - x).pow(2).flatten(1).sum(dim=1)
            attack = margin_term + lam * objective.m_scale * det_term
            loss = l2.sum() + (const * attack).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                ok = fooled & evaded
                found |= ok
                ever_fooled |= fooled
                better = ok & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_adv[better] = x_new[better].detach()
                near = fooled & ~evaded & (l2 < fallback_l2)
                fallback_l2 = torch.where(near, l2, fallback_l2)
                fallback[near] = x_new[near].detach()
            if abort_early and step % check_every == check_every - 1:
                if loss.item() > previous * 0.9999:
                    break
                previous = loss.item()
        with torch.no_grad():
            flagged = ever_fooled & ~found
            lam = torch.where(flagged, (lam * 10).clamp(max=_LAMBDA_RANGE[1]), lam)
            # c: bisect towards the last success; raise it while never misclassified.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(~found & ~ever_fooled, torch.maximum(lower, const), lower)
            const = torch.where(found | flagged,
                                torch.where(torch.isinf(upper), const, (lower + upper) / 2),
                                torch.where(torch.isinf(upper), const * 10,
                                            (lower + upper) / 2))
    never = torch.isinf(best_l2)
    best_adv[never] = fallback[never]
    return best_adv
