"""How CMAG's and DAFAR's defaults were chosen: every scoring rule on the same fitted networks.

Issue 15: defaults chosen on MNIST alone did not hold on Fashion-MNIST. This
benchmark fits each detector ONCE per (data set, victim) -- {MNIST subset,
Fashion-MNIST} x {well-trained, briefly trained victim} -- and scores every
candidate scoring rule from the same fitted networks: the candidates differ in
which per-sample metrics they read (CMAG: SSIM and L2 of FMR, GR or every
stage; DAFAR: the anomaly score of C or the plain L2 error; both: the
classifier's confidence, a logit margin), which way each test looks (the
confidence test one-sided, two-sided or off) and how the tests combine
(``min``: the smallest margin to a threshold, Algorithm 2's "any test fails";
``sum``: the sum of the margins). The metrics come from
``reconstruction_errors(X)`` and the kept calibration metrics, so the whole
grid costs 2 x 2 fits per detector. A margin is ``(v - Thr) / (median - Thr)``
on the held-out calibration split (Thr the 1 % quantile on the side the test
looks at), as :class:`~advdetect.CMAGDetector` scores.

Prints the settings, then a selection table per detector (rows = candidate
rules; columns = ROC-AUC per data set x victim x attack, the worst case, and
the clean false-positive rate on 1,000 held-out clean test images when the
combined score is thresholded at its 1 % calibration quantile), and the clean
FPR of each threshold rule for the chosen rule. Writes report.md.

    python benchmarks/bench_defaults.py --output docs/benchmarks/defaults
    python benchmarks/bench_defaults.py --quick        # digits, a smoke run

The victims, the attacks and the per-sample metrics of each fitted detector are
cached (``--cache-dir``): a rerun with new candidate rules refits nothing.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
import pandas as pd
import torch
from _common import DEFAULT_CACHE, settings_block, write
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from advdetect import CMAGDetector, DAFARDetector
from advdetect.benchmark import prepare_benchmark, to_markdown, victim_settings
from advdetect.base import logit_margin as _confidence

ATTACKS = ["fgsm:0.1", "fgsm:0.3", "pgd:0.3", "cw:9", "deepfool"]
SETUPS = [("subset", "well"), ("subset", "brief"), ("fashion", "well"), ("fashion", "brief")]
Q = 0.01  # per-test quantile of the margins' thresholds (CMAG's threshold_quantile)
FPR = 0.01  # target clean FPR of the joint threshold rule

# ------------------------------------------------------------------ candidates
# A test: (metric column, side). side "low": small values are adversarial (SSIM,
# confidence); "high": large values are (L2, anomaly score); "two": either.
CONF = {"off": [], "low": [("confidence", "low")], "two": [("confidence", "two")]}


def _cmag_candidates():
    out = {}
    metrics = {"ssim": lambda s: [(f"ssim_{s}", "low")], "l2": lambda s: [(f"l2_{s}", "high")],
               "both": lambda s: [(f"ssim_{s}", "low"), (f"l2_{s}", "high")]}
    for stage in ("fmr", "gr", "all"):
        for metric, tests in metrics.items():
            for conf, ctests in CONF.items():
                for combine in ("min", "sum"):
                    if not ctests and metric != "both" and stage != "all" and combine == "sum":
                        continue  # one test: sum == min
                    stages = ("fmr", "lr", "gr") if stage == "all" else (stage,)
                    t = [x for s in stages for x in tests(s)] + ctests
                    out[f"{stage} {metric} conf={conf} {combine}"] = dict(tests=t, combine=combine)
    return out


def _dafar_candidates():
    out = {}
    for metric, col in (("C", "anomaly_score"), ("l2", "dafar_l2")):
        for conf, ctests in CONF.items():
            for combine in (("min",) if not ctests else ("min", "sum")):
                out[f"{metric} conf={conf} {combine}"] = dict(tests=[(col, "high")] + ctests,
                                                              combine=combine)
    return out


CANDIDATES = {"CMAG": _cmag_candidates(), "DAFAR": _dafar_candidates()}
TODAY = {"CMAG": "fmr ssim conf=low min", "DAFAR": "C conf=off min"}


def _margins(cal, values, side):
    """Margins of ``values`` to the test's threshold on the calibration values ``cal``."""
    med = np.median(cal)

    def low(v):
        thr = np.quantile(cal, Q, method="lower")
        return (v - thr) / ((med - thr) or np.std(cal) or 1.0)

    def high(v):
        thr = np.quantile(cal, 1 - Q, method="higher")
        return (thr - v) / ((thr - med) or np.std(cal) or 1.0)

    if side == "low":
        return low(values)
    if side == "high":
        return high(values)
    return np.minimum(low(values), high(values))


