"""
Purifying inputs: DAFAR in a Pipeline, and the hybrid defence
=============================================================

DAFAR's feedback autoencoder is a generative model as well as a detector:
``transform`` returns its reconstruction D(E(x)) of an input, which tends to
lose a small perturbation (DAFAR Section 4.3, Eq. 6). So a fitted
:class:`~advdetect.DAFARDetector` can stand in a scikit-learn ``Pipeline``
in front of the classifier, as a purifier. The paper's hybrid defence
(Section 5.5, Fig. 10) goes further: reject the inputs the detector flags,
classify the reconstruction of the rest; that is
:class:`~advdetect.DetectAndPurify`.

This example fits DAFAR on clean MNIST images, attacks the victim with FGSM
(ε 0.2) and PGD (ε 0.3), and prints

* (a) the victim's accuracy on clean and on adversarial inputs, as they are
  and behind the purifying Pipeline, with the share DAFAR flags;
* (b) the defence accuracy (``DetectAndPurify.score``) on a 1:1 mix of clean
  and adversarial inputs: an adversarial input counts as defended when it is
  rejected or classified correctly, a clean one only when classified
  correctly;

and draws inputs, their purified versions and the difference. Only examples
that fool the victim are kept, so its accuracy on them is 0 by construction.
"""

import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from advdetect import DAFARDetector, DetectAndPurify
from advdetect.attacks import generate
from advdetect.plotting import plot_reconstructions

from _common import QUICK, detector_epochs, mnist_and_victim

X_train, y_train, X_test, y_test, victim = mnist_and_victim()
frozen = FrozenEstimator(victim)  # the victim is used as it is, never retrained

# %%
# The purifier: DAFAR's ``transform`` in front of the victim
# ----------------------------------------------------------
# ``Pipeline.fit`` fits DAFAR on the clean training images (the frozen victim
# ignores ``fit``); ``predict`` and ``score`` classify the reconstructions.
dafar = DAFARDetector(frozen, max_epochs=detector_epochs(20),
                      anomaly_max_epochs=detector_epochs(30), random_state=0)
purified = make_pipeline(dafar, frozen).fit(X_train)

# Half of the test images stay clean; the other half are attacked.
half = len(X_test) // 2
X_clean, y_clean = X_test[:half], y_test[:half]
X_pool, y_pool = X_test[half:], y_test[half:]
# PGD takes Madry et al.'s 40 steps of 0.01; 10 steps of 0.03 at the quick size.
pgd_steps = dict(max_iter=10, eps_step=0.03) if QUICK else {}
adversarial = {}
for name, attack, eps, params in [("FGSM eps 0.2", "fgsm", 0.2, {}),
                                  ("PGD eps 0.3", "pgd", 0.3, pgd_steps)]:
    res = generate(victim, X_pool, y_pool, attack=attack, eps=eps, random_state=0, **params)
    adversarial[name] = (res.x_adv[res.success], y_pool[res.success])
    print(f"{name}: {res.success_rate:.1%} of {res.n_attacked} correctly classified "
          f"images fooled, mean Linf {res.mean_linf:.3f}")

rows = []
for name, (X, y) in {"clean": (X_clean, y_clean), **adversarial}.items():
    rows.append({"inputs": name, "n": len(X),
                 "victim accuracy": victim.score(X, y),
                 "purified, then victim": purified.score(X, y),
                 "flagged by DAFAR": float(np.mean(dafar.predict(X) == -1))})
print("\n(a) Accuracy without and with purification")
print(pd.DataFrame(rows).to_string(index=False, float_format="{:.3f}".format))

# %%
# The hybrid defence on a 1:1 mix of clean and adversarial inputs
# ---------------------------------------------------------------
# ``DetectAndPurify`` uses the fitted detector as it is: it rejects flagged
# inputs (prediction -1) and classifies the reconstruction of the rest with
# the detector's copy of the victim. ``purify=False`` is detection alone.
# The two parts cover each other: perturbations as large as these are mostly
# caught by the detector, and purification is there for the weak ones that
# slip under its threshold (DAFAR Section 4.3). At the gallery's quick size
# the detector has barely trained; run the script without
# ``ADVDETECT_EXAMPLE_QUICK`` to see it work.
hybrid = DetectAndPurify(detector=dafar).fit(X_train)
detect_only = DetectAndPurify(detector=dafar, purify=False).fit(X_train)

rows = []
for name, (X_adv, y_adv) in adversarial.items():
    k = min(len(X_adv), len(X_clean))
    X_mix = np.concatenate([X_clean[:k], X_adv[:k]])
    y_mix = np.concatenate([y_clean[:k], y_adv[:k]])
    is_adv = np.r_[np.zeros(k, dtype=bool), np.ones(k, dtype=bool)]
    rows.append({"mix": f"{k} clean + {k} {name}",
                 "no defence": victim.score(X_mix, y_mix),
                 "purification only": purified.score(X_mix, y_mix),
                 "detection only": detect_only.score(X_mix, y_mix, adversarial=is_adv),
                 "detect and purify": hybrid.score(X_mix, y_mix, adversarial=is_adv)})
print("\n(b) Defence accuracy on a 1:1 clean/adversarial mix")
print(pd.DataFrame(rows).to_string(index=False, float_format="{:.3f}".format))

# %%
# What purification does to an input
# ----------------------------------
# Rows: the input (three clean digits, then three FGSM and two PGD examples),
# its reconstruction D(E(x)), and the difference x - D(E(x)) (red positive,
# blue negative). At the gallery's quick size the decoder has trained for
# two epochs only; run the script without ``ADVDETECT_EXAMPLE_QUICK`` for
# sharp reconstructions.
shown = np.concatenate([X_clean[:3]] + [X[:n] for (X, _), n in
                                        zip(adversarial.values(), (3, 2))])
rec = dafar.transform(shown)
fig = plot_reconstructions([shown, rec, shown - rec],
                           ["input (clean | FGSM | PGD)", "purified D(E(x))",
                            "difference x - D(E(x))"], n=len(shown))
fig.savefig("dafar_purification.png", dpi=110)
