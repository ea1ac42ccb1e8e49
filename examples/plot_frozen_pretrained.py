"""
Protecting a pretrained skorch classifier
=========================================

``sklearn.base.clone`` turns a fitted skorch net into an untrained one, so a
detector holding the net directly cannot be cloned by ``cross_validate`` or
``GridSearchCV``. Wrap the pretrained net in ``sklearn.frozen.FrozenEstimator``:
its weights survive every clone, and the detector never trains it.
"""

import numpy as np
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator

from advdetect import CMAGDetector

from _common import detector_epochs, mnist_and_victim

X_train, y_train, X_test, y_test, victim = mnist_and_victim()

det = CMAGDetector(FrozenEstimator(victim), max_epochs=detector_epochs(30), random_state=0)
twin = clone(det)                              # the frozen victim is shared, not reset
assert twin.classifier.estimator is victim
twin.fit(X_train)
flagged = np.mean(twin.predict(X_test) == -1)
print(f"clean test images flagged: {flagged:.3%} (threshold quantile "
      f"{twin.threshold_quantile}, feature layer {twin.feature_layer_!r})")

# Move the threshold to 1 % false positives on clean data of your own, no retraining:
twin.calibrate(X_test[: len(X_test) // 2], fpr=0.01)
print(f"after calibrate(fpr=0.01): {np.mean(twin.predict(X_test[len(X_test) // 2:]) == -1):.3%}")
