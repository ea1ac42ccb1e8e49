"""Transfer: a detector trained on one attack, tested on all (DAFAR Figs. 7-8, CMAG Section 4).

The supervised binary classifier (Gong et al. 2017 on the input; Metzen et al.
2017 on the classifier's activations) is trained on clean training images and
their FGSM eps 0.1 adversarial examples, then tested on every attack of the
benchmark; beside it, the detectors fitted on the same clean training images
alone: MahalanobisDetector (one layer, our default; and every block, summed:
``MahalanobisDetector.paper(combine="sum")``), CMAGDetector and DAFARDetector
with their defaults. The victim and the test attacks come from
``advdetect.benchmark.prepare_benchmark`` (cached); the FGSM training examples
are made here from training images, never from the test images.

Prints (and writes with ``--output``) per detector and attack: ROC-AUC, the
detection rate and clean false-positive rate at the detector's own threshold,
and the detection rate at 5 % clean FPR; and each detector's fit seconds and
scoring cost relative to the classifier's forward pass.

    python benchmarks/bench_transfer.py --dataset subset --output docs/benchmarks/transfer
"""

import time

import numpy as np
import pandas as pd
import torch
from _common import parser, resolve, settings_block, write
from sklearn.frozen import FrozenEstimator

from advdetect import (BinaryClassifierDetector, CMAGDetector, DAFARDetector,
                       MahalanobisDetector)
from advdetect.attacks import generate
from advdetect.base import batched
from advdetect.benchmark import throughputs, parse_attack, prepare_benchmark, to_markdown
from advdetect.metrics import detection_report
from advdetect.model_selection import make_detection_dataset

ATTACKS = ["fgsm:0.05", "fgsm:0.1", "fgsm:0.2", "fgsm:0.3", "pgd:0.3", "cw:0", "cw:9",
           "deepfool", "jsma"]


