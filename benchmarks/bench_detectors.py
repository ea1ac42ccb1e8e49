"""Every detector side by side on one victim and one attack suite (issue: the benchmark).

Runs :func:`advdetect.benchmark.run_benchmark` with the full attack suite
(FGSM 0.05-0.3, PGD 0.3, CW-L2 confidence 0/9/19/29, DeepFool, JSMA) and all
four detectors plus their no-retraining variants (the CMAG paper rule, CMAG
stages, DAFAR without its anomaly detector) and the max-softmax floor, then
prints the tables (ROC-AUC; detection rate and clean FPR at each detector's own
threshold; TPR at 5 % clean FPR; timing) beside the published figures of
``ANCHORS.md``.

    python benchmarks/bench_detectors.py                 # full MNIST if installed
    python benchmarks/bench_detectors.py --dataset subset --output docs/benchmarks/subset
    python benchmarks/bench_detectors.py --quick         # a smoke run at a tiny size
"""

import time

from _common import parser, resolve, write

from advdetect.benchmark import (DETECTORS, FULL_ATTACKS, PUBLISHED_FIGURES, QUICK, format_report,
                                 run_benchmark)


def _published():
    """The published figures (not measured here), as a Markdown section: every number from
    ``advdetect.benchmark.PUBLISHED_FIGURES``, rates printed in %."""
    def rate(paper, table, detector, attack, metric="detection_rate"):
        return PUBLISHED_FIGURES[(paper, table, "mnist", detector, attack)][metric]

    def pct(value):
        return "100" if value == 1 else f"{100 * value:.1f}"

    def review(detector, attack):  # detection rate / clean FPR
        args = ("Aldahdooh et al. 2022", "MNIST results", detector, attack)
        return f"{pct(rate(*args))}/{pct(rate(*args, 'clean_fpr'))}"

    (cmag_fgsm,) = {rate("CMAG", "Table 3", "CMAG", f"fgsm:{e}") for e in (0.1, 0.2, 0.3)}
    (cmag_cw,) = {rate("CMAG", "Table 3", "CMAG", f"cw:{c}") for c in (9, 19, 29)}
    (dafar,) = {rate("DAFAR", "Section 5.3.1", "DAFAR", f"fgsm:{e}")
                for e in (0.05, 0.1, 0.2, 0.3)}
    dafar_fpr = rate("DAFAR", "Section 5.3.1", "DAFAR", None, "clean_fpr")
    magnet_cw29 = rate("CMAG", "Table 3", "MagNet", "cw:29")
    fs, mn = "Feature Squeezing", "MagNet"
    rows = [
        (fs, review(fs, "fgsm:0.25"), review(fs, "pgd:0.25"),
         f"{review(fs, 'cw_linf')} (CW-Linf)", review(fs, "deepfool")),
        (mn, review(mn, "fgsm:0.25"), review(mn, "pgd:0.25"),
         f"{review(mn, 'cw_linf')} (CW-Linf); {100 * magnet_cw29:.0f} at CW-L2 conf 29 "
         "(CMAG Table 3)", review(mn, "deepfool")),
        ("CMAG (paper, Table 3)", f"{pct(cmag_fgsm)} (FGSM 0.1/0.2/0.3)", "-",
         f"{pct(cmag_cw)} (CW-L2 conf 9/19/29)", "-"),
        ("DAFAR (paper, 5.3.1)", f"{pct(dafar)} at every eps, {100 * dafar_fpr:.2f} % FPR",
         "-", "-", "-"),
    ]
    return "\n".join(
        ["## Published figures (not measured here)", "",
         "Detection rate % / clean FPR % from Aldahdooh et al. 2022 (MNIST; FGSM/BIM/PGD at",
         "eps 0.25, their victims and attack settings, not ours), and the papers' own claims.",
         "", "| detector | FGSM .25 | PGD-Linf .25 | CW | DeepFool |", "|---|---|---|---|---|"]
        + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


PUBLISHED = _published()


def main():
    p = parser(__doc__.splitlines()[0], FULL_ATTACKS)
    p.add_argument("--detectors", nargs="+", default=DETECTORS)
    p.add_argument("--detector-epochs", type=int, default=None)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()
    settings = resolve(args)
    start = time.perf_counter()
    kwargs = dict(dataset=args.dataset, attacks=args.attacks, detectors=args.detectors,
                  seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                  n_attack=args.n_attack, victim_epochs=args.victim_epochs,
                  victim_n_train=args.victim_n_train,
                  detector_epochs=QUICK["detector_epochs"] if args.quick else args.detector_epochs,
                  output=args.output, plots=not args.no_plots,
                  cache_dir=args.cache_dir or None, verbose=0)
    tables = run_benchmark(**kwargs)
    report = format_report(tables) + "\n" + PUBLISHED
    print()
    print(report)
    print(f"wall time {time.perf_counter() - start:.0f} s; settings {settings['command']}")
    write(args.output, "report.md", report)


if __name__ == "__main__":
    main()
