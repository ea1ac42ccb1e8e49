"""
Tuning CMAG with GridSearchCV
=============================

:class:`advdetect.model_selection.CleanTrainSplit` trains every fold on clean
images only and tests on held-out clean images plus adversarial examples made
from held-out images (``groups`` links each example to its source).
``DETECTION_SCORERS`` are the literature's metrics as scikit-learn scorers.
GridSearchCV's own ``refit`` would train on adversarial images too, so the
best detector is refitted by hand on clean images.
"""

import numpy as np
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV

from advdetect import CMAGDetector
from advdetect.attacks import generate
from advdetect.metrics import DETECTION_SCORERS
from advdetect.model_selection import CleanTrainSplit, make_detection_dataset

from _common import QUICK, detector_epochs, mnist_and_victim

X_train, y_train, X_test, y_test, victim = mnist_and_victim()
n = 300 if QUICK else 1500
attack = generate(victim, X_train[:n], y_train[:n], attack="fgsm", eps=0.1, random_state=0)
X, y, groups = make_detection_dataset(X_train[:n], attack.x_adv[attack.success],
                                      source_index=np.flatnonzero(attack.success))

search = GridSearchCV(
    CMAGDetector(FrozenEstimator(victim), max_epochs=detector_epochs(15), random_state=0),
    {"threshold_quantile": [0.0, 0.01], "stage": ["gr", "fmr", "all"]},
    scoring=DETECTION_SCORERS, refit=False, cv=CleanTrainSplit(n_splits=3), n_jobs=1)
search.fit(X, y, groups=groups)
ranks = search.cv_results_["rank_test_roc_auc"]
best = search.cv_results_["params"][int(np.argmin(ranks))]
for params, auc, tpr in zip(search.cv_results_["params"], search.cv_results_["mean_test_roc_auc"],
                            search.cv_results_["mean_test_tpr_at_5_fpr"]):
    print(f"{params}: ROC-AUC {auc:.3f}, TPR at 5 % FPR {tpr:.3f}")
print("best:", best)
final = clone(search.estimator).set_params(**best).fit(X[y == 1])
