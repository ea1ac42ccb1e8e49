"""Adversarial example generation for benchmarks and examples.

One small interface, :func:`generate`, runs any attack of :data:`ATTACKS` on
images given as float32 numpy arrays of shape ``(n, C, H, W)`` in ``[0, 1]``,
batch by batch, and returns an :class:`AttackResult` that says which inputs
were fooled and by how much they were perturbed.

The gradient attacks run through the Adversarial Robustness Toolbox
(``art``), the field's standard. Carlini-Wagner L2 runs by default through a
batched implementation in torch written here (``backend="torch"``), because
ART's was measured far slower and weaker (see :func:`generate`, Notes).

Three habits of a careful benchmark are built in:

* only the inputs the classifier gets right are attacked (``only_correct``);
* every adversarial example is re-checked by :func:`check_adversarial`
  (prediction changed, finite, inside ``[0, 1]``, within the attack's budget,
  not a blank image), since attack tools can fail silently;
* the success rate and the L2 / L-infinity sizes of the perturbations are
  reported with the examples, so a figure is never shown without them.
"""

import contextlib
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ._extras import require
from .base import as_logits, infer_output_kind, layout_hint, seeded, unwrap_classifier

__all__ = ["ATTACKS", "CW_BACKENDS", "AttackResult", "adaptive_carlini_wagner_l2", "adaptive_pgd",
           "carlini_wagner_l2", "check_adversarial", "generate", "perturbation_norms"]

#: The attacks :func:`generate` runs, each with the paper it implements.
#: ``"cw_l2"`` is another name for ``"cw"``.
ATTACKS = {
    "fgsm": "Fast Gradient Sign Method: I. J. Goodfellow, J. Shlens, C. Szegedy, "
            "'Explaining and Harnessing Adversarial Examples', ICLR 2015.",
    "bim": "Basic Iterative Method: A. Kurakin, I. Goodfellow, S. Bengio, "
           "'Adversarial examples in the physical world', ICLR Workshop 2017.",
    "pgd": "Projected Gradient Descent: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, "
           "A. Vladu, 'Towards Deep Learning Models Resistant to Adversarial Attacks', "
           "ICLR 2018.",
    "cw": "Carlini-Wagner L2: N. Carlini, D. Wagner, 'Towards Evaluating the Robustness "
          "of Neural Networks', IEEE S&P 2017.",
    "cw_l2": "Alias of 'cw'.",
    "deepfool": "DeepFool: S.-M. Moosavi-Dezfooli, A. Fawzi, P. Frossard, 'DeepFool: a "
                "simple and accurate method to fool deep neural networks', CVPR 2016.",
    "jsma": "Jacobian-based Saliency Map Attack: N. Papernot, P. McDaniel, S. Jha, "
            "M. Fredrikson, Z. B. Celik, A. Swami, 'The Limitations of Deep Learning in "
            "Adversarial Settings', IEEE EuroS&P 2016.",
}

_ALIASES = {"cw_l2": "cw"}

#: Backends of the Carlini-Wagner L2 attack.
CW_BACKENDS = ("torch", "art")

# Tolerances of :func:`check_adversarial`: a budget may be exceeded by float
# rounding only, and a pixel may lie a rounding error outside [0, 1].
BUDGET_TOLERANCE = 1e-4
RANGE_TOLERANCE = 1e-5
# An image whose pixel range is below this is constant (a blank image).
CONSTANT_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- #
# The result
# --------------------------------------------------------------------------- #
@dataclass(repr=False)
class AttackResult:
    """Adversarial examples and how well the attack did.

    Attributes
    ----------
    attack : str
        The attack's name (an alias is resolved, ``"cw_l2"`` -> ``"cw"``).
    x_adv : ndarray of shape (n, C, H, W), float32
        One adversarial example per input, in the order of the inputs; an input
        that was not attacked is copied unchanged.
    success : ndarray of shape (n,), bool
        The example is classified differently from ``y`` and passes the
        degenerate check of :func:`check_adversarial`. Always False where not
        ``attacked``.
    attacked : ndarray of shape (n,), bool
        The inputs handed to the attack (with ``only_correct=True``, those the
        classifier classifies correctly).
    y_pred_adv : ndarray of shape (n,), int64
        The classifier's predictions on ``x_adv``.
    l2, linf : ndarray of shape (n,), float64
        L2 and L-infinity norms of ``x_adv - X`` per input (NaN where
        ``x_adv`` has a NaN).
    seconds : float
        Wall time of the attack, predictions and checks included.
    params : dict
        The settings used, defaults filled in (for a benchmark to print).
    fooled_classifier : ndarray of shape (n,), bool, or None
        Detector-aware attacks only (``generate(..., detector=...)``): the
        example is misclassified and passes :func:`check_adversarial`.
    evaded_detector : ndarray of shape (n,), bool, or None
        Detector-aware attacks only: the detector's ``predict`` calls the
        example clean (+1) at its current threshold (``offset_``). For these
        attacks ``success = fooled_classifier & evaded_detector``, so
        ``success_rate`` is the bypass rate.
    """

    attack: str
    x_adv: np.ndarray
    success: np.ndarray
    attacked: np.ndarray
    y_pred_adv: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    seconds: float
    params: dict = field(default_factory=dict)
    fooled_classifier: np.ndarray = None
    evaded_detector: np.ndarray = None

    @property
    def n_attacked(self):
        """Number of inputs that were attacked."""
        return int(self.attacked.sum())

    @property
    def success_rate(self):
        """Fraction of the attacked inputs that were fooled (NaN if none attacked)."""
        n = self.n_attacked
        return float(self.success.sum() / n) if n else float("nan")

    @property
    def mean_l2(self):
        """Mean L2 perturbation over the successful examples (NaN if none)."""
        return float(self.l2[self.success].mean()) if self.success.any() else float("nan")

    @property
    def mean_linf(self):
        """Mean L-infinity perturbation over the successful examples (NaN if none)."""
        return float(self.linf[self.success].mean()) if self.success.any() else float("nan")

    def __repr__(self):
        return (f"AttackResult(attack={self.attack!r}, n={len(self.success)}, "
                f"attacked={self.n_attacked}, success_rate={self.success_rate:.3f}, "
                f"mean_l2={self.mean_l2:.3f}, mean_linf={self.mean_linf:.3f}, "
                f"seconds={self.seconds:.1f})")


