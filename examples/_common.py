"""Shared set-up of the examples: data, a victim, and the example size."""

import os

from advdetect.benchmark import victim_recipe
from advdetect.datasets import load_mnist
from advdetect.models import train_classifier

QUICK = os.environ.get("ADVDETECT_EXAMPLE_QUICK") == "1"


def mnist_and_victim(n_train=4000, epochs=30):
    """The MNIST subset and the paper's MNIST CNN trained on it (small when QUICK)."""
    if QUICK:
        n_train, epochs = 600, 2
    X_train, y_train, X_test, y_test = load_mnist("subset", n_samples=n_train)
    victim = train_classifier(X_train, y_train, max_epochs=epochs, random_state=0,
                              **victim_recipe(X_train.shape[1:]))
    return X_train, y_train, X_test[: 200 if QUICK else 1000], y_test[: 200 if QUICK else 1000], victim


def detector_epochs(default):
    return 2 if QUICK else default