def score(rule, cal, frame):
    """The rule's score (higher = cleaner) of the rows of ``frame``."""
    m = np.stack([_margins(cal[col].to_numpy(), frame[col].to_numpy(), side)
                  for col, side in rule["tests"]])
    return m.min(axis=0) if rule["combine"] == "min" else m.sum(axis=0)


# --------------------------------------------------------------------- metrics
def _key(**fields):
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _logit_confidence(victim, X, batch_size=256):
    module = victim.module_.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            out.append(_confidence(module(torch.as_tensor(X[i:i + batch_size]))).numpy())
    return np.concatenate(out).astype(np.float64)


def collect(dataset, victim_kind, args, log):
    """Per-sample metrics of CMAG and DAFAR (default networks, fitted once) on one setup.

    Returns ``{detector: {"cal": frame, "clean": frame, "adv": {spec: frame}}}``
    and the setup's facts (victim accuracy, sizes, fit seconds).
    """
    vk = victim_settings(dataset, victim_kind)
    if args.quick:
        vk = dict(victim_epochs=3 if victim_kind == "well" else 1)
    prep = prepare_benchmark(dataset, args.attacks, seed=args.seed, n_train=args.n_train,
                             n_test=args.n_test, n_attack=args.n_attack,
                             cache_dir=args.cache_dir or None, log=log, **vk)
    X_tr, X_te, victim = prep["X_train"], prep["X_test"], prep["victim"]
    adv = {s: r.x_adv[r.success] for s, r in prep["results"].items() if r.success.any()}
    facts = {**vk, **dict(dataset=dataset, victim=victim_kind,
                          victim_accuracy=prep["victim_accuracy"],
                          victim_n_train=prep["victim_n_train"], n_train=len(X_tr),
                          n_test=len(X_te)), **{f"n_adv {s}": len(x) for s, x in adv.items()}}
    key = _key(dataset=dataset, victim=vk, seed=args.seed, n_train=len(X_tr), n_test=len(X_te),
               n_attack=args.n_attack, attacks=sorted(adv), epochs=args.detector_epochs,
               torch=torch.__version__, v=1)
    path = args.cache_dir and os.path.join(args.cache_dir, f"defaults-metrics-{key}.npz")
    if path and os.path.exists(path):
        with np.load(path, allow_pickle=False) as d:
            facts.update(json.loads(str(d["facts"])))
            out = {}
            for name in ("CMAG", "DAFAR"):
                cols = json.loads(str(d[f"{name}_cols"]))
                parts = {p: pd.DataFrame(d[f"{name}_{p}"], columns=cols)
                         for p in ["cal", "clean"] + [f"adv {s}" for s in adv]}
                out[name] = dict(cal=parts["cal"], clean=parts["clean"],
                                 adv={s: parts[f"adv {s}"] for s in adv})
        log(f"{dataset}/{victim_kind}: metrics loaded from {path}")
        return out, facts

    frozen = FrozenEstimator(victim)
    epochs = {} if args.detector_epochs is None else dict(max_epochs=args.detector_epochs)
    out = {}
    cmag_cols = [f"{m}_{s}" for s in ("fmr", "lr", "gr") for m in ("ssim", "l2")] + ["confidence"]
    t0 = time.perf_counter()
    cmag = CMAGDetector(frozen, random_state=args.seed, **epochs).fit(X_tr)
    facts["cmag_fit_seconds"] = time.perf_counter() - t0
    out["CMAG"] = dict(cal=cmag.calibration_[cmag_cols].reset_index(drop=True),
                       clean=cmag.reconstruction_errors(X_te)[cmag_cols],
                       adv={s: cmag.reconstruction_errors(x)[cmag_cols] for s, x in adv.items()})
    log(f"{dataset}/{victim_kind}: CMAG fitted in {facts['cmag_fit_seconds']:.0f} s")

    t0 = time.perf_counter()
    dafar_epochs = dict(epochs, anomaly_max_epochs=args.detector_epochs) if epochs else {}
    dafar = DAFARDetector(frozen, random_state=args.seed, **dafar_epochs).fit(X_tr)
    facts["dafar_fit_seconds"] = time.perf_counter() - t0

    def dafar_frame(X):
        f = dafar.reconstruction_errors(X)
        return pd.DataFrame({"anomaly_score": f["anomaly_score"], "dafar_l2": f["l2"],
                             "confidence": _logit_confidence(victim, X)})

    cal = dafar.calibration_
    cal_X = X_tr[cal.index.to_numpy()]
    out["DAFAR"] = dict(cal=pd.DataFrame({"anomaly_score": cal["anomaly_score"].to_numpy(),
                                          "dafar_l2": cal["l2"].to_numpy(),
                                          "confidence": _logit_confidence(victim, cal_X)}),
                        clean=dafar_frame(X_te), adv={s: dafar_frame(x) for s, x in adv.items()})
    # DAFAR's threshold today (mean + 3 sigma), for the threshold-rule table.
    facts["dafar_threshold"] = dafar.threshold_
    log(f"{dataset}/{victim_kind}: DAFAR fitted in {facts['dafar_fit_seconds']:.0f} s")
    if path:
        arrays = {"facts": json.dumps(facts)}
        for name, parts in out.items():
            cols = list(parts["cal"].columns)
            arrays[f"{name}_cols"] = json.dumps(cols)
            arrays[f"{name}_cal"] = parts["cal"][cols].to_numpy()
            arrays[f"{name}_clean"] = parts["clean"][cols].to_numpy()
            for s, f in parts["adv"].items():
                arrays[f"{name}_adv {s}"] = f[cols].to_numpy()
        np.savez_compressed(path, **arrays)
    return out, facts


