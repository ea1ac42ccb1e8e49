"""Purifiers side by side (DAFAR Fig. 9), and Defense-GAN's detection (CMAG Tables 3-4).

Attacks correctly classified test images with FGSM and PGD at eps 0.05, 0.1,
0.2 and 0.3, fits DAFAR (plug-in, our defaults), MagNet and Defense-GAN on the
same clean training images, and prints:

* the victim's accuracy on clean test images and on every attacked image (fooled
  or not, as DAFAR's Fig. 9), raw and after each purifier: DAFAR's
  ``transform`` (D(E(x))), MagNet's reformer (``MagNetDetector.transform``, its
  denoising autoencoder), Defense-GAN's ``transform`` (G(z*)) and the binary
  filter (1-bit depth reduction, ``advdetect.squeeze.bit_depth``); one table and
  one figure (``purifiers.png``);
* detection in the layout of CMAG Tables 3-4 (FGSM 0.1/0.2/0.3, CW-L2
  confidence 9/19/29; fooled examples only, ``--n-cw`` attacked images for CW):
  detection rate at each detector's own threshold and ROC-AUC against the clean
  test images, for Defense-GAN beside MagNet and DAFAR, with the papers' values;
* fit seconds, and purification / scoring throughput beside the victim's own
  forward pass.

    python benchmarks/bench_purifiers.py --dataset subset --output docs/benchmarks/purifiers
    python benchmarks/bench_purifiers.py --dataset fashion --output docs/benchmarks/purifiers-fashion
"""

import os
import time

import numpy as np
import pandas as pd
import torch
from _common import parser, resolve, settings_block, write
from sklearn.frozen import FrozenEstimator

from advdetect import DAFARDetector, DefenseGANDetector, MagNetDetector
from advdetect.base import batched
from advdetect.benchmark import (PUBLISHED_FIGURES, QUICK, throughputs, prepare_benchmark,
                                 to_markdown)
from advdetect.metrics import detection_report
from advdetect.squeeze import bit_depth

SWEEP_EPS = [0.05, 0.1, 0.2, 0.3]
SWEEP = [f"{a}:{e}" for a in ("fgsm", "pgd") for e in SWEEP_EPS]
DETECTION = ["fgsm:0.1", "fgsm:0.2", "fgsm:0.3", "cw:9", "cw:19", "cw:29"]
# CMAG Table 3 (MNIST) and Table 4 (Fashion-MNIST): detection accuracy.
PAPER_DETECTION = {
    ours: {name: [PUBLISHED_FIGURES[("CMAG", table, dataset, name, a)]["detection_rate"]
                  for a in DETECTION] for name in ("MagNet", "Defense-GAN")}
    for ours, table, dataset in [("subset", "Table 3", "mnist"), ("fashion", "Table 4", "fashion")]
}
_FIG9 = PUBLISHED_FIGURES[("DAFAR", "Fig. 9", "mnist", "DAFAR", None)]
PAPER_FIG9 = f"""DAFAR's Fig. 9 is a plot; its text gives two numbers only: on clean MNIST
test images the victim is {100 * _FIG9["victim_accuracy"]:.2f} % accurate, and \
{100 * _FIG9["purified_accuracy"]:.2f} % after DAFAR's
purification. Of the curves it says that DAFAR's purification is "close to that
of the denoising autoencoder on the FGSM adversarial examples", and effective
on PGD "when the attack intensity is low" (the binary filter is the third
curve; Defense-GAN is not in the figure, only in its Table 6)."""


