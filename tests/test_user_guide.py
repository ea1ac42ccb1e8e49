"""Every Python snippet of the user guide, the README and the contributors' page runs.

The snippets are read from ``docs/user_guide/*.rst`` (``.. code-block:: python``)
and ``README.md`` (fenced ``python`` blocks) and executed in order, page by page,
in one namespace per page that holds the names the prose assumes (``victim``,
``X_train``, ``X``, ``X_adv`` ...) built small: scikit-learn's 8x8 digits and a
small CNN. Every network trains for one epoch (skorch's ``fit`` is capped here):
the test checks that the documented calls exist and fit together, not how well
the detectors work. A snippet that cannot run by design is preceded by the rst
comment ``.. snippet: skip (reason)``.
"""

import os
import pathlib
import re
import textwrap

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "user_guide"

_RST_BLOCK = re.compile(r"(?P<skip>\.\. snippet: skip[^\n]*\n\s*\n)?"
                        r"\.\. code-block:: python\n(?P<body>(?:[ \t]*\n|[ \t]+.*\n)+)")
_MD_BLOCK = re.compile(r"```python\n(?P<body>.*?)```", re.S)


def snippets(path):
    """The runnable Python snippets of one page, in order."""
    text = path.read_text()
    if path.suffix == ".md":
        return [m["body"] for m in _MD_BLOCK.finditer(text)]
    return [textwrap.dedent(m["body"]) for m in _RST_BLOCK.finditer(text) if not m["skip"]]


PAGES = sorted(GUIDE.glob("*.rst")) + [ROOT / "README.md", ROOT / "docs" / "contributing.rst"]
PAGES = [p for p in PAGES if snippets(p)]


@pytest.fixture(scope="module")
def names(digits_small, small_victim):
    """What the prose assumes, built small."""
    from sklearn.frozen import FrozenEstimator

    from advdetect.attacks import generate

    X_all, y_all = digits_small
    X_train, X_test, y_test = X_all[:160], X_all[160:], y_all[160:]
    adv = generate(small_victim, X_test, y_test, attack="fgsm", eps=0.3, random_state=0)
    X_adv, y_adv = adv.x_adv[adv.success], y_test[adv.success]
    X_mixed = np.concatenate([X_test[:40], X_adv[:40]])
    y_true = np.concatenate([y_test[:40], y_adv[:40]])
    adversarial = np.r_[np.zeros(40, bool), np.ones(len(X_adv[:40]), bool)]
    return dict(victim=small_victim, FrozenEstimator=FrozenEstimator, X_train=X_train,
                y_train=y_all[:160], source_index=np.flatnonzero(adv.success),
                X=X_test[:16], X_clean=X_train, X_clean_holdout=X_test,
                X_test=X_test, y_test=y_test, X_adv=X_adv, y_adv=y_adv,
                X_mixed=X_mixed, y_true=y_true, adversarial=adversarial,
                X_pool=X_test, y_pool=y_test)


@pytest.fixture
def one_epoch(monkeypatch):
    """Every skorch net trains for one epoch: the snippets' calls, not their quality."""
    from skorch import NeuralNet

    fit = NeuralNet.fit

    def capped(self, X, y=None, **fit_params):
        self.max_epochs = min(self.max_epochs, 1)
        return fit(self, X, y, **fit_params)

    monkeypatch.setattr(NeuralNet, "fit", capped)


def _prelude(page, ns, tmp_path):
    """Files and data a page's snippets load, made here."""
    if page.name == "own_model.rst":
        from torch import nn
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))
        torch.save(model.state_dict(), tmp_path / "my_cifar_model.pt")
        ns["X_clean"] = np.random.default_rng(0).random((40, 3, 32, 32), dtype=np.float32)
    if page.name == "scaling.rst":
        # The search of the page runs on a detection data set (as thresholds.rst builds it).
        from advdetect.model_selection import make_detection_dataset
        ns["X"], ns["y"], ns["groups"] = make_detection_dataset(
            ns["X_test"], ns["X_adv"], source_index=ns["source_index"])
        # The streaming snippet scores a file and a torch Dataset with a fitted detector.
        from advdetect import MagNetDetector
        np.save(tmp_path / "images.npy", ns["X_test"])
        ns["my_dataset"] = torch.utils.data.TensorDataset(torch.from_numpy(ns["X_test"]))
        ns["detector"] = MagNetDetector(max_epochs=1, random_state=0).fit(ns["X_train"])
    if page.name == "README.md":
        # The README's quick start loads the MNIST subset: keep it to 300 images.
        from advdetect import datasets
        load = datasets.load_mnist
        ns["_load_mnist"] = lambda *a, **k: load("subset", n_samples=300)
        ns["X_clean_holdout"] = load("subset", n_samples=300)[2][:200]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_snippet_of_the_page_runs(page, names, one_epoch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = dict(names)
    _prelude(page, ns, tmp_path)
    if "_load_mnist" in ns:
        from advdetect import datasets
        monkeypatch.setattr(datasets, "load_mnist", ns.pop("_load_mnist"))
    for i, code in enumerate(snippets(page)):
        try:
            exec(compile(code, f"{page.name} snippet {i + 1}", "exec"), ns)
        except Exception as exc:  # name the snippet: the traceback shows its line
            raise AssertionError(f"{page.name}, snippet {i + 1} fails: {exc!r}\n{code}") from exc
        if page.name == "own_model.rst" and i == 0:
            assert ns["det"].feature_layer_ == "5"   # what the page says the default picks


def test_the_defence_accuracy_snippet_counts_adversarial_inputs(names, one_epoch):
    # dafar.rst once showed defence.score(X_mixed, y_true) as "the paper's defence
    # accuracy": without adversarial= every input counts as clean.
    text = (GUIDE / "dafar.rst").read_text()
    calls = re.findall(r"defence\.score\(([^)]*)\)", text)
    assert calls and all("adversarial=" in c for c in calls), calls


def test_snippets_are_found():
    found = {p.name: len(snippets(p)) for p in PAGES}
    assert found.get("cmag.rst", 0) >= 3 and found.get("thresholds.rst", 0) >= 4
    assert found.get("README.md", 0) >= 1
    assert os.path.basename(str(GUIDE)) == "user_guide"