# --------------------------------------------------------------------------- #
# The degenerate check
# --------------------------------------------------------------------------- #
def perturbation_norms(x, x_adv):
    """Per-sample L2 and L-infinity norms of ``x_adv - x``, as float64.

    Parameters
    ----------
    x, x_adv : array-like of shape (n, ...)
        Clean images and their adversarial examples, of one shape (any shape
        after the first axis: each sample is flattened).

    Returns
    -------
    l2, linf : ndarray of shape (n,), float64
        ``||x_adv - x||_2`` and ``||x_adv - x||_inf`` per sample; NaN where
        ``x_adv`` has a NaN, 0 for samples of no values.

    Examples
    --------
    >>> import numpy as np
    >>> l2, linf = perturbation_norms(np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), 0.5))
    >>> float(l2[0]), float(linf[0])
    (1.0, 0.5)
    """
    d = (np.asarray(x_adv, dtype=np.float64) - np.asarray(x, dtype=np.float64))
    d = d.reshape(len(d), -1)
    if d.shape[1] == 0:
        return np.zeros(len(d)), np.zeros(len(d))
    return np.sqrt((d ** 2).sum(axis=1)), np.abs(d).max(axis=1)


def check_adversarial(x, x_adv, y, y_pred_adv, norm=None, eps=None):
    """Which adversarial examples are real successes, not silent failures.

    Attack tools can fail silently: one returned blank images where it found
    nothing, and a blank image is "misclassified" too. An example counts as a
    success only if all of these hold:

    * its prediction ``y_pred_adv`` differs from the label ``y``;
    * it has no NaN or infinite value;
    * its values lie in ``[0, 1]`` (up to ``RANGE_TOLERANCE`` = 1e-5);
    * its perturbation is within the attack's budget, ``||x_adv - x||_norm <=
      eps + BUDGET_TOLERANCE`` (1e-4), when ``eps`` is given (L-infinity and
      L2 attacks such as FGSM, BIM and PGD; minimal-perturbation attacks such
      as Carlini-Wagner, DeepFool and JSMA have no budget);
    * it is not a constant image unless the clean image was constant too.

    Parameters
    ----------
    x, x_adv : array-like of shape (n, ...)
        Clean and adversarial images.
    y : array-like of shape (n,)
        True labels.
    y_pred_adv : array-like of shape (n,)
        The classifier's predictions on ``x_adv``.
    norm : {inf, 2} or None, default=None
        Norm of the budget; ``np.inf`` when ``eps`` is given and ``norm`` is not.
    eps : float or None, default=None
        The attack's budget, in the units of the input range [0, 1] (above 1
        for L-infinity, or above ``sqrt(d)`` for L2, is a ValueError: every
        image would pass); None checks no budget.

    Returns
    -------
    ndarray of shape (n,), bool

    Examples
    --------
    A blank image that the classifier calls "1" is not an adversarial example
    of a "0", and neither is one outside the budget:

    >>> import numpy as np
    >>> x = np.array([[[[0.2, 0.8], [0.4, 0.6]]]] * 3)
    >>> x_adv = x.copy()
    >>> x_adv[0] += 0.1                 # a real example, L-infinity 0.1
    >>> x_adv[1] = 0.0                  # blank
    >>> x_adv[2] = 1 - x[2]             # L-infinity 0.6, over the budget
    >>> check_adversarial(x, x_adv, y=[0, 0, 0], y_pred_adv=[1, 1, 1], eps=0.3)
    array([ True, False, False])
    """
    x = np.asarray(x, dtype=np.float64)
    x_adv = np.asarray(x_adv, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    y_pred_adv = np.asarray(y_pred_adv).reshape(-1)
    if x.shape != x_adv.shape or len(y) != len(x) or len(y_pred_adv) != len(x):
        raise ValueError(
            f"x {x.shape}, x_adv {x_adv.shape}, y ({len(y)},) and y_pred_adv "
            f"({len(y_pred_adv)},) must describe the same samples.")
    n = len(x)
    flat, flat_adv = x.reshape(n, -1), x_adv.reshape(n, -1)
    ok = y_pred_adv != y
    finite = np.isfinite(flat_adv).all(axis=1)
    ok &= finite
    with np.errstate(invalid="ignore"):
        ok &= (flat_adv >= -RANGE_TOLERANCE).all(axis=1) & \
            (flat_adv <= 1 + RANGE_TOLERANCE).all(axis=1)
        if eps is not None:
            norm = np.inf if norm is None else _check_norm(norm)
            _check_budget({"eps": eps, "norm": norm}, x.shape[1:])
            d = flat_adv - flat
            size = np.abs(d).max(axis=1) if norm == np.inf else np.sqrt((d ** 2).sum(axis=1))
            ok &= size <= eps + BUDGET_TOLERANCE
        if flat.shape[1]:
            blank = np.ptp(flat_adv, axis=1) < CONSTANT_TOLERANCE
            was_blank = np.ptp(flat, axis=1) < CONSTANT_TOLERANCE
            ok &= ~blank | was_blank
    return ok


def _check_norm(norm):
    if norm in (np.inf, "inf") or (isinstance(norm, numbers.Real) and math.isinf(norm)):
        return np.inf
    if isinstance(norm, numbers.Real) and not isinstance(norm, bool) and norm == 2:
        return 2
    raise ValueError(f"norm must be np.inf or 2; got {norm!r}.")


# --------------------------------------------------------------------------- #
# The attacks
# --------------------------------------------------------------------------- #
def _onehot(y, k):
    out = np.zeros((len(y), k), dtype=np.float32)
    out[np.arange(len(y)), y] = 1
    return out


def _art_fgsm(art_clf, p, batch_size, rng):
    from art.attacks.evasion import FastGradientMethod

    attack = FastGradientMethod(art_clf, norm=p["norm"], eps=p["eps"], targeted=False,
                                num_random_init=0, batch_size=batch_size)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _art_bim(art_clf, p, batch_size, rng):
    from art.attacks.evasion import BasicIterativeMethod

    attack = BasicIterativeMethod(art_clf, eps=p["eps"], eps_step=p["eps_step"],
                                  max_iter=p["max_iter"], targeted=False,
                                  batch_size=batch_size, verbose=False)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _art_pgd(art_clf, p, batch_size, rng):
    from art.attacks.evasion import ProjectedGradientDescent

    attack = ProjectedGradientDescent(art_clf, norm=p["norm"], eps=p["eps"],
                                      eps_step=p["eps_step"], max_iter=p["max_iter"],
                                      targeted=False, num_random_init=p["num_random_init"],
                                      batch_size=batch_size, verbose=False)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _art_deepfool(art_clf, p, batch_size, rng):
    from art.attacks.evasion import DeepFool

    attack = DeepFool(art_clf, max_iter=p["max_iter"], epsilon=p["overshoot"],
                      nb_grads=p["nb_grads"], batch_size=batch_size, verbose=False)
    # DeepFool starts from the classifier's own prediction, not from y.
    return lambda x, y: attack.generate(x)


def _art_jsma(art_clf, p, batch_size, rng):
    from art.attacks.evasion import SaliencyMapMethod

    attack = SaliencyMapMethod(art_clf, theta=p["theta"], gamma=p["gamma"],
                               batch_size=batch_size, verbose=False)
    k = art_clf.nb_classes

    def run(x, y):
        # JSMA is targeted: a random class other than the label, per sample, from
        # our seeded generator (ART's own default draws one target per class).
        targets = (y + rng.integers(1, k, size=len(y))) % k
        return attack.generate(x, y=_onehot(targets, k))
    return run


def _art_cw(art_clf, p, batch_size, rng):
    from art.attacks.evasion import CarliniL2Method

    attack = CarliniL2Method(art_clf, confidence=p["confidence"], targeted=False,
                             learning_rate=p["learning_rate"],
                             binary_search_steps=p["binary_search_steps"],
                             max_iter=p["max_iter"], initial_const=p["initial_const"],
                             batch_size=batch_size, verbose=False)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _torch_cw(module, p, device):
    def run(x, y):
        xt = torch.as_tensor(x, dtype=torch.float32, device=device)
        yt = torch.as_tensor(y, dtype=torch.int64, device=device)
        return carlini_wagner_l2(
            module, xt, yt, confidence=p["confidence"], max_iter=p["max_iter"],
            binary_search_steps=p["binary_search_steps"], initial_const=p["initial_const"],
            learning_rate=p["learning_rate"], abort_early=p["abort_early"],
        ).cpu().numpy()
    return run


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


# --------------------------------------------------------------------------- #
# Detector-aware (adaptive) attacks
# --------------------------------------------------------------------------- #
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


# name -> (budget norm param or None, defaults, builder, backend kind)
# Defaults may be callables of the parameters resolved so far (eps-relative ones).
_SPECS = {
    "fgsm": dict(budget=True, defaults={"eps": 0.3, "norm": np.inf}, build=_art_fgsm),
    "bim": dict(budget=True, defaults={
        "eps": 0.3, "eps_step": lambda p: p["eps"] / 5, "max_iter": 10,
    }, build=_art_bim),
    "pgd": dict(budget=True, defaults={
        "eps": 0.3, "norm": np.inf,
        "eps_step": lambda p: (min(p["eps"] / 4, 0.01) if p["norm"] == np.inf
                               else 2.5 * p["eps"] / p["max_iter"]),
        "max_iter": 40, "num_random_init": 1,
    }, build=_art_pgd),
    "cw": dict(budget=False, defaults={
        "backend": "torch", "confidence": 0.0, "max_iter": 50, "binary_search_steps": 4,
        "initial_const": 1.0, "learning_rate": 0.1, "abort_early": True,
    }, build=None),
    "deepfool": dict(budget=False, defaults={"max_iter": 50, "overshoot": 0.02, "nb_grads": 10},
                     build=_art_deepfool),
    "jsma": dict(budget=False, defaults={"theta": 1.0, "gamma": 0.1}, build=_art_jsma),
}
# Parameters that the ART backend of CW takes (abort_early is the torch one's).
_CW_ART_PARAMS = ("confidence", "max_iter", "binary_search_steps", "initial_const",
                  "learning_rate")


def _check_budget(params, image_shape):
    """Reject an eps-like setting larger than any perturbation of an image in [0, 1].

    ``eps`` and ``eps_step`` are in the units of the input range [0, 1], so an
    L-infinity budget above 1 (the 8/255 habit typed as ``eps=8``) allows any
    image and destroys it; an L2 budget above ``sqrt(C*H*W)``, the L2 distance
    between an all-0 and an all-1 image, allows any image too. JSMA's ``theta``
    (the change of one pixel per step) is in the same units.
    """
    n_features = int(np.prod(image_shape)) if image_shape is not None else None
    norm = params.get("norm", np.inf)
    for key in ("eps", "eps_step", "theta"):
        if key not in params:
            continue
        value = params[key]
        if key == "theta":
            limit, what = 1.0, "the change of a pixel per step"
            value = abs(value)
        elif norm == np.inf:
            limit, what = 1.0, "an L-infinity distance"
        elif n_features is not None:
            limit = math.sqrt(n_features)
            what = (f"an L2 distance, at most sqrt({n_features}) = {limit:.4g} between two "
                    f"images of shape {tuple(image_shape)} in [0, 1]")
        else:
            continue
        if value > limit:
            raise ValueError(
                f"{key}={params[key]!r} is larger than the input range allows ({what}): "
                f"{key} is in the units of the input range [0, 1]; did you mean "
                f"{params[key]!r}/255 = {value / 255:.4g}?")


def _resolve_params(attack, eps, attack_params, image_shape=None):
    spec = _SPECS[attack]
    defaults = spec["defaults"]
    if eps is not None:
        if not spec["budget"]:
            raise ValueError(
                f"eps does not apply to attack {attack!r}, which looks for a minimal "
                f"perturbation and has no budget; leave eps=None.")
        attack_params = {**attack_params, "eps": eps}
    unknown = sorted(set(attack_params) - set(defaults))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {unknown} for attack {attack!r}; it accepts "
            f"{sorted(defaults)}.")
    params = {}
    # Plain values first, then the defaults that depend on them.
    for key, value in defaults.items():
        if key in attack_params:
            params[key] = attack_params[key]
        elif not callable(value):
            params[key] = value
    if "norm" in params:
        params["norm"] = _check_norm(params["norm"])
    if "eps" in params and (not isinstance(params["eps"], numbers.Real)
                            or not params["eps"] > 0 or not math.isfinite(params["eps"])):
        raise ValueError(f"eps must be a positive number; got {params['eps']!r}.")
    for key, value in defaults.items():
        if key not in params:
            params[key] = value(params)
    for key in ("eps_step", "theta"):
        if key in params and (not isinstance(params[key], numbers.Real)
                              or isinstance(params[key], bool)
                              or not math.isfinite(params[key])
                              or (key == "eps_step" and not params[key] > 0)):
            raise ValueError(f"{key} must be a {'positive ' * (key == 'eps_step')}number; "
                             f"got {params[key]!r}.")
    _check_budget(params, image_shape)
    if attack == "cw":
        if params["backend"] not in CW_BACKENDS:
            raise ValueError(f"backend must be one of {CW_BACKENDS}; got {params['backend']!r}.")
        if params["backend"] == "art":
            if "abort_early" in attack_params:
                raise TypeError("abort_early applies to backend='torch' only.")
            params.pop("abort_early")
    return {key: params[key] for key in defaults if key in params}


