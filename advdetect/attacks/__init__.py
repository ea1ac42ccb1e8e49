"""Adversarial example generation for benchmarks and examples.

One small interface, :func:`generate`, runs any attack of :data:`ATTACKS` on
images given as float32 numpy arrays of shape ``(n, C, H, W)`` in ``[0, 1]``,
batch by batch, and returns an :class:`AttackResult` that says which inputs
were fooled and by how much they were perturbed.

The gradient attacks run through the Adversarial Robustness Toolbox
(``art``), the field's standard. Carlini-Wagner L2 runs by default through a
batched implementation in torch written here (:func:`carlini_wagner_l2`,
``backend="torch"``), because ART's was measured far slower and weaker (see
:func:`generate`, Notes).

Three habits of a careful benchmark are built in:

* only the inputs the classifier gets right are attacked (``only_correct``);
* every adversarial example is re-checked by :func:`check_adversarial`
  (prediction changed, finite, inside ``[0, 1]``, within the attack's budget,
  not a blank image), since attack tools can fail silently;
* the success rate and the L2 / L-infinity sizes of the perturbations are
  reported with the examples, so a figure is never shown without them.

The package holds one attack family per file: ``cw.py`` (our Carlini-Wagner
L2, :func:`carlini_wagner_l2`), ``adaptive.py`` (the detector-aware
:func:`adaptive_pgd` and :func:`adaptive_carlini_wagner_l2`) and ``_art.py``
(the adapters of the ART attacks); this module holds :func:`generate`, its
parameters and checks.
"""

import contextlib
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._training import seeded, unwrap_classifier
from .._validation import RANGE_TOLERANCE, check_value_range, layout_hint
from ..nn.hooks import as_logits, batched, infer_output_kind
from . import _art
from .adaptive import adaptive_carlini_wagner_l2, adaptive_pgd
from .cw import _torch_cw, carlini_wagner_l2

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
# The attacks' settings
# --------------------------------------------------------------------------- #
# name -> whether ``eps`` is a budget that check_adversarial enforces, and the
# defaults (the adapters are in _art.py; CW's torch backend in cw.py).
# Defaults may be callables of the parameters resolved so far (eps-relative ones).
_SPECS = {
    "fgsm": dict(budget=True, defaults={"eps": 0.3, "norm": np.inf}),
    "bim": dict(budget=True, defaults={
        "eps": 0.3, "eps_step": lambda p: p["eps"] / 5, "max_iter": 10,
    }),
    "pgd": dict(budget=True, defaults={
        "eps": 0.3, "norm": np.inf,
        "eps_step": lambda p: (min(p["eps"] / 4, 0.01) if p["norm"] == np.inf
                               else 2.5 * p["eps"] / p["max_iter"]),
        "max_iter": 40, "num_random_init": 1,
    }),
    "cw": dict(budget=False, defaults={
        "backend": "torch", "confidence": 0.0, "max_iter": 50, "binary_search_steps": 4,
        "initial_const": 1.0, "learning_rate": 0.1, "abort_early": True,
    }),
    "deepfool": dict(budget=False, defaults={"max_iter": 50, "overshoot": 0.02, "nb_grads": 10}),
    "jsma": dict(budget=False, defaults={"theta": 1.0, "gamma": 0.1}),
}


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
    """The classes ``module`` predicts for ``X`` (int64), by the detectors' batched pass."""
    if len(X) == 0:
        return np.zeros(0, dtype=np.int64)
    return batched(lambda xb: module(xb).argmax(dim=1), X, batch_size, device).astype(np.int64)


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
    # A copy, as the attacks' own array (the caller's is never written to).
    X = np.array(check_value_range(X, (0.0, 1.0), "attacks need images scaled to [0, 1] "
                                   "(divide 8-bit images by 255)."), copy=True)
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
        return batched(module, x_adv, batch_size, device) >= 0
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
    """The function ``(x, y) -> x_adv`` running one batch of ``name``.

    Carlini-Wagner with ``backend="torch"`` runs our own attack (``cw.py``);
    every other attack runs through ART (``_art.py``), imported only then.
    """
    if name == "cw" and params["backend"] == "torch":
        return _torch_cw(victim, params, device)
    return _art._build(name, params, victim, input_shape, n_classes, batch_size, device, rng)
