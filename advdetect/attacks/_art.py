"""The attacks that run through the Adversarial Robustness Toolbox (ART).

FGSM, BIM, PGD, DeepFool, JSMA, and Carlini-Wagner L2 with ``backend="art"``
run through ART (M.-I. Nicolae et al., "Adversarial Robustness Toolbox v1.0.0",
2018), the field's standard. ART is an optional dependency (``pip install
'advdetect[attacks]'``): it is imported only when one of these attacks runs,
through :func:`advdetect._extras.require`, whose error names the extra.

Each adapter takes ART's ``PyTorchClassifier`` around the victim, the resolved
settings and the batch size, and returns the function ``(x, y) -> x_adv`` that
``generate`` runs on one batch of numpy images. The papers and defaults are
in :data:`advdetect.attacks.ATTACKS` and :func:`advdetect.attacks.generate`.
"""

import numpy as np
import torch

from .._extras import require


def _onehot(y, k):
    out = np.zeros((len(y), k), dtype=np.float32)
    out[np.arange(len(y)), y] = 1
    return out


def _art_fgsm(art_clf, p, batch_size, rng):
    from art.attacks.evasion import FastGradientMethod

    attack = FastGradientMethod(art_clf, norm=p["norm"], eps=p["eps"], targeted=False,
                                num_random_init=0, batch_size=batch_size)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _art_bim(art_clf, p, batch_size, rng):
    from art.attacks.evasion import BasicIterativeMethod

    attack = BasicIterativeMethod(art_clf, eps=p["eps"], eps_step=p["eps_step"],
                                  max_iter=p["max_iter"], targeted=False,
                                  batch_size=batch_size, verbose=False)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _art_pgd(art_clf, p, batch_size, rng):
    from art.attacks.evasion import ProjectedGradientDescent

    attack = ProjectedGradientDescent(art_clf, norm=p["norm"], eps=p["eps"],
                                      eps_step=p["eps_step"], max_iter=p["max_iter"],
                                      targeted=False, num_random_init=p["num_random_init"],
                                      batch_size=batch_size, verbose=False)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


def _art_deepfool(art_clf, p, batch_size, rng):
    from art.attacks.evasion import DeepFool

    attack = DeepFool(art_clf, max_iter=p["max_iter"], epsilon=p["overshoot"],
                      nb_grads=p["nb_grads"], batch_size=batch_size, verbose=False)
    # DeepFool starts from the classifier's own prediction, not from y.
    return lambda x, y: attack.generate(x)


def _art_jsma(art_clf, p, batch_size, rng):
    from art.attacks.evasion import SaliencyMapMethod

    attack = SaliencyMapMethod(art_clf, theta=p["theta"], gamma=p["gamma"],
                               batch_size=batch_size, verbose=False)
    k = art_clf.nb_classes

    def run(x, y):
        # JSMA is targeted: a random class other than the label, per sample, from
        # our seeded generator (ART's own default draws one target per class).
        targets = (y + rng.integers(1, k, size=len(y))) % k
        return attack.generate(x, y=_onehot(targets, k))
    return run


def _art_cw(art_clf, p, batch_size, rng):
    from art.attacks.evasion import CarliniL2Method

    attack = CarliniL2Method(art_clf, confidence=p["confidence"], targeted=False,
                             learning_rate=p["learning_rate"],
                             binary_search_steps=p["binary_search_steps"],
                             max_iter=p["max_iter"], initial_const=p["initial_const"],
                             batch_size=batch_size, verbose=False)
    return lambda x, y: attack.generate(x, y=_onehot(y, art_clf.nb_classes))


# Parameters that the ART backend of CW takes (abort_early is the torch one's).
_CW_ART_PARAMS = ("confidence", "max_iter", "binary_search_steps", "initial_const",
                  "learning_rate")

# Attack name -> adapter.
_ADAPTERS = {"fgsm": _art_fgsm, "bim": _art_bim, "pgd": _art_pgd, "cw": _art_cw,
             "deepfool": _art_deepfool, "jsma": _art_jsma}


def _build(name, params, victim, input_shape, n_classes, batch_size, device, rng):
    """The function ``(x, y) -> x_adv`` running one batch of the ART attack ``name``."""
    require("art.estimators.classification", f"attack={name!r} (run through ART)")
    from art.estimators.classification import PyTorchClassifier

    art_clf = PyTorchClassifier(
        model=victim, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
        nb_classes=n_classes, clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu")
    if name == "cw":
        params = {k: params[k] for k in _CW_ART_PARAMS}
    return _ADAPTERS[name](art_clf, params, batch_size, rng)
