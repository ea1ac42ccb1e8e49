"""Training and seeding: the classifier unwrapped, seeds that restore the caller's, skorch.

:func:`unwrap_classifier` accepts what users pass as ``classifier`` (a torch
module, a fitted skorch net, a scikit-learn ``FrozenEstimator`` of one);
:func:`seeded` seeds torch's and numpy's generators for one block and restores
them after; :func:`train_module` trains a built network through skorch with a
detector's settings.
"""

import contextlib

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Callback

from .nn.hooks import writable

__all__ = ["unwrap_classifier", "seeded", "train_module", "EpochProgressBar"]


def _seed_from(random_state):
    """An int seed from ``random_state`` (int, RandomState or Generator, drawn from)."""
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    return int(random_state)


@contextlib.contextmanager
def seeded(random_state):
    """Seed torch's and numpy's global generators for the block only; yield a Generator.

    The one seeding helper of advdetect (``fit``, ``train_classifier``,
    ``attacks.generate``). Inside the block torch's generators (the CPU one and,
    when CUDA is available, every CUDA device's) and numpy's legacy global
    generator (which ART draws from) are seeded with ``random_state``; on exit
    they are restored, so a seeded call is reproducible and leaves the caller's
    random streams where they were (scikit-learn's rule: an estimator draws from
    its own generator). ``None`` seeds nothing and restores nothing: the block
    draws from the global generators, as scikit-learn's ``random_state=None`` does.

    Parameters
    ----------
    random_state : int, numpy.random.RandomState, numpy.random.Generator or None
        A RandomState or Generator is drawn from once for the seed.

    Yields
    ------
    numpy.random.Generator
        Seeded with the same seed (unseeded for ``None``), for the caller's own draws.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(1)
    >>> before = torch.random.get_rng_state()
    >>> with seeded(0) as rng:
    ...     a = torch.rand(2)
    >>> with seeded(0) as rng:
    ...     b = torch.rand(2)
    >>> bool(torch.equal(a, b)), bool(torch.equal(torch.random.get_rng_state(), before))
    (True, True)
    """
    if random_state is None:
        yield np.random.default_rng()
        return
    seed = _seed_from(random_state)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield np.random.default_rng(seed)
    finally:
        np.random.set_state(np_state)


def unwrap_classifier(classifier):
    """Return the ``torch.nn.Module`` inside ``classifier`` (not a copy).

    Accepts a ``torch.nn.Module``, a fitted skorch net, or either wrapped in
    ``sklearn.frozen.FrozenEstimator``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When given a skorch net that has not been fitted (or initialised).
    TypeError
        When ``classifier`` is none of the above.
    """
    inner = classifier
    # FrozenEstimator (and other thin wrappers) keep the model in ``estimator``.
    while not isinstance(inner, torch.nn.Module) and hasattr(inner, "estimator") \
            and not hasattr(inner, "module"):
        inner = inner.estimator
    if isinstance(inner, torch.nn.Module):
        return inner
    if hasattr(inner, "module") and hasattr(inner, "initialize"):  # a skorch net
        if not getattr(inner, "initialized_", False):
            raise NotFittedError(
                f"The classifier {type(inner).__name__} is not fitted: fit it (or call "
                "initialize() and load its weights) before handing it to a detector.")
        return inner.module_
    if classifier is None:
        raise TypeError("classifier is required: pass the torch.nn.Module, fitted skorch "
                        "net or FrozenEstimator that the detector protects.")
    raise TypeError(
        f"classifier must be a torch.nn.Module, a fitted skorch net, or one wrapped in "
        f"sklearn.frozen.FrozenEstimator; got {type(classifier).__name__}.")


class EpochProgressBar(Callback):
    """A tqdm bar per training stage, one tick per epoch, showing the loss."""

    def __init__(self, desc):
        self.desc = desc

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        from tqdm.auto import tqdm
        self.bar_ = tqdm(total=net.max_epochs, desc=self.desc, unit="epoch", leave=True)

    def on_epoch_end(self, net, **kwargs):
        self.bar_.set_postfix(loss=f"{net.history[-1, 'train_loss']:.4g}")
        self.bar_.update(1)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        self.bar_.close()


def train_module(module, X, y, criterion, *, desc, detector, module_kwargs=None,
                 criterion_kwargs=None, max_epochs=None, net_cls=None, **net_kwargs):
    """Train ``module`` through skorch and return it, trained and in eval mode.

    ``module`` is a built ``torch.nn.Module`` (a detector's ``_build_*``
    helper makes it, so that loading a saved detector builds the same network
    without training it) or a module class, built by skorch from
    ``module_kwargs``. The skorch settings come from the detector's own
    parameters (``max_epochs``, ``batch_size``, ``lr``, ``optimizer``,
    ``device``, ``verbose``) and ``train_split=None``: detectors train on all
    the clean data they are given and hold out their own calibration split
    beforehand.
    """
    from skorch import NeuralNet

    net_cls = net_cls or NeuralNet
    verbose = detector.verbose or 0
    callbacks = [("progress", EpochProgressBar(desc))] if verbose >= 1 else []
    params = dict(
        module=module,
        criterion=criterion,
        optimizer=detector.optimizer,
        lr=detector.lr,
        max_epochs=detector.max_epochs if max_epochs is None else max_epochs,
        batch_size=detector.batch_size,
        train_split=None,
        iterator_train__shuffle=True,
        device=detector.device_,
        verbose=1 if verbose >= 2 else 0,
        callbacks=callbacks,
    )
    params.update({f"module__{k}": v for k, v in (module_kwargs or {}).items()})
    params.update({f"criterion__{k}": v for k, v in (criterion_kwargs or {}).items()})
    params.update(net_kwargs)
    net = net_cls(**params)
    net.fit(writable(X), writable(y))  # skorch's dataset hands numpy to torch
    module = net.module_
    module.eval()
    return module
