"""Beyond one process and beyond memory: a search on a dask cluster, scoring from a memmap.

Two measurements (``--part grid``, ``--part memory``, or both):

**grid** - ``GridSearchCV`` over 8 CMAG candidates (``mu_gr`` x ``temperature``
x ``mu_fmr``; scored on the GR stage) x 3 folds of :class:`~advdetect.model_selection.CleanTrainSplit`
on the MNIST subset (clean test images and their FGSM 0.2 examples), scored by
ROC-AUC, run three ways: sequentially with torch on one thread (the reference
whose float sums the workers repeat), sequentially with torch on all cores (the
fair wall-time baseline on an idle machine; ``--sequential-threads 1`` leaves it
out: on an oversubscribed machine torch's thread pool spins and that run takes
hours), and through joblib's dask backend on a 2-worker
``LocalCluster`` (processes, one thread each, torch threads set by
:func:`advdetect.parallel.set_torch_threads`). Reported: wall seconds and
whether ``cv_results_`` (every split's score) and ``best_params_`` are equal.
The networks train for a few epochs on 300 clean images per fold: this times
the search, it does not measure detection (at this size CMAG's GR stage ranks
FGSM examples below chance; see the benchmarks pages for detection figures).

**memory** - peak resident memory and throughput of ``score_samples`` on 10 k,
100 k and 1 M MNIST-sized images read from a ``numpy.memmap``: a float32 file
of 1 M x 784 values (3.1 GB; the MNIST subset tiled) written by the script in a
temporary folder. Each size runs in a fresh process, as in
``bench_memory.py``: fit the detector briefly on 500 images, reset the peak
mark (``/proc/self/clear_refs``), score ``np.load(path, mmap_mode="r")[:n]``,
read ``VmHWM``. The peak counts the pages of the file mapped into the process
(resident file pages count in RSS), which advdetect hands back after each
batch. Target: the peak at 1 M within 10 % of the peak at 10 k. Linux only.

    nice -n 5 python benchmarks/bench_scale.py --output docs/benchmarks/scale
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CHILD_FIT, CHILD_MEASURE, settings_block, write  # noqa: E402

GRID = {"mu_gr": [0.3, 0.7], "temperature": [1.0, 10.0], "mu_fmr": [0.5, 0.8]}

CHILD = ("import sys\nname, path, n, batch_size = sys.argv[1], sys.argv[2], "
         "int(sys.argv[3]), int(sys.argv[4])\n") + CHILD_FIT + r"""
X = np.load(path, mmap_mode="r")[:n]
""" + CHILD_MEASURE + r"""
print(json.dumps(dict(detector=name, n=n, file_mb=X.nbytes / 2**20, peak_mb=peak / 2**20,
                      working_mb=(peak - before) / 2**20, seconds=seconds,
                      images_per_s=n / seconds, rss_after_mb=status("VmRSS") / 2**20,
                      finite=bool(np.isfinite(scores).all()))))