# --------------------------------------------------------------------------- #
# The classifier during an attack
# --------------------------------------------------------------------------- #
class _LogProbabilities(torch.nn.Module):
    """Log of a module's probabilities, so that cross-entropy (and CW's margin) is right."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return as_logits(self.module(x), "proba")


@contextlib.contextmanager
def _attack_mode(module):
    """Eval mode and frozen parameters for the attack, restored afterwards.

    Freezing the parameters spares computing their gradients (only the input's
    are needed) and leaves their ``.grad`` alone; ART's ``zero_grad`` would
    otherwise clear them.
    """
    training = {m: m.training for m in module.modules()}
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    module.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, mode in training.items():
            m.training = mode


def _probe_victim(module, X, y, batch_size, device):
    """The attacked function and the number of classes, from one forward pass.

    The classifier must return class scores ``(n, n_classes)`` that ``y``
    indexes; probabilities are attacked through their log (so that
    cross-entropy and CW's margin are right). A layout the classifier cannot
    run on gets an error that says how to fix it.
    """
    try:
        with torch.no_grad():
            probe = module(torch.as_tensor(X[:min(len(X), batch_size)], device=device))
    except RuntimeError as exc:
        raise ValueError(f"the classifier cannot run on images of shape {X.shape[1:]}: "
                         f"{exc}." + layout_hint(X.shape)) from exc
    if probe.ndim != 2:
        raise ValueError(f"the classifier must return class scores of shape (n, n_classes); "
                         f"got {tuple(probe.shape)}.")
    n_classes = int(probe.shape[1])
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y holds labels outside 0..{n_classes - 1}, the classifier's "
                         "classes.")
    victim = _LogProbabilities(module) if infer_output_kind(probe) == "proba" else module
    return victim, n_classes


def _predict(module, X, batch_size, device):
    out = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            xb = torch.as_tensor(X[start:start + batch_size], dtype=torch.float32, device=device)
            out.append(module(xb).argmax(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def _validate(X, y, batch_size, verbose):
    X = np.asarray(X)
    if X.ndim != 4:
        raise ValueError(
            f"X must be images of shape (n, C, H, W); got an array of shape {X.shape}."
            + layout_hint(X.shape))
    if X.dtype.kind not in "fiub":
        raise ValueError(f"X must be numeric; got dtype {X.dtype}.")
    X = X.astype(np.float32, copy=False)
    if len(X) == 0:
        raise ValueError("X has no samples.")
    if not np.isfinite(X).all():
        raise ValueError("X has NaN or infinite values.")
    lo, hi = float(X.min()), float(X.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"X must be scaled to [0, 1]; its values span [{lo:g}, {hi:g}] "
            "(divide 8-bit images by 255).")
    X = np.clip(X, 0, 1)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be a 1-d array of {len(X)} labels, one per image; "
                         f"got shape {y.shape}.")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise ValueError(f"y must hold integer class labels; got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if verbose not in (0, 1, False, True):
        raise ValueError(f"verbose must be 0 or 1; got {verbose!r}.")
    return X, y


# --------------------------------------------------------------------------- #
# The interface
# --------------------------------------------------------------------------- #
def generate(classifier, X, y, attack="fgsm", eps=None, *, batch_size=256, only_correct=True,
             random_state=None, verbose=0, detector=None, **attack_params):
    """Generate adversarial examples for ``X`` and check each one.

    Parameters
    ----------
    classifier : torch.nn.Module, fitted skorch net, or FrozenEstimator
        The victim. Its module must return logits or probabilities (detected
        on the first batch; probabilities are attacked through their log). It
        is put in eval mode for the attack; its weights are not changed, and its
        modes and ``requires_grad`` flags are restored afterwards.
    X : ndarray of shape (n, C, H, W)
        Images scaled to [0, 1].
    y : array-like of shape (n,)
        True labels.
    attack : str, default="fgsm"
        One of :data:`ATTACKS` (see the table below).
    eps : float, default=None
        Budget of ``"fgsm"``, ``"bim"`` and ``"pgd"`` (in the attack's norm), in
        the units of the input range [0, 1] (8/255, not 8); None means the
        attack's default, 0.3. The other attacks look for a
        minimal perturbation: ``eps`` must stay None for them.
    batch_size : int, default=256
        Images per attack batch.
    only_correct : bool, default=True
        Attack only the inputs the classifier classifies correctly; the others
        are returned unchanged with ``success=False``, and ``success_rate``
        counts the attacked ones only.
    random_state : int, numpy Generator or RandomState, or None, default=None
        Seeds torch and numpy for the call (restored afterwards), so the same
        call gives the same examples on the CPU.
    verbose : {0, 1}, default=0
        1 shows a tqdm progress bar over batches.
    detector : fitted detector, torch module, or None, default=None
        None: attack the classifier alone (the attacks below, unchanged).
        Given, the attack is *detector-aware* (adaptive): ``"pgd"`` runs
        :func:`adaptive_pgd` and ``"cw"`` :func:`adaptive_carlini_wagner_l2`
        through ``detector.to_torch()`` (or the module itself: a callable
        mapping images to the decision ``(n,)``, negative = flagged), and an
        example succeeds only if it is misclassified **and** not flagged at
        the detector's current threshold (``offset_``, as set by ``fit`` or
        ``calibrate``), re-checked through the detector's public ``predict``.
        The result's ``fooled_classifier`` and ``evaded_detector`` say which
        part held. Settings and defaults: ``"pgd"``: ``eps=0.3``,
        ``norm=np.inf`` (or 2), ``max_iter=100``, ``eps_step=eps/4``
        (cosine-annealed to 0), ``restarts=2``, ``lambda_steps=3``,
        ``initial_lambda=1``, ``kappa=0.05``; ``"cw"``: ``confidence=0``,
        ``max_iter=100``, ``binary_search_steps=6``, ``initial_const=1``,
        ``learning_rate=0.1``, ``abort_early=True``, ``initial_lambda=1``,
        ``kappa=0.05``. Other attacks raise ``ValueError``.
    **attack_params
        The attack's settings (below); an unknown name raises ``TypeError``.

    Returns
    -------
    AttackResult

    Raises
    ------
    ValueError
        Unknown attack; ``X`` not of rank 4, not finite or outside [0, 1];
        ``y`` not one label per image; ``eps`` given to an attack without a
        budget; a setting out of range, among them an ``eps`` or ``eps_step``
        larger than any perturbation of an image in [0, 1] (above 1 for
        L-infinity, the habit of ``eps=8`` for 8/255; above ``sqrt(C*H*W)``
        for L2) and a JSMA ``|theta|`` above 1.

    Notes
    -----
    The attacks and their defaults (``res.params`` records the values used):

    ============ ===============================================================
    ``fgsm``     ART ``FastGradientMethod``, one step: ``eps=0.3``,
                 ``norm=np.inf`` (or 2). Moves away from the true label ``y``.
    ``bim``      ART ``BasicIterativeMethod`` (L-infinity): ``eps=0.3``,
                 ``eps_step=eps/5`` (Feature Squeezing's MNIST step, 0.06 at
                 ε 0.3), ``max_iter=10``.
    ``pgd``      ART ``ProjectedGradientDescent``: ``eps=0.3``,
                 ``norm=np.inf`` (or 2), ``max_iter=40``, one random start
                 (``num_random_init=1``), ``eps_step=min(eps/4, 0.01)`` for
                 L-infinity (Madry et al.'s MNIST setting: 0.01 for ε 0.3, 40
                 steps; 2/255 for ε 8/255) and ``2.5*eps/max_iter`` for L2.
    ``cw``       Carlini-Wagner L2, untargeted: ``backend="torch"`` (below),
                 ``confidence=0`` (the papers' κ; CMAG uses 9/19/29),
                 ``max_iter=50`` Adam steps per binary-search step,
                 ``binary_search_steps=4`` on ``c`` per sample,
                 ``initial_const=1``, ``learning_rate=0.1``,
                 ``abort_early=True``. ``backend="art"`` runs ART's
                 ``CarliniL2Method`` with the same settings (but no
                 ``abort_early``).
    ``deepfool`` ART ``DeepFool``: ``max_iter=50``, ``overshoot=0.02`` (the
                 paper's; ART's own default 1e-6 leaves examples on the
                 boundary), ``nb_grads=10``.
    ``jsma``     ART ``SaliencyMapMethod``: ``theta=1.0``, ``gamma=0.1``,
                 targeted at a random class other than ``y`` per sample.
    ============ ===============================================================

    CW backend (measured on MNIST, the 9-layer CNN of the design notes at 95 %
    test accuracy, confidence 9, initial const 1, batch 256, 2 CPU cores shared
    with other jobs, so seconds vary with the load):

    * ART's ``CarliniL2Method`` (``backend="art"``; max_iter 50, 4 binary-search
      steps, learning rate 0.01): 1,136 s for 61 images, 70 % fooled, mean L2
      4.61 (an earlier measurement: 249 s for 256 images, 48 %). It optimises
      and line-searches in numpy, image by image.
    * foolbox 3.3.4's ``L2CarliniWagnerAttack``, 4 x 300 steps of 0.05: 100 %
      of 122 images, mean L2 2.87, ~1,200 forward-backward passes per image
      (404 s). At this module's budget (4 x 50 steps of 0.1) it fooled 71 %,
      mean L2 4.06 — exactly what :func:`carlini_wagner_l2` gives with the
      authors' box shrink of 1e-6, hence the shrink of 1e-3 here
      (``_TANH_SHRINK``). Not a dependency: this needs neither.
    * ``backend="torch"``, the defaults (4 x 50 steps of 0.1, ~200 passes per
      image): 100 % of the 955 correctly classified images among 1,000, mean
      L2 3.17, median 2.99; 245 images took 111 s at a load of ~3. The
      1,000-image run's 193,000 passes take ~115 s at the ~1,700 passes/s
      measured on a quiet machine (1,023 s when the load was ~8; on a busy
      machine ``torch.set_num_threads(1)`` ran 820 passes/s against 390 with
      two threads). Raise
      ``max_iter`` for smaller perturbations (foolbox's 300 steps: L2 2.87),
      lower ``binary_search_steps`` to 3 for 25 % less time (L2 ~3.6).

    Success. An example succeeds if the classifier's prediction differs from
    ``y`` and it passes :func:`check_adversarial`: no NaN, values in [0, 1],
    within the budget (FGSM, BIM, PGD: ``||x_adv - x|| <= eps + 1e-4``), and not
    a constant (blank) image unless the input was.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from advdetect.attacks import generate
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X = np.array([[[[0.2, 0.8], [0.4, 0.6]]], [[[0.9, 0.1], [0.5, 0.3]]]],
    ...              dtype=np.float32)
    >>> y = net(torch.from_numpy(X)).argmax(1).numpy()     # labels it gets right
    >>> res = generate(net, X, y, attack="fgsm", eps=0.1, random_state=0)
    >>> res.x_adv.shape, res.x_adv.dtype
    ((2, 1, 2, 2), dtype('float32'))
    >>> bool(np.all(res.linf <= 0.1 + 1e-6)), res.params
    (True, {'eps': 0.1, 'norm': inf})
    >>> res.success.dtype, res.attacked.tolist()
    (dtype('bool'), [True, True])
    """
    start_time = time.perf_counter()
    if not isinstance(attack, str) or attack.lower() not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {list(ATTACKS)}.")
    name = _ALIASES.get(attack.lower(), attack.lower())
    if detector is not None:
        return _generate_adaptive(classifier, X, y, name, eps, detector, batch_size,
                                  only_correct, random_state, verbose, attack_params, start_time)
    X, y = _validate(X, y, batch_size, verbose)
    params = _resolve_params(name, eps, attack_params, X.shape[1:])

    module = unwrap_classifier(classifier)
    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")

    with _attack_mode(module), seeded(random_state) as rng:
        victim, n_classes = _probe_victim(module, X, y, batch_size, device)
        y_pred = _predict(victim, X, batch_size, device)
        attacked = (y_pred == y) if only_correct else np.ones(len(X), dtype=bool)
        idx = np.flatnonzero(attacked)
        run = _build(name, params, victim, X.shape[1:], n_classes, batch_size, device, rng)

        x_adv = X.copy()
        batches = range(0, len(idx), batch_size)
        if verbose:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"attack {name}", unit="batch")
        for start in batches:
            sel = idx[start:start + batch_size]
            out = np.asarray(run(X[sel], y[sel]), dtype=np.float32)
            x_adv[sel] = out.reshape(X[sel].shape)
        y_pred_adv = y_pred.copy()
        y_pred_adv[idx] = _predict(victim, np.nan_to_num(x_adv[idx]), batch_size, device)

    budget = _SPECS[name]["budget"]
    success = check_adversarial(X, x_adv, y, y_pred_adv,
                                norm=params.get("norm", np.inf) if budget else None,
                                eps=params["eps"] if budget else None) & attacked
    l2, linf = perturbation_norms(X, x_adv)
    return AttackResult(attack=name, x_adv=x_adv, success=success, attacked=attacked,
                        y_pred_adv=y_pred_adv, l2=l2, linf=linf,
                        seconds=time.perf_counter() - start_time, params=params)


# The detector-aware attacks of ``generate(..., detector=...)``: name -> settings of
# the base attack (with the adaptive defaults) and the adaptive-only settings.
_ADAPTIVE_DEFAULTS = {
    "pgd": dict(base={"norm": np.inf, "max_iter": 100, "eps_step": None},
                own={"restarts": 2, "lambda_steps": 3, "initial_lambda": 1.0, "kappa": 0.05}),
    "cw": dict(base={"confidence": 0.0, "max_iter": 100, "binary_search_steps": 6,
                     "initial_const": 1.0, "learning_rate": 0.1, "abort_early": True},
               own={"initial_lambda": 1.0, "kappa": 0.05}),
}


def _resolve_adaptive_params(name, eps, attack_params):
    if name not in _ADAPTIVE_DEFAULTS:
        raise ValueError(f"attack {name!r} has no detector-aware form; with detector=..., "
                         f"choose one of {sorted(_ADAPTIVE_DEFAULTS)}.")
    spec = _ADAPTIVE_DEFAULTS[name]
    unknown = sorted(set(attack_params) - set(spec["base"]) - set(spec["own"]))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for the detector-aware attack "
                        f"{name!r}; it accepts {sorted({**spec['base'], **spec['own']})}.")
    base = {k: attack_params.get(k, v) for k, v in spec["base"].items()}
    if name == "pgd":
        base["norm"] = _check_norm(base["norm"])
        if base["eps_step"] is None:
            base["eps_step"] = (0.3 if eps is None else eps) / 4
    # The base attack's own validation (eps positive and finite, norm, ...).
    params = _resolve_params(name, eps, base)
    params.pop("num_random_init", None)
    params.pop("backend", None)
    for key, default in spec["own"].items():
        value = attack_params.get(key, default)
        if key in ("restarts", "lambda_steps"):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive integer; got {value!r}.")
            value = int(value)
        elif not isinstance(value, numbers.Real) or not math.isfinite(value) or \
                (value <= 0 if key == "initial_lambda" else value < 0):
            kind = "positive" if key == "initial_lambda" else "non-negative"
            raise ValueError(f"{key} must be a {kind} number; got {value!r}.")
        params[key] = value
    return params


def _detector_decision(detector):
    """The differentiable decision of ``detector`` and its public re-check."""
    if hasattr(detector, "to_torch"):
        module = detector.to_torch()
    elif callable(detector):
        module = detector
    else:
        raise TypeError(f"detector must be a fitted advdetect detector (with to_torch()) or a "
                        f"torch module returning the decision (n,); got "
                        f"{type(detector).__name__}.")

    def evaded(x_adv, batch_size, device):
        if hasattr(detector, "predict") and hasattr(detector, "to_torch"):
            return np.asarray(detector.predict(x_adv)) == 1
        out = []
        with torch.no_grad():
            for start in range(0, len(x_adv), batch_size):
                xb = torch.as_tensor(x_adv[start:start + batch_size], device=device)
                out.append(module(xb).cpu().numpy() >= 0)
        return np.concatenate(out)
    return module, evaded


def _generate_adaptive(classifier, X, y, name, eps, detector, batch_size, only_correct,
                       random_state, verbose, attack_params, start_time):
    """``generate`` with ``detector=``: the detector-aware attacks."""
    X, y = _validate(X, y, batch_size, verbose)
    params = _resolve_adaptive_params(name, eps, attack_params)
    decision, evaded_fn = _detector_decision(detector)
    module = unwrap_classifier(classifier)
    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")

    with _attack_mode(module), seeded(random_state) as rng:
        victim, n_classes = _probe_victim(module, X, y, batch_size, device)
        with torch.no_grad():
            n_probe = min(len(X), batch_size)
            dprobe = decision(torch.as_tensor(X[:n_probe], device=device))
        if dprobe.ndim != 1 or len(dprobe) != n_probe:
            raise ValueError(f"the detector's decision must have shape (n,); got "
                             f"{tuple(dprobe.shape)}.")
        y_pred = _predict(victim, X, batch_size, device)
        attacked = (y_pred == y) if only_correct else np.ones(len(X), dtype=bool)
        idx = np.flatnonzero(attacked)
        seed = int(rng.integers(0, 2**31 - 1))
        own = {k: params[k] for k in _ADAPTIVE_DEFAULTS[name]["own"]}
        x_adv = X.copy()
        batches = range(0, len(idx), batch_size)
        if verbose:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"adaptive {name}", unit="batch")
        for start in batches:
            sel = idx[start:start + batch_size]
            xt = torch.as_tensor(X[sel], device=device)
            yt = torch.as_tensor(y[sel], device=device)
            if name == "pgd":
                out = adaptive_pgd(victim, decision, xt, yt, eps=params["eps"],
                                   norm=params["norm"], max_iter=params["max_iter"],
                                   eps_step=params["eps_step"], random_state=seed + start, **own)
            else:
                out = adaptive_carlini_wagner_l2(
                    victim, decision, xt, yt, **{k: params[k] for k in _ADAPTIVE_DEFAULTS["cw"]
                                                 ["base"]}, **own)
            x_adv[sel] = out.detach().cpu().numpy().reshape(X[sel].shape)
        y_pred_adv = y_pred.copy()
        y_pred_adv[idx] = _predict(victim, np.nan_to_num(x_adv[idx]), batch_size, device)

    budget = _SPECS[name]["budget"]
    fooled = check_adversarial(X, x_adv, y, y_pred_adv,
                               norm=params.get("norm", np.inf) if budget else None,
                               eps=params["eps"] if budget else None) & attacked
    evaded = np.zeros(len(X), dtype=bool)
    if len(idx):
        evaded[idx] = evaded_fn(np.nan_to_num(x_adv[idx]), batch_size, device)
    l2, linf = perturbation_norms(X, x_adv)
    params = dict(params, detector=type(detector).__name__,
                  offset=float(getattr(decision, "offset", getattr(detector, "offset_", 0.0))))
    return AttackResult(attack=name, x_adv=x_adv, success=fooled & evaded, attacked=attacked,
                        y_pred_adv=y_pred_adv, l2=l2, linf=linf,
                        seconds=time.perf_counter() - start_time, params=params,
                        fooled_classifier=fooled, evaded_detector=evaded)


def _build(name, params, victim, input_shape, n_classes, batch_size, device, rng):
    """The function ``(x, y) -> x_adv`` running one batch of ``name``."""
    if name == "cw" and params["backend"] == "torch":
        return _torch_cw(victim, params, device)
    require("art.estimators.classification", f"attack={name!r} (run through ART)")
    from art.estimators.classification import PyTorchClassifier

    art_clf = PyTorchClassifier(
        model=victim, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
        nb_classes=n_classes, clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu")
    if name == "cw":
        params = {k: params[k] for k in _CW_ART_PARAMS}
        return _art_cw(art_clf, params, batch_size, rng)
    return _SPECS[name]["build"](art_clf, params, batch_size, rng)
