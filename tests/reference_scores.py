"""The scores every detector gives on the suite's test data, for issue 17's refactor.

``python -m tests.reference_scores`` (from the repository root) writes
``tests/data/scores_before_issue17.npz`` from the code as it is; the test
``tests/test_scores_unchanged.py`` recomputes the same arrays and compares them
with the file. Written once before the structural step, the file is what
"scores unchanged" is checked against.

Data: scikit-learn's digits (the ``digits_small`` fixture of conftest.py),
images 0-199 to fit, 200-299 clean and their FGSM (eps 0.2) versions to score,
the same small victim as conftest's ``small_victim`` (``train_classifier``,
5 epochs, seed 0). Every detector: seed 0, 2 epochs, CPU.
"""

import os

import numpy as np
import torch

PATH = os.path.join(os.path.dirname(__file__), "data", "scores_before_issue17.npz")


def _fgsm(module, X, y, eps):
    x = torch.as_tensor(X).clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(module(x), torch.as_tensor(y))
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach().numpy()


def detectors(victim):
    import advdetect as ad

    common = dict(device="cpu", random_state=0, batch_size=64)
    trained = dict(common, max_epochs=2)
    return {
        "cmag": ad.CMAGDetector(victim, width=4, **trained),
        "cmag_paper": ad.CMAGDetector.paper(victim, width=4, **trained),
        "cmag_all": ad.CMAGDetector(victim, width=4, stage="all", **trained),
        "dafar": ad.DAFARDetector(victim, anomaly_max_epochs=2, **trained),
        "dafar_paper": ad.DAFARDetector.paper(victim, anomaly_max_epochs=2, **trained),
        "magnet": ad.MagNetDetector(**trained),
        "squeeze": ad.FeatureSqueezingDetector(victim, **common),
        "mahalanobis": ad.MahalanobisDetector(victim, **common),
        "defensegan": ad.DefenseGANDetector(n_restarts=2, n_steps=5, **trained),
        "binary": ad.BinaryClassifierDetector(victim, **trained),
    }


def compute():
    """``{"<detector>/<what>": ndarray}`` for every detector of :func:`detectors`."""
    from sklearn.datasets import load_digits

    from advdetect.base import seeded
    from advdetect.models import train_classifier

    torch.set_num_threads(1)
    d = load_digits()
    X = (d.images[:300] / 16.0).astype(np.float32)[:, None]
    y = d.target[:300].astype(np.int64)
    victim = train_classifier(X, y, max_epochs=5, device="cpu", random_state=0)
    with seeded(0):
        X_adv = _fgsm(victim.module_.eval(), X[200:], y[200:], 0.2)
    X_fit, X_test = X[:200], np.concatenate([X[200:], X_adv])
    out = {}
    only = os.environ.get("ADVDETECT_REF_ONLY")
    for name, det in detectors(victim).items():
        if only and not name.startswith(tuple(only.split(","))):
            continue
        if name == "binary":  # supervised: clean +1, adversarial -1
            with seeded(1):
                adv_fit = _fgsm(victim.module_.eval(), X_fit, y[:200], 0.2)
            det.fit(np.concatenate([X_fit, adv_fit]), np.r_[np.ones(200), -np.ones(200)])
        else:
            det.fit(X_fit)
        out[f"{name}/score_samples"] = det.score_samples(X_test)
        out[f"{name}/decision_function"] = det.decision_function(X_test)
        out[f"{name}/predict"] = det.predict(X_test)
        out[f"{name}/offset"] = np.asarray(det.offset_)
        if hasattr(det, "transform"):
            out[f"{name}/transform"] = det.transform(X_test[:20])
        with torch.no_grad():
            out[f"{name}/to_torch"] = det.to_torch()(torch.from_numpy(X_test[:20])).numpy()
    return out


def compare():
    """Print, per array, whether it is bitwise equal to the saved one, and the largest change."""
    now = compute()
    with np.load(PATH) as f:
        before = dict(f)
    for key in sorted(before):
        a, b = now.get(key), before[key]
        if a is None and os.environ.get("ADVDETECT_REF_ONLY"):
            continue
        if a is None or a.shape != b.shape:
            print(f"{key:32s} MISSING or other shape")
            continue
        same = np.array_equal(a, b)
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        print(f"{key:32s} {'bitwise equal' if same else f'max |diff| {diff:.3g}'}")


if __name__ == "__main__":
    import sys

    if "--compare" in sys.argv:
        compare()
    else:
        arrays = compute()
        np.savez_compressed(PATH, **arrays)
        print(f"wrote {len(arrays)} arrays to {PATH}")