def main():
    p = parser(__doc__.splitlines()[0], SWEEP)
    p._option_string_actions["--dataset"].choices.append("fashion")
    p.add_argument("--detection-attacks", nargs="*", default=DETECTION)
    p.add_argument("--n-cw", type=int, default=100,
                   help="attacked images for the detection table (CW-L2 is slow)")
    p.add_argument("--defensegan-epochs", type=int, default=None)
    args = p.parse_args()
    settings = resolve(args)
    start = time.perf_counter()
    common = dict(seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                  victim_epochs=args.victim_epochs, victim_n_train=args.victim_n_train,
                  cache_dir=args.cache_dir or None)
    prep = prepare_benchmark(args.dataset, args.attacks, n_attack=args.n_attack, **common)
    X_tr, X_te, y_te, victim = prep["X_train"], prep["X_test"], prep["y_test"], prep["victim"]
    src, results = prep["sources"], prep["results"]
    quick = dict(max_epochs=QUICK["detector_epochs"]) if args.quick else {}
    dgan = dict(quick)
    if args.defensegan_epochs:
        dgan["max_epochs"] = args.defensegan_epochs
    seed = dict(random_state=args.seed)
    detectors = {
        "DAFAR": DAFARDetector(FrozenEstimator(victim), **seed,
                               **dict(quick, anomaly_max_epochs=quick["max_epochs"])
                               if quick else {}),
        "MagNet": MagNetDetector(**seed, **quick),
        "Defense-GAN": DefenseGANDetector(**seed, **dgan),
    }
    fit_seconds = {}
    for name, det in detectors.items():
        t0 = time.perf_counter()
        det.fit(X_tr)
        fit_seconds[name] = time.perf_counter() - t0
        print(f"{name} fitted in {fit_seconds[name]:.1f} s", flush=True)

    device = detectors["DAFAR"].device_

    def binary_filter(X):
        return batched(lambda xb: bit_depth(xb, 1), X, 256, device)

    purifiers = {"DAFAR D(E(x))": detectors["DAFAR"].transform,
                 "MagNet reformer": detectors["MagNet"].transform,
                 "Defense-GAN G(z*)": detectors["Defense-GAN"].transform,
                 "binary filter (1 bit)": binary_filter}

    def accuracy(X, y):
        return float((victim.predict(X) == y).mean())

    y_src = y_te[src]
    inputs = {"clean": (X_te, y_te)}
    inputs.update({spec: (results[spec].x_adv, y_src) for spec in args.attacks})
    rows = []
    for label, (X, y) in inputs.items():
        row = dict(input=label, n=len(X), none=accuracy(X, y))
        for name, fn in purifiers.items():
            row[name] = accuracy(fn(X), y)
        rows.append(row)
        print(f"purified {label}", flush=True)
    fig9 = pd.DataFrame(rows)

    parts = [f"# Purifiers side by side (DAFAR Fig. 9) and Defense-GAN's detection "
             f"(CMAG Tables 3-4), {args.dataset}", "", settings_block(settings),
             f"Victim test accuracy {prep['victim_accuracy']:.4f} on {len(X_te)} images.", "",
             "## Attacks", "", to_markdown(prep["attacks"]), "",
             "## Victim accuracy after each purifier (every attacked image, fooled or not; "
             "clean = all test images)", "", to_markdown(fig9), "",
             "### The paper's Fig. 9", "", PAPER_FIG9, ""]

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        clean = fig9.iloc[0]
        for ax, attack in zip(axes, ("fgsm", "pgd")):
            sub = fig9[fig9["input"].str.startswith(attack + ":")]
            eps = [0.0] + [float(s.split(":")[1]) for s in sub["input"]]
            for col in ["none"] + list(purifiers):
                ax.plot(eps, [clean[col]] + list(sub[col]), marker="o", label=col)
            ax.set_title(f"{attack.upper()} ({args.dataset})")
            ax.set_xlabel("eps (0 = clean test images)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("victim accuracy")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        if args.output:
            os.makedirs(args.output, exist_ok=True)
            fig.savefig(f"{args.output}/purifiers.png", dpi=100)
            parts += ["![victim accuracy after each purifier](purifiers.png)", ""]
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass

    forward = victim.module_.eval()
    sample = X_te[:256]
    fns = [lambda X: batched(forward, X, 256, device)] + list(purifiers.values())
    ips = throughputs(fns, sample, repeats=2)
    clf = ips[0]
    timing = [dict(method="victim forward", fit_seconds=np.nan, images_per_s=clf,
                   cost_vs_classifier=1.0)]
    fit_of = dict(zip(purifiers, [fit_seconds["DAFAR"], fit_seconds["MagNet"],
                                  fit_seconds["Defense-GAN"], 0.0]))
    for name, v in zip(purifiers, ips[1:]):
        timing.append(dict(method=name, fit_seconds=fit_of[name], images_per_s=v,
                           cost_vs_classifier=clf / v))
    parts += ["## Timing (purification of 256 test images, best of 2 runs; the classifier "
              "at batch 256)", "", to_markdown(pd.DataFrame(timing), floatfmt=".2f"), "",
              ]
    write(args.output, "purifiers.md", "\n".join(parts))  # in case the CW attacks are cut short

    if args.detection_attacks:
        det_prep = prepare_benchmark(args.dataset, args.detection_attacks,
                                     n_attack=min(args.n_cw, args.n_attack), **common)
        clean_dec = {name: det.decision_function(X_te) for name, det in detectors.items()}
        rows = []
        for name, det in detectors.items():
            for spec in args.detection_attacks:
                res = det_prep["results"][spec]
                X_adv = res.x_adv[res.success]
                if not len(X_adv):
                    continue
                dec = np.r_[clean_dec[name], det.decision_function(X_adv)]
                y = np.r_[np.ones(len(X_te)), -np.ones(len(X_adv))]
                rep = detection_report(y, dec, np.where(dec >= 0, 1, -1))
                rows.append(dict(detector=name, attack=spec, n_adversarial=len(X_adv),
                                 detection_rate=rep["detection_rate"], roc_auc=rep["roc_auc"],
                                 clean_fpr=rep["false_positive_rate"]))
        res = pd.DataFrame(rows)
        order = list(detectors)
        paper = PAPER_DETECTION.get("fashion" if args.dataset == "fashion" else "subset", {})
        table = "Table 4, Fashion-MNIST" if args.dataset == "fashion" else "Table 3, MNIST"
        for metric, title in [("detection_rate", "Detection rate at each detector's own "
                               "threshold"), ("roc_auc", "ROC-AUC against the clean test "
                                                         "images")]:
            pivot = res.pivot(index="detector", columns="attack", values=metric)
            pivot = pivot.reindex(index=order, columns=args.detection_attacks).reset_index()
            if metric == "detection_rate":
                pivot["clean FPR"] = pivot["detector"].map(
                    res.groupby("detector")["clean_fpr"].first())
                for name, values in paper.items():
                    if list(args.detection_attacks) == DETECTION:
                        pivot.loc[len(pivot)] = [f"{name} (CMAG {table})"] + values + [np.nan]
            parts += [f"## {title}", "", to_markdown(pivot), ""]
        parts += ["## Detection attacks", "", to_markdown(det_prep["attacks"]), ""]

    parts += [f"Wall time {time.perf_counter() - start:.0f} s.", ""]
    text = "\n".join(parts)
    print(text)
    write(args.output, "purifiers.md", text)


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    main()
