"""DAFAR on MNIST: detection with and without the anomaly detector, Tables 4-5, Figs. 9-10.

Attacks correctly classified test images (FGSM eps 0.05/0.1/0.2/0.3, PGD eps
0.3, CW-L2), fits one DAFARDetector (our defaults: plug-in mode, alpha on a
held-out clean split) and prints:

* per attack: success rate, ROC-AUC, detection rate and clean FPR at
  alpha = mean + 3 sigma, with C (the anomaly autoencoder) and without it
  (alpha re-learned on ||delta||_2 from the kept calibration scores), and with
  alpha learned on the training scores as the paper does (``DAFARDetector.paper``);
* Table 4: the mean L2 shift of the encoder's output E(x) under Gaussian noise
  (sigma 0.3), FGSM 0.3 and PGD 0.3;
* Table 5: the anomaly-score threshold alpha;
* threshold rules side by side (a diagnostic, not an option of the detector):
  mean + z sigma on the calibration scores (the paper's rule and our default),
  the same on their logarithm (the scores are right-skewed), and the clean
  quantile that a normal tail at z would give, each with its clean FPR on the
  test images and its detection rate per attack;
* Fig. 9: the victim's accuracy on clean and on attacked images (every attacked
  image, fooled or not), raw and purified by D(E(x)), for FGSM and PGD over eps;
* Fig. 10: the hybrid defence's accuracy (DetectAndPurify.score) on a 1:1 mix of
  clean images and PGD examples of the same images, over eps;
* fit time, and scoring throughput beside the victim's own forward pass.

    python benchmarks/bench_dafar.py                     # full MNIST if installed
    python benchmarks/bench_dafar.py --dataset subset --output docs/benchmarks/dafar-subset
"""

import copy
import time

import numpy as np
import pandas as pd
import torch
from _common import parser, resolve, settings_block, write
from scipy import stats
from sklearn.frozen import FrozenEstimator

from advdetect import DAFARDetector, DetectAndPurify
from advdetect.base import batched
from advdetect.benchmark import (PUBLISHED_FIGURES, QUICK, throughputs, prepare_benchmark,
                                 to_markdown)
from advdetect.metrics import detection_report

DETECTION = ["fgsm:0.05", "fgsm:0.1", "fgsm:0.2", "fgsm:0.3", "pgd:0.3", "cw:0"]
SWEEP_EPS = [0.05, 0.1, 0.2, 0.3]


def _paper(table, attack):
    return PUBLISHED_FIGURES[("DAFAR", table, "mnist", "DAFAR", attack)]


# DAFAR Section 5.3.1 (detection, one value at every FGSM eps; clean FPR), Table 4 (shift of
# E(x) under Gaussian noise 0.3, FGSM 0.3, PGD 0.3), Table 5 (alpha).
(_DETECTION,) = {_paper("Section 5.3.1", f"fgsm:{e}")["detection_rate"] for e in SWEEP_EPS}
PAPER = dict(fpr=_paper("Section 5.3.1", None)["clean_fpr"], detection=_DETECTION,
             shift=" / ".join(f"{_paper('Table 4', a)['feature_l2_shift']:g}"
                              for a in ("gaussian:0.3", "fgsm:0.3", "pgd:0.3")),
             threshold=_paper("Table 5", None)["threshold"])
TARGETS = dict(clean_fpr=0.005, detection=0.99, hybrid=0.95, cost_vs_classifier=2.5)


def detection_rows(name, det, X_clean, adversarial):
    clean = det.decision_function(X_clean)
    rows = []
    for spec, X_adv in adversarial.items():
        dec = np.r_[clean, det.decision_function(X_adv)]
        y = np.r_[np.ones(len(clean)), -np.ones(len(X_adv))]
        rep = detection_report(y, dec, np.where(dec >= 0, 1, -1))
        rows.append(dict(detector=name, attack=spec, n_adversarial=len(X_adv),
                         roc_auc=rep["roc_auc"], detection_rate=rep["detection_rate"],
                         clean_fpr=rep["false_positive_rate"], tpr_at_5_fpr=rep["tpr_at_5_fpr"],
                         threshold=det.threshold_))
    return rows