def main():
    p = parser(__doc__.splitlines()[0], ATTACKS)
    p.add_argument("--train-attack", default="fgsm:0.1",
                   help="the attack the binary classifier is trained on")
    p.add_argument("--n-supervised", type=int, default=2000,
                   help="training images attacked for the binary classifier")
    p.add_argument("--detector-epochs", type=int, default=None,
                   help="epochs of every trained detector (default: each one's default)")
    p.set_defaults(n_test=500, n_attack=200)
    args = p.parse_args()
    if args.quick:
        args.detector_epochs, args.n_supervised = 1, 300
    settings = resolve(args)
    prep = prepare_benchmark(args.dataset, args.attacks, seed=args.seed, n_train=args.n_train,
                             n_test=args.n_test, n_attack=args.n_attack,
                             victim_epochs=args.victim_epochs,
                             victim_n_train=args.victim_n_train, cache_dir=args.cache_dir or None)
    victim, X_tr, y_tr, X_te = prep["victim"], prep["X_train"], prep["y_train"], prep["X_test"]
    adversarial = {k: r.x_adv[r.success] for k, r in prep["results"].items()}
    settings.update(victim_accuracy=prep["victim_accuracy"], n_train_actual=len(X_tr),
                    n_test_actual=len(X_te))

    # The binary classifier's training set: clean training images and the
    # training attack's successful examples of the first n_supervised of them.
    name, params = parse_attack(args.train_attack)
    idx = np.arange(min(len(X_tr), args.n_supervised))
    res = generate(victim, X_tr[idx], y_tr[idx], attack=name, batch_size=256,
                   random_state=args.seed, **params)
    X_sup, y_sup, _ = make_detection_dataset(X_tr, res.x_adv[res.success],
                                             source_index=idx[res.success])
    settings.update(supervised_clean=int((y_sup == 1).sum()),
                    supervised_adversarial=int((y_sup == -1).sum()))
    print(f"binary training set: {settings['supervised_clean']} clean, "
          f"{settings['supervised_adversarial']} {args.train_attack} examples of training images")

    frozen = FrozenEstimator(victim)
    common = dict(random_state=args.seed, device="auto")
    epochs = {} if args.detector_epochs is None else dict(max_epochs=args.detector_epochs)
    dafar_epochs = {} if args.detector_epochs is None else \
        dict(max_epochs=args.detector_epochs, anomaly_max_epochs=args.detector_epochs)
    detectors = {
        f"Binary (input, {args.train_attack})": (BinaryClassifierDetector(**epochs, **common),
                                                 True),
        f"Binary (features, {args.train_attack})": (
            BinaryClassifierDetector(frozen, on="features", **epochs, **common), True),
        "Mahalanobis": (MahalanobisDetector(frozen, **common), False),
        "Mahalanobis (blocks, sum)": (MahalanobisDetector.paper(frozen, combine="sum",
                                                                **common), False),
        # The slowest to fit last: the report is rewritten after every detector.
        "DAFAR": (DAFARDetector(frozen, **dafar_epochs, **common), False),
        "CMAG": (CMAGDetector(frozen, **epochs, **common), False),
    }
    forward = victim.module_.eval()
    device = next(forward.parameters()).device
    rows, timing = [], []
    for label, (det, supervised) in detectors.items():
        t0 = time.perf_counter()
        det.fit(X_sup, y_sup) if supervised else det.fit(X_tr)
        fit_s = time.perf_counter() - t0
        ips, clf_ips = throughputs(
            [det.score_samples, lambda X, b=det.batch_size: batched(forward, X, b, device)], X_te,
            repeats=3)
        timing.append(dict(detector=label, fit_seconds=fit_s, score_images_per_s=ips,
                           cost_vs_classifier=clf_ips / ips))
        print(f"{label}: fitted in {fit_s:.1f} s, scores {ips:.0f} images/s "
              f"({clf_ips / ips:.2f}x the classifier)", flush=True)
        clean = det.decision_function(X_te)
        for spec, X_adv in adversarial.items():
            if len(X_adv) == 0:
                continue
            dec = np.r_[clean, det.decision_function(X_adv)]
            y = np.r_[np.ones(len(clean)), -np.ones(len(X_adv))]
            rep = detection_report(y, dec)
            rows.append(dict(detector=label, attack=spec, n_adversarial=len(X_adv),
                             roc_auc=rep["roc_auc"], detection_rate=rep["detection_rate"],
                             clean_fpr=rep["false_positive_rate"],
                             tpr_at_5_fpr=rep["tpr_at_5_fpr"]))
        write_report(args, settings, prep, list(detectors), rows, timing)


def write_report(args, settings, prep, order, rows, timing):
    """Print the tables so far and (with --output) write them."""
    results = pd.DataFrame(rows)
    timing = pd.DataFrame(timing)
    order = [d for d in order if d in set(results["detector"])]
    parts = [settings_block(settings), "## Attacks (test images)\n", to_markdown(prep["attacks"]),
             ""]
    for metric, title in [("roc_auc", "ROC-AUC"),
                          ("detection_rate", "Detection rate at the detector's own threshold"),
                          ("tpr_at_5_fpr", "Detection rate at 5 % clean FPR")]:
        pivot = results.pivot(index="detector", columns="attack", values=metric)
        pivot = pivot.reindex(index=order, columns=[a for a in args.attacks if a in
                                                    set(results["attack"])]).reset_index()
        if metric == "detection_rate":
            pivot["clean FPR"] = pivot["detector"].map(
                results.groupby("detector")["clean_fpr"].first())
        parts += [f"## {title}\n", to_markdown(pivot), ""]
    parts += ["## Cost (fit seconds; scoring cost relative to the classifier's forward pass, "
              "best of 3)\n", to_markdown(timing, floatfmt=".2f"), ""]
    report = "\n".join(parts)
    print(report, flush=True)
    write(args.output, "transfer.md", report)
    if args.output:
        results.to_csv(f"{args.output}/transfer.csv", index=False)
        timing.to_csv(f"{args.output}/timing.csv", index=False)


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    main()