# ------------------------------------------------------------------- selection
def selection_table(name, data, setups):
    """Rows = candidate rules; ROC-AUC per setup x attack, worst case, clean FPR."""
    rows = []
    for label, rule in CANDIDATES[name].items():
        row = {"rule": label}
        aucs = []
        for setup in setups:
            d = data[setup][name]
            clean = score(rule, d["cal"], d["clean"])
            cal = score(rule, d["cal"], d["cal"])
            tag = "/".join(setup)
            for spec, frame in d["adv"].items():
                adv = score(rule, d["cal"], frame)
                y = np.r_[np.ones(len(clean)), np.zeros(len(adv))]
                auc = roc_auc_score(y, np.r_[clean, adv])
                row[f"{tag} {spec}"] = auc
                aucs.append(auc)
            thr = np.quantile(cal, FPR, method="lower")
            row[f"{tag} FPR"] = float(np.mean(clean < thr))
        row["worst AUC"] = min(aucs)
        fashion_well = [v for k, v in row.items() if k.startswith("fashion/well ")
                        and not k.endswith("FPR")]
        row["worst fashion/well"] = min(fashion_well) if fashion_well else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    today = table.set_index("rule").loc[TODAY[name]]
    mnist = [c for c in table.columns if c.startswith("subset/") and not c.endswith("FPR")]
    table["max MNIST drop"] = (today[mnist].to_numpy() - table[mnist].to_numpy()).max(axis=1) \
        if mnist else np.nan
    return table.sort_values("worst AUC", ascending=False).reset_index(drop=True)


