"""Shared set-up of the examples: data, a victim, and the example size."""

import os

from advdetect import benchmark
from advdetect.benchmark import victim_recipe
from advdetect.datasets import load_mnist
from advdetect.models import train_classifier

# ADVDETECT_EXAMPLE_QUICK=1 runs every example at the sizes of the one quick preset,
# advdetect.benchmark.QUICK (the test suite and the documentation build do).
QUICK = os.environ.get("ADVDETECT_EXAMPLE_QUICK") == "1"


def mnist_and_victim(n_train=4000, epochs=30, n_test=1000):
    """The MNIST subset and the paper's MNIST CNN trained on it (small when QUICK)."""
    if QUICK:
        n_train, epochs, n_test = (benchmark.QUICK[k] for k in ("n_train", "victim_epochs",
                                                                 "n_test"))
    X_train, y_train, X_test, y_test = load_mnist("subset", n_samples=n_train)
    victim = train_classifier(X_train, y_train, max_epochs=epochs, random_state=0,
                              **victim_recipe(X_train.shape[1:]))
    return X_train, y_train, X_test[:n_test], y_test[:n_test], victim


def detector_epochs(default):
    return benchmark.QUICK["detector_epochs"] if QUICK else default
