"""Plots a reader would rather look at than read (matplotlib, PNG).

* :func:`plot_roc_curves` - ROC curves of every detector against one attack;
* :func:`plot_score_densities` - clean vs adversarial decision values with the
  threshold marked (DAFAR Figs. 5-6);
* :func:`plot_reconstructions` - inputs beside their reconstructions (CMAG
  Figs. 3 and 5: input, FMR, LR, GR; DAFAR Fig. 4: input, D(E(x)), error).
"""

import os

import numpy as np

from ._extras import require

__all__ = ["plot_roc_curves", "plot_score_densities", "plot_reconstructions",
           "save_benchmark_plots"]


def _pyplot():
    matplotlib = require("matplotlib", "plotting")

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_roc_curves(curves, title="", ax=None):
    """ROC curves, adversarial as the positive class.

    Parameters
    ----------
    curves : dict
        ``{label: (y, decision)}`` with y = +1 clean, -1 adversarial.
    title : str
    ax : matplotlib Axes or None
        Axes to draw on; None draws on a new figure.

    Returns
    -------
    matplotlib.axes.Axes
        One curve per entry, labelled with its ROC-AUC, and the chance diagonal.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from advdetect.plotting import plot_roc_curves
    >>> y = np.r_[np.ones(50), -np.ones(50)]                   # +1 clean, -1 adversarial
    >>> dec = np.r_[np.linspace(0.1, 2, 50), np.linspace(-2, 0.5, 50)]
    >>> ax = plot_roc_curves({"detector": (y, dec), "chance": (y, np.zeros(100))},
    ...                      title="ROC, FGSM 0.3")
    >>> ax.get_legend_handles_labels()[1]
    ['detector (0.980)', 'chance (0.500)']
    >>> plt.close(ax.figure)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    ax = ax or plt.subplots(figsize=(4.5, 4.5))[1]
    for label, (y, dec) in curves.items():
        fpr, tpr, _ = roc_curve(y == -1, -np.asarray(dec))
        ax.plot(fpr, tpr, label=f"{label} ({roc_auc_score(y == -1, -np.asarray(dec)):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="clean false-positive rate", ylabel="detection rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_score_densities(clean, adversarial, threshold=0.0, title="", ax=None):
    """Histograms of decision values, clean vs each attack, threshold marked.

    Parameters
    ----------
    clean : array-like
        Decision values of clean inputs.
    adversarial : dict
        ``{attack: decision values}``.
    threshold : float, default=0.0
        Where the detector's decision changes sign.
    title : str
    ax : matplotlib Axes or None
        Axes to draw on; None draws on a new figure.

    Returns
    -------
    matplotlib.axes.Axes
        The clean histogram filled, one outline per attack, on bins spanning
        the 0.5-99.5 percentiles of all values (values beyond are clipped
        into the outer bins).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from advdetect.plotting import plot_score_densities
    >>> rng = np.random.default_rng(0)
    >>> ax = plot_score_densities(rng.normal(1, 0.5, 500),
    ...                           {"FGSM 0.3": rng.normal(-1, 0.5, 500)}, title="CMAG")
    >>> ax.get_legend_handles_labels()[1]
    ['clean', 'FGSM 0.3', 'threshold']
    >>> plt.close(ax.figure)
    """
    plt = _pyplot()
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    values = np.concatenate([np.asarray(clean)] + [np.asarray(v) for v in adversarial.values()])
    lo, hi = np.percentile(values, [0.5, 99.5])
    bins = np.linspace(lo, hi, 60)
    ax.hist(np.clip(clean, lo, hi), bins=bins, density=True, alpha=0.6, label="clean")
    for name, v in adversarial.items():
        ax.hist(np.clip(v, lo, hi), bins=bins, density=True, histtype="step", label=name)
    ax.axvline(threshold, color="k", ls="--", label="threshold")
    ax.set(xlabel="decision_function (negative = flagged)", ylabel="density", title=title)
    ax.legend(fontsize=7)
    return ax


def plot_reconstructions(rows, titles, n=8, *, value_range=(0.0, 1.0), signed=None):
    """A grid: one row per array of images, ``n`` columns.

    Images are drawn in grey over ``value_range`` (RGB for three channels).
    A row of signed differences (a reconstruction error ``x - x'``) is drawn
    as one signed value per pixel in a diverging colour map (``"seismic"``:
    blue negative, white 0, red positive) with a symmetric norm over
    ``[-w, w]``, ``w`` the width of ``value_range``; for colour images that
    value is the channel difference of largest magnitude, with its sign (a
    mean over channels could cancel a red error against a blue one, and an
    RGB picture cannot show negative values at all).

    Parameters
    ----------
    rows : list of ndarray of shape (m, C, H, W)
    titles : list of str
        One per row.
    n : int, default=8
        Columns: the first ``n`` images of each row (cells past a row's end
        stay empty).
    value_range : (float, float) or None, default=(0.0, 1.0)
        Range of the images' values (a detector's ``input_range``); ``None``
        takes the smallest and largest value of the image rows.
    signed : list of bool or None, default=None
        Which rows are signed differences; ``None``: the rows with a value
        below ``value_range[0]`` (a whole row, so that an error image that
        happens to be non-negative is drawn like the others).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from advdetect.plotting import plot_reconstructions
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((4, 1, 8, 8), dtype=np.float32)
    >>> X_rec = 0.5 * X + 0.25                                 # a stand-in reconstruction
    >>> fig = plot_reconstructions([X, X_rec, X - X_rec],
    ...                            ["input", "reconstruction", "error x - x'"], n=4)
    >>> len(fig.axes), fig.axes[8].images[0].get_cmap().name  # 3 rows x 4 columns
    (12, 'seismic')
    >>> plt.close(fig)
    """
    plt = _pyplot()
    rows = [np.asarray(r) for r in rows]
    if signed is None:
        low = 0.0 if value_range is None else float(value_range[0])
        signed = [r.size > 0 and float(np.nanmin(r[:n])) < low for r in rows]
    elif len(signed) != len(rows):
        raise ValueError(f"signed needs one flag per row: {len(rows)} rows, got "
                         f"{len(signed)} flags")
    if value_range is None:
        plain = [r[:n] for r, s in zip(rows, signed) if not s and r.size]
        lo = min((float(np.nanmin(r)) for r in plain), default=0.0)
        hi = max((float(np.nanmax(r)) for r in plain), default=1.0)
        value_range = (lo, hi if hi > lo else lo + 1.0)
    lo, hi = float(value_range[0]), float(value_range[1])
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (imgs, title, is_signed) in enumerate(zip(rows, titles, signed)):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(imgs):
                continue
            img = imgs[c]
            if is_signed:
                # One signed value per pixel: the channel of largest |difference|.
                pick = np.abs(img).argmax(axis=0)[None]
                ax.imshow(np.take_along_axis(img, pick, axis=0)[0], cmap="seismic",
                          vmin=-(hi - lo), vmax=hi - lo)
            elif img.shape[0] == 3:
                # matplotlib draws RGB arrays on [0, 1] only.
                ax.imshow(np.clip((np.transpose(img, (1, 2, 0)) - lo) / (hi - lo), 0, 1))
            else:
                ax.imshow(img[0], cmap="gray", vmin=lo, vmax=hi)
        axes[r, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def save_benchmark_plots(folder, curves, detectors, X_clean, adversarial, n=8):
    """Write the benchmark's figures into ``folder``; returns the file names.

    What :func:`~advdetect.benchmark.run_benchmark` draws when given an
    ``output`` folder: one ROC figure per attack (every detector), one
    score-density figure per detector (every attack), and one
    reconstruction grid per detector that reconstructs (half clean images,
    half adversarial examples of the first attack that has some).

    Parameters
    ----------
    folder : str or os.PathLike
        An existing folder; files of the same names are overwritten.
    curves : dict
        ``{(detector name, attack): (y, decision)}``, with ``y`` = +1 clean,
        -1 adversarial and ``decision`` the detector's decision values on
        those inputs (negative = flagged).
    detectors : dict
        ``{name: fitted detector}``. Those with a ``reconstruct`` method get a
        grid (CMAG: input, FMR, LR, GR; the others: input, reconstruction,
        error); names with a space or a parenthesis (the benchmark's
        variants, which share another detector's networks) are skipped.
    X_clean : ndarray of shape (m, C, H, W)
        Clean images; the first ``n // 2`` fill the grids' clean half.
    adversarial : dict
        ``{attack: ndarray of shape (k, C, H, W)}``, the adversarial examples.
    n : int, default=8
        Images per reconstruction grid.

    Returns
    -------
    list of str
        The paths written: ``roc_<attack>.png`` (a ``":"`` in the attack
        becomes ``"_"``), ``density_<detector>.png`` and
        ``reconstructions_<detector>.png``, detector names in lower case with
        every other character than a letter or digit replaced by ``"_"``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from advdetect import MagNetDetector
    >>> from advdetect.plotting import save_benchmark_plots
    >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    >>> magnet = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
    >>> X_adv = np.clip(X[:4] + 0.3, 0, 1)                     # stand-in adversarial images
    >>> y = np.r_[np.ones(32), -np.ones(4)]
    >>> curves = {("MagNet", "fgsm:0.3"): (y, magnet.decision_function(np.r_[X, X_adv]))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = save_benchmark_plots(tmp, curves, {"MagNet": magnet}, X,
    ...                                  {"fgsm:0.3": X_adv})
    ...     sorted(os.path.basename(p) for p in paths)
    ['density_magnet.png', 'reconstructions_magnet.png', 'roc_fgsm_0.3.png']
    """
    plt = _pyplot()
    written = []
    attacks = list(dict.fromkeys(a for _, a in curves))
    names = list(dict.fromkeys(d for d, _ in curves))
    for attack in attacks:
        ax = plot_roc_curves({d: curves[(d, attack)] for d in names if (d, attack) in curves},
                             title=f"ROC, {attack}")
        path = os.path.join(folder, f"roc_{attack.replace(':', '_')}.png")
        ax.figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(path)
    for name in names:
        det_curves = {a: curves[(name, a)] for a in attacks if (name, a) in curves}
        if not det_curves:
            continue
        y0, d0 = next(iter(det_curves.values()))
        clean = d0[y0 == 1]
        adv = {a: d[y == -1] for a, (y, d) in det_curves.items()}
        ax = plot_score_densities(clean, adv, title=f"{name}: decision values")
        path = os.path.join(folder, f"density_{_slug(name)}.png")
        ax.figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(path)
    attack = next((a for a in adversarial if len(adversarial[a])), None)
    for name, det in detectors.items():
        if attack is None or not hasattr(det, "reconstruct") or "(" in name or " " in name:
            continue
        X = np.concatenate([X_clean[:n // 2], adversarial[attack][:n // 2]])
        if type(det).__name__ == "CMAGDetector":
            rows = [X] + [det.reconstruct(X, stage=s) for s in ("fmr", "lr", "gr")]
            titles = ["input (clean | " + attack + ")", "FMR", "LR", "GR"]
            signed = [False] * 4
        else:
            rec = det.reconstruct(X)
            rows, titles = [X, rec, X - rec], ["input (clean | " + attack + ")",
                                               "reconstruction", "error x - x'"]
            signed = [False, False, True]
        fig = plot_reconstructions(rows, titles, n=len(X), signed=signed,
                                   value_range=getattr(det, "input_range", (0.0, 1.0)))
        path = os.path.join(folder, f"reconstructions_{_slug(name)}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _slug(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