def threshold_table(name, rule_label, data, setups, facts):
    """Clean FPR (held-out test images) of each threshold rule for one scoring rule."""
    rule = CANDIDATES[name][rule_label]
    rows = []
    for setup in setups:
        d = data[setup][name]
        clean, cal = score(rule, d["cal"], d["clean"]), score(rule, d["cal"], d["cal"])
        row = {"setup": "/".join(setup), "rule": rule_label}
        if rule["combine"] == "min":
            row["per-test q=0.01 (any test fails)"] = float(np.mean(clean < 0))
        for q in (0.005, 0.01, 0.02):
            row[f"joint {q:g} quantile"] = float(np.mean(
                clean < np.quantile(cal, q, method="lower")))
        if name == "DAFAR":
            row["mean + 3 sigma (C alone, today)"] = float(np.mean(
                d["clean"]["anomaly_score"].to_numpy() > facts[setup]["dafar_threshold"]))
        rows.append(row)
    return pd.DataFrame(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", nargs="+", default=[f"{d}/{v}" for d, v in SETUPS],
                   help="dataset/victim pairs, e.g. fashion/well subset/brief")
    p.add_argument("--attacks", nargs="+", default=ATTACKS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-attack", type=int, default=300)
    p.add_argument("--detector-epochs", type=int, default=None)
    p.add_argument("--choose", nargs=2, default=None, metavar=("CMAG_RULE", "DAFAR_RULE"),
                   help="rules whose threshold rules to tabulate (default: the best worst case)")
    p.add_argument("--output", default=None)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--quick", action="store_true", help="digits, tiny sizes: a smoke run")
    args = p.parse_args()
    setups = [tuple(s.split("/")) for s in args.setups]
    if args.quick:
        setups = [("digits", "well"), ("digits", "brief")]
        args.n_train, args.n_test, args.n_attack, args.detector_epochs = 400, 150, 60, 2
        args.attacks = ["fgsm:0.3", "deepfool"]
    settings = dict(vars(args), setups=["/".join(s) for s in setups], q=Q, joint_fpr=FPR,
                    torch=torch.__version__, threads=torch.get_num_threads(),
                    python=platform.python_version(), load_average=os.getloadavg()[0],
                    command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                    date=time.strftime("%Y-%m-%d %H:%M"))
    print("settings: " + json.dumps(settings))
    start = time.perf_counter()
    data, facts = {}, {}
    for setup in setups:
        data[setup], facts[setup] = collect(*setup, args, log=lambda *a: print(*a, flush=True))

    parts = ["## Setups (victim accuracy on the held-out test images, sizes, fit times)", "",
             to_markdown(pd.DataFrame(list(facts.values())).drop(columns=["dafar_threshold"]),
                         floatfmt=".3f"), ""]
    chosen = {}
    for i, name in enumerate(("CMAG", "DAFAR")):
        table = selection_table(name, data, setups)
        chosen[name] = args.choose[i] if args.choose else table["rule"].iloc[0]
        parts += [f"## {name}: candidate scoring rules, best worst case first", "",
                  f"Today's default: `{TODAY[name]}`. FPR: clean test images below the 1 % "
                  "quantile of the rule's calibration scores.", "", to_markdown(table), ""]
        for label in dict.fromkeys([TODAY[name], chosen[name]]):
            parts += [f"### {name} `{label}`: clean FPR of the threshold rules", "",
                      to_markdown(threshold_table(name, label, data, setups, facts)), ""]
    report = "\n".join(parts)
    print()
    print(report)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    write(args.output, "report.md", "# How the defaults were chosen (bench_defaults.py)\n\n"
          + settings_block(settings) + report)


if __name__ == "__main__":
    main()