def threshold_rules(det, X_clean, adversarial):
    """Clean FPR and detection of three threshold rules on the same calibration scores.

    The scores are anomaly scores (higher = more anomalous), so a rule flags
    ``score > threshold``. Only the first rule is what the detector does.
    """
    cal = np.asarray(det.calibration_scores_, dtype=np.float64)
    log = np.log(cal)
    tail = float(stats.norm.sf(det.z))
    rules = {f"mean + {det.z:g} sigma (default, paper)": det.threshold_,
             f"mean + {det.z:g} sigma of log score": float(np.exp(log.mean()
                                                                 + det.z * log.std(ddof=1))),
             f"clean quantile {1 - tail:.4f}": float(np.quantile(cal, 1 - tail))}
    clean = -det.score_samples(X_clean)
    adv = {k: -det.score_samples(v) for k, v in adversarial.items()}
    rows = [dict(rule=name, threshold=thr, clean_fpr=float(np.mean(clean > thr)),
                 **{k: float(np.mean(v > thr)) for k, v in adv.items()})
            for name, thr in rules.items()]
    return "\n".join([f"## Threshold rules on the same {len(cal)} calibration scores "
                      f"(skewness {stats.skew(cal):.2f}, of the log {stats.skew(log):.2f})",
                      "", to_markdown(pd.DataFrame(rows))])


