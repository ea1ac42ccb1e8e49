"""
What the classifier sees: CMAG's reconstructions
================================================

CMAG's global reconstructor rebuilds an input from what the classifier read
of it. For a clean digit the reconstruction looks like the digit; for an
adversarial example it drifts toward the class the classifier was fooled into
(the paper's Figs. 3 and 5). The rows: input, FMR, LR and GR reconstructions.
"""

import numpy as np
from sklearn.frozen import FrozenEstimator

from advdetect import CMAGDetector
from advdetect.attacks import generate
from advdetect.plotting import plot_reconstructions

from _common import detector_epochs, mnist_and_victim

X_train, y_train, X_test, y_test, victim = mnist_and_victim()
det = CMAGDetector(FrozenEstimator(victim), max_epochs=detector_epochs(30), random_state=0)
det.fit(X_train)
attack = generate(victim, X_test[:50], y_test[:50], attack="pgd", eps=0.3, random_state=0)
X = np.concatenate([X_test[:4], attack.x_adv[attack.success][:4]])
rows = [X] + [det.reconstruct(X, stage=s) for s in ("fmr", "lr", "gr")]
fig = plot_reconstructions(rows, ["input (4 clean | 4 PGD)", "FMR", "LR", "GR"], n=len(X))
fig.savefig("cmag_reconstructions.png", dpi=110)
print(det.reconstruction_errors(X)[["ssim", "l2", "is_adversarial"]])