"""


# --------------------------------------------------------------------------- #
# (a) the grid search
# --------------------------------------------------------------------------- #
def _grid_data(n_train, n_search, victim_epochs, seed):
    from advdetect.attacks import generate
    from advdetect.datasets import load_mnist
    from advdetect.model_selection import make_detection_dataset
    from advdetect.models import train_classifier

    X_tr, y_tr, X_te, y_te = load_mnist("subset", random_state=seed)
    victim = train_classifier(X_tr[:n_train], y_tr[:n_train], max_epochs=victim_epochs,
                              device="cpu", random_state=seed)
    clean, labels = X_te[:n_search], y_te[:n_search]
    adv = generate(victim, clean, labels, "fgsm", eps=0.2, only_correct=False,
                   random_state=seed)
    X, y, groups = make_detection_dataset(clean, adv.x_adv)
    return victim, X, y, groups


def run_grid(args, log=print):
    import joblib
    import torch
    from distributed import Client, LocalCluster
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import GridSearchCV

    from advdetect import CMAGDetector
    from advdetect.metrics import roc_auc_scorer
    from advdetect.model_selection import CleanTrainSplit
    from advdetect.parallel import set_torch_threads

    victim, X, y, groups = _grid_data(args.n_train, args.n_search, args.victim_epochs, args.seed)
    # Scored on the GR stage, which every parameter of the grid changes.
    det = CMAGDetector(FrozenEstimator(victim), stage="gr", max_epochs=args.epochs,
                       batch_size=args.detector_batch_size, device="cpu",
                       random_state=args.seed)

    def search(n_jobs):
        gs = GridSearchCV(det, GRID, scoring=roc_auc_scorer, cv=CleanTrainSplit(n_splits=3),
                          n_jobs=n_jobs, error_score="raise")
        t0 = time.perf_counter()
        gs.fit(X, y, groups=groups)
        return gs, time.perf_counter() - t0

    runs = {}
    threads_before = torch.get_num_threads()
    for threads in sorted(set([1] + args.sequential_threads)):
        label = f"sequential, torch {threads} thread" + ("s" if threads > 1 else "")
        torch.set_num_threads(threads)
        runs[label] = search(1)
        log(f"{label}: {runs[label][1]:.1f} s")
    torch.set_num_threads(threads_before)
    label = f"LocalCluster {args.workers} workers x 1 thread (processes)"
    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - t0
        torch_threads = set_torch_threads(client)
        with joblib.parallel_config(backend="dask"):
            runs[label] = search(-1)
    log(f"{label}: {runs[label][1]:.1f} s (+ {startup:.1f} s cluster start-up); "
        f"torch threads on the workers: {sorted(torch_threads.values())}")

    reference = runs["sequential, torch 1 thread"][0]
    keys = [f"split{i}_test_score" for i in range(3)] + ["mean_test_score"]
    lines = ["| run | wall s | cv_results_ equal to the 1-thread run | max abs difference | "
             "best_params_ |", "|---|---|---|---|---|"]
    for label, (gs, seconds) in runs.items():
        diff = max(float(np.max(np.abs(gs.cv_results_[k] - reference.cv_results_[k])))
                   for k in keys)
        equal = all(np.array_equal(gs.cv_results_[k], reference.cv_results_[k]) for k in keys)
        lines.append(f"| {label} | {seconds:.1f} | {'yes' if equal else 'no'} | {diff:.2g} | "
                     f"{gs.best_params_} |")
    scores = ["| candidate | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for i, params in enumerate(reference.cv_results_["params"]):
        scores.append(f"| {params} | " + " | ".join(
            f"{reference.cv_results_[k][i]:.4f}" for k in keys) + " |")
    return ("## GridSearchCV: 8 CMAG candidates x 3 folds\n\n" + "\n".join(lines)
            + f"\n\nCluster start-up (not in the wall time): {startup:.1f} s.\n\n"
            + "Scores of the reference run (ROC-AUC):\n\n" + "\n".join(scores) + "\n")


# --------------------------------------------------------------------------- #
# (b) scoring from a memory map
# --------------------------------------------------------------------------- #
def _write_memmap(path, n, log=print):
    from advdetect.datasets import load_mnist

    X_tr, _, X_te, _ = load_mnist("subset")
    tile = np.concatenate([X_tr, X_te]).reshape(-1, 1, 28, 28).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 1, 28, 28))
    for start in range(0, n, len(tile)):
        stop = min(n, start + len(tile))
        out[start:stop] = tile[:stop - start]
    out.flush()
    del out
    log(f"wrote {n} images ({os.path.getsize(path) / 2**30:.2f} GiB) to {path}")


def run_memory(args, log=print):
    sizes = sorted(args.sizes)
    free = shutil.disk_usage(args.tmp).free
    need = max(sizes) * 784 * 4
    if free < need * 1.2:
        raise SystemExit(f"{args.tmp} has {free / 2**30:.1f} GiB free; the memmap needs "
                         f"{need / 2**30:.1f} GiB (pass --tmp or smaller --sizes)")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "images.npy")
        _write_memmap(path, max(sizes), log)
        for name in args.detectors:
            for n in sizes:
                if name != "MagNetDetector" and n > args.max_n_slow:
                    continue
                out = subprocess.run([sys.executable, "-c", CHILD, name, path, str(n),
                                      str(args.batch_size)], check=True, capture_output=True,
                                     text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                log(rows[-1])
    lines = ["| detector | images | file MB | peak RSS MB | ratio to the smallest | "
             "within 10 % | working MB | images/s | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in args.detectors:
        mine = [r for r in rows if r["detector"] == name]
        for r in mine:
            ratio = r["peak_mb"] / mine[0]["peak_mb"]
            lines.append(f"| {name} | {r['n']:,} | {r['file_mb']:.0f} | {r['peak_mb']:.0f} | "
                         f"{ratio:.3f} | {'yes' if abs(ratio - 1) <= 0.10 else 'NO'} | "
                         f"{r['working_mb']:.1f} | {r['images_per_s']:.0f} | "
                         f"{r['seconds']:.1f} |")
    return "## score_samples from a numpy.memmap\n\n" + "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["grid", "memory", "all"], default="all")
    p.add_argument("--output", default=None, help="folder for scale.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=1000, help="victim's training images")
    p.add_argument("--n-search", type=int, default=600,
                   help="clean test images of the search (and as many FGSM examples)")
    p.add_argument("--victim-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="CMAG's max_epochs per network")
    p.add_argument("--detector-batch-size", type=int, default=32,
                   help="CMAG's training batch size in the grid")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sequential-threads", type=int, nargs="+", default=None,
                   help="torch threads of the sequential runs besides the 1-thread reference "
                        "(default: the cores)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--detectors", nargs="+", default=["MagNetDetector", "CMAGDetector"])
    p.add_argument("--max-n-slow", type=int, default=1_000_000,
                   help="largest size for detectors other than MagNet")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for the memmap file")
    args = p.parse_args(argv)
    if args.sequential_threads is None:
        args.sequential_threads = [len(os.sched_getaffinity(0))]
    import torch

    settings = dict(vars(args), grid=GRID, torch=torch.__version__,
                    threads=torch.get_num_threads(), cores=len(os.sched_getaffinity(0)),
                    python=sys.version.split()[0], load_average=os.getloadavg()[0],
                    command=" ".join(["bench_scale.py"] + sys.argv[1:]),
                    date=time.strftime("%Y-%m-%d %H:%M"))
    print("settings: " + json.dumps(settings), flush=True)
    parts = []
    if args.part in ("grid", "all"):
        parts.append(run_grid(args))
    if args.part in ("memory", "all"):
        parts.append(run_memory(args))
    text = settings_block(settings) + "\n".join(parts)
    print()
    print(text)
    write(args.output, f"scale-{args.part}.md", text)


if __name__ == "__main__":
    main()