def main():
    p = parser(__doc__.splitlines()[0], DETECTION)
    p.add_argument("--detector-epochs", type=int, default=None)
    args = p.parse_args()
    settings = resolve(args)
    start = time.perf_counter()
    sweep = [f"{a}:{e}" for a in ("fgsm", "pgd") for e in SWEEP_EPS]
    specs = list(dict.fromkeys(args.attacks + sweep))
    prep = prepare_benchmark(args.dataset, specs, seed=args.seed, n_train=args.n_train,
                             n_test=args.n_test, n_attack=args.n_attack,
                             victim_epochs=args.victim_epochs, victim_n_train=args.victim_n_train,
                             cache_dir=args.cache_dir or None)
    X_tr, X_te, y_te, victim = prep["X_train"], prep["X_test"], prep["y_test"], prep["victim"]
    src, results = prep["sources"], prep["results"]
    n_epochs = QUICK["detector_epochs"] if args.quick else args.detector_epochs
    epochs = {} if n_epochs is None else dict(max_epochs=n_epochs, anomaly_max_epochs=n_epochs)

    def make(factory):
        return factory(FrozenEstimator(victim), random_state=args.seed, **epochs)

    t0 = time.perf_counter()
    det = make(DAFARDetector).fit(X_tr)
    fit_seconds = time.perf_counter() - t0
    paper = make(DAFARDetector.paper).fit(X_tr)
    # The same networks scored with ||delta||_2: alpha re-learned, no retraining.
    no_c = copy.copy(det).set_params(use_anomaly_detector=False).recalibrate()

    adversarial = {s: results[s].x_adv[results[s].success] for s in args.attacks}
    rows = []
    for name, d in [("DAFAR", det), ("DAFAR (no C)", no_c), ("DAFAR (paper: alpha on train)",
                                                             paper)]:
        rows += detection_rows(name, d, X_te, adversarial)
    res = pd.DataFrame(rows)
    parts = ["## Attacks", "", to_markdown(prep["attacks"]), ""]
    for metric, title in [("roc_auc", "ROC-AUC"),
                          ("detection_rate", f"Detection rate at alpha = mean + {det.z:g} sigma "
                                             f"(target >= 0.99 on FGSM >= 0.1 and PGD; paper "
                                             f"{PAPER['detection']:.2f})"),
                          ("tpr_at_5_fpr", "Detection rate at 5 % clean FPR")]:
        pivot = res.pivot(index="detector", columns="attack", values=metric)
        pivot = pivot.reindex(index=list(dict.fromkeys(res["detector"])),
                              columns=args.attacks).reset_index()
        if metric == "detection_rate":
            column = f"clean FPR (target <= 0.005; paper {PAPER['fpr']:g})"
            pivot[column] = pivot["detector"].map(res.groupby("detector")["clean_fpr"].first())
        parts += [f"## {title}", "", to_markdown(pivot), ""]

    # Table 4: shift of E(x) under noise and attacks (same source images).
    enc = det.classifier_

    def features(X):
        return batched(lambda xb: enc(xb)[0].flatten(1), X, 256, det.device_)

    rng = np.random.default_rng(args.seed)
    X_src = X_te[src]
    noisy = np.clip(X_src + rng.normal(0, 0.3, X_src.shape), 0, 1).astype(np.float32)
    f0 = features(X_src)
    shift = {"gaussian 0.3": noisy}
    for spec in ("fgsm:0.3", "pgd:0.3"):
        if spec in results:
            shift[spec] = results[spec].x_adv
    t4 = pd.DataFrame([dict(perturbation=k, mean_feature_l2_shift=float(
        np.linalg.norm(features(v) - f0, axis=1).mean()), mean_input_l2=float(
        np.linalg.norm((v - X_src).reshape(len(v), -1), axis=1).mean())) for k, v in shift.items()])
    parts += [f"## Table 4: mean L2 shift of E(x) at {det.feature_layer_!r} (paper: "
              f"{PAPER['shift']})", "", to_markdown(t4), ""]
    t5 = pd.DataFrame([dict(detector=n, scorer="||delta - C(delta)||" if d.scores_with_anomaly_detector_
                            else "||delta||", threshold=d.threshold_,
                            calibrated_on=f"{d.n_calibration_} images",
                            mean_clean=float(np.mean(d.calibration_scores_)),
                            std_clean=float(np.std(d.calibration_scores_, ddof=1)))
                       for n, d in [("DAFAR", det), ("DAFAR (no C)", no_c),
                                    ("DAFAR (paper: alpha on train)", paper)]])
    parts += [f"## Table 5: score threshold alpha (paper MNIST: {PAPER['threshold']})", "",
              to_markdown(t5), ""]

    parts += [threshold_rules(det, X_te, adversarial), ""]

    # Fig. 9: purification; Fig. 10: the hybrid defence on a 1:1 clean/PGD mix.
    def accuracy(X, y):
        return float((victim.predict(X) == y).mean())

    y_src = y_te[src]
    purified_clean = det.transform(X_te)
    rows9 = [dict(input="clean (all test images)", raw=accuracy(X_te, y_te),
                  purified=accuracy(purified_clean, y_te))]
    hybrid = DetectAndPurify(FrozenEstimator(victim), det).fit(X_tr)
    rows10 = [dict(eps=0.0, mix="clean only", accuracy=hybrid.score(X_src, y_src))]
    for spec in sweep:
        Xa = results[spec].x_adv
        rows9.append(dict(input=spec, raw=accuracy(Xa, y_src),
                          purified=accuracy(det.transform(Xa), y_src)))
        if spec.startswith("pgd"):
            X_mix = np.concatenate([X_src, Xa])
            y_mix = np.r_[y_src, y_src]
            adv = np.r_[np.zeros(len(X_src), bool), np.ones(len(Xa), bool)]
            rows10.append(dict(eps=float(spec.split(":")[1]), mix="1:1 clean / PGD",
                               accuracy=hybrid.score(X_mix, y_mix, adversarial=adv)))
    parts += ["## Fig. 9: victim accuracy, raw and purified by D(E(x)) (every attacked image)",
              "", to_markdown(pd.DataFrame(rows9)), "",
              f"## Fig. 10: hybrid defence accuracy (target >= {TARGETS['hybrid']} at every eps)",
              "", to_markdown(pd.DataFrame(rows10)), ""]

    forward = victim.module_.eval()
    ips, clf_ips = throughputs([det.score_samples, lambda X: batched(
        forward, X, det.batch_size, det.device_)], X_te)
    parts += ["## Timing (target: scoring < 2.5x the victim's forward pass)", "",
              to_markdown(pd.DataFrame([dict(detector="DAFAR", fit_seconds=fit_seconds,
                                             n_train=len(X_tr), batch_size=det.batch_size,
                                             score_images_per_s=ips,
                                             classifier_images_per_s=clf_ips,
                                             cost_vs_classifier=clf_ips / ips)]),
                          floatfmt=".2f"), ""]
    report = "\n".join(parts)
    print()
    print(report)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    write(args.output, "report.md", settings_block(settings) + report)
    if args.output:
        res.to_csv(f"{args.output}/results.csv", index=False)


if __name__ == "__main__":
    main()
