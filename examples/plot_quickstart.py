"""
Quick start: detect FGSM examples with CMAG
===========================================

Train the MNIST victim, fit :class:`advdetect.CMAGDetector` on clean training
images only, attack clean test images with FGSM, and score the detector with
scikit-learn's ROC-AUC and advdetect's detection metrics (y = +1 clean,
-1 adversarial).
"""

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from advdetect import CMAGDetector
from advdetect.attacks import generate
from advdetect.metrics import detection_report

from _common import detector_epochs, mnist_and_victim

X_train, y_train, X_test, y_test, victim = mnist_and_victim()
print(f"victim accuracy: {(victim.predict(X_test) == y_test).mean():.3f}")

det = CMAGDetector(FrozenEstimator(victim), max_epochs=detector_epochs(30), random_state=0)
det.fit(X_train)

attack = generate(victim, X_test, y_test, attack="fgsm", eps=0.3, random_state=0)
print(attack)
X_adv = attack.x_adv[attack.success]          # only the examples that fool the victim

X_eval = np.concatenate([X_test, X_adv])
y_eval = np.r_[np.ones(len(X_test)), -np.ones(len(X_adv))]
print(f"ROC-AUC: {roc_auc_score(y_eval, det.decision_function(X_eval)):.3f}")
print(detection_report(y_eval, det.decision_function(X_eval)))
print(det.reconstruction_errors(X_adv[:5]))
