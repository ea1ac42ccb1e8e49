"""Our Carlini-Wagner L2 attack, batched in torch.

N. Carlini, D. Wagner, "Towards Evaluating the Robustness of Neural
Networks", IEEE Symposium on Security and Privacy 2017. The L2 attack looks
for the smallest perturbation that changes the classifier's decision. For an
image ``x`` in ``[0, 1]^d`` of label ``y`` and the classifier's logits ``Z``,
each sample solves

    minimise over w:   ||x' - x||_2^2 + c * f(x'),   x' = (tanh(w) + 1) / 2

* ``f`` is the paper's objective f6 (Section V-A) in its untargeted form, with
  the confidence kappa of the L2 attack: ``f(x') = max(Z(x')_y - max_{i != y}
  Z(x')_i, -kappa)`` (written here as ``relu(Z_y - max_{i != y} Z_i + kappa)``,
  the same up to the constant kappa). It is at its floor exactly when another
  class beats ``y`` by at least kappa.
* The box constraint ``x'`` in ``[0, 1]^d`` is met by the change of variables
  ``x' = (tanh(w) + 1) / 2`` (Section V-B), so that the optimisation over
  ``w`` is unconstrained; it runs with Adam from ``w0 = atanh((2x - 1)(1 -
  shrink))`` (a shrink of 1e-3 rather than the authors' 1e-6: see
  ``_TANH_SHRINK``).
* The constant ``c`` is found by a binary search per sample, as in the
  authors' code: halved towards the last success, multiplied by 10 while no
  success is found. Each sample keeps the smallest-L2 example whose margin
  exceeded kappa during the whole run.

:func:`carlini_wagner_l2` runs this on torch tensors; ``generate(...,
attack="cw")`` (``backend="torch"``, the default) runs it on numpy images batch
by batch and checks every example. The attack needs no optional dependency.
"""

import math

import torch

__all__ = ["carlini_wagner_l2"]


# atanh(±1) is infinite, so the box is shrunk a little before the change of
# variables. The authors shrink by 1e-6, which starts MNIST's many saturated
# pixels (exactly 0 or 1) at |w| = 7.3 where tanh is flat; Adam's steps have a
# fixed size, so at 50 steps of 0.1 most of each binary-search step went to
# walking back from there (measured: 71 % fooled at confidence 9 instead of
# 100 %). 1e-3 starts them at |w| = 3.8 and moves a pixel by at most 5e-4.
_TANH_SHRINK = 1e-3


def carlini_wagner_l2(module, x, y, *, confidence=0.0, max_iter=50, binary_search_steps=4,
                      initial_const=1.0, learning_rate=0.1, abort_early=True):
    """Untargeted Carlini-Wagner L2 attack on one batch of torch tensors.

    N. Carlini, D. Wagner, "Towards Evaluating the Robustness of Neural
    Networks", IEEE Symposium on Security and Privacy 2017. Minimises
    ``||x' - x||_2^2 + c * f6(x')`` with ``f6(x') = max(Z(x')_y - max_{i != y}
    Z(x')_i, -confidence)`` (Section V-A, objective f6, untargeted form) over
    the change of variables ``x' = (tanh(w) + 1) / 2`` (Section V-B, box
    constraint), with Adam, and a binary search on ``c`` kept per sample. Each
    sample keeps the smallest-L2 example whose margin exceeded ``confidence``
    during the whole run; a sample never fooled is returned unchanged.

    Every sample is optimised independently (the loss is a sum over the batch
    and Adam is element-wise), so the batch is one vectorised optimisation.

    Parameters
    ----------
    module : torch.nn.Module
        Returns logits (or log-probabilities) of shape (n, n_classes); in eval
        mode.
    x : Tensor of shape (n, C, H, W) in [0, 1]
    y : Tensor of shape (n,), int64
        Labels the examples must move away from.
    confidence : float, default=0.0
        The margin kappa by which another class must beat ``y``.
    max_iter : int, default=50
        Adam steps per binary-search step.
    binary_search_steps : int, default=4
        Values of ``c`` tried per sample: halved towards the last success,
        multiplied by 10 while no success is found (as the authors' code does).
    initial_const : float, default=1.0
        First ``c``.
    learning_rate : float, default=0.1
        Adam's step size in tanh space.
    abort_early : bool, default=True
        Stop a binary-search step when the batch loss has not decreased by
        0.01 % over the last ``max_iter // 10`` steps (the authors' rule).

    Returns
    -------
    Tensor like ``x``
        The adversarial examples, in [0, 1]; a sample never fooled is ``x``
        itself (clamped to [0, 1]).

    See Also
    --------
    generate : runs this attack (``attack="cw"``) on numpy images, batch by
        batch, and checks every example.

    Examples
    --------
    A two-class linear model on 2x2 images; both inputs are pushed across its
    decision boundary:

    >>> import torch
    >>> from advdetect.attacks import carlini_wagner_l2
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> x = torch.tensor([[[[0.2, 0.8], [0.4, 0.6]]], [[[0.9, 0.1], [0.5, 0.3]]]])
    >>> y = net(x).argmax(1)                    # the classes the model gives them
    >>> x_adv = carlini_wagner_l2(net, x, y, max_iter=20, binary_search_steps=3)
    >>> x_adv.shape, bool(((x_adv >= 0) & (x_adv <= 1)).all())
    (torch.Size([2, 1, 2, 2]), True)
    >>> (net(x_adv).argmax(1) != y).tolist()    # both fooled
    [True, True]
    """
    n = len(x)
    x = x.detach().clamp(0, 1)
    w0 = torch.atanh((2 * x - 1) * (1 - _TANH_SHRINK))
    const = torch.full((n,), float(initial_const), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), math.inf, device=x.device)
    best_l2 = torch.full((n,), math.inf, device=x.device)
    best_adv = x.clone()
    check_every = max(max_iter // 10, 1)

    for _ in range(binary_search_steps):
        w = w0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=learning_rate)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        previous = math.inf
        for step in range(max_iter):
            x_new = (torch.tanh(w) + 1) / 2
            logits = module(x_new)
            real = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
            margin = real - other
            l2 = (x_new - x).pow(2).flatten(1).sum(dim=1)
            loss = l2.sum() + (const * (margin + confidence).clamp_min(0)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                # The example before this step: its margin and L2 are those computed.
                fooled = margin < -confidence
                found |= fooled
                better = fooled & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_adv[better] = x_new[better].detach()
            if abort_early and step % check_every == check_every - 1:
                if loss.item() > previous * 0.9999:
                    break
                previous = loss.item()
        with torch.no_grad():
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return best_adv


def _torch_cw(module, p, device):
    """The function ``(x, y) -> x_adv`` that ``generate`` runs on numpy batches."""
    def run(x, y):
        xt = torch.as_tensor(x, dtype=torch.float32, device=device)
        yt = torch.as_tensor(y, dtype=torch.int64, device=device)
        return carlini_wagner_l2(
            module, xt, yt, confidence=p["confidence"], max_iter=p["max_iter"],
            binary_search_steps=p["binary_search_steps"], initial_const=p["initial_const"],
            learning_rate=p["learning_rate"], abort_early=p["abort_early"],
        ).cpu().numpy()
    return run
