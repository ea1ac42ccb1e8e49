"""Write the API reference's module pages from the package's ``__all__`` lists.

Nothing in the API reference is listed by hand: one page per public module
(``advdetect`` itself and :data:`PUBLIC_SUBMODULES`) with an autosummary table
of that module's ``__all__``, from which ``sphinx.ext.autosummary`` generates a
page per name. A name added to ``advdetect.__all__`` appears in the next build.
``tests/test_docs.py`` reads the same list.
"""

import importlib
import inspect
import os

#: The public submodules documented besides ``advdetect`` itself, in page order.
PUBLIC_SUBMODULES = [
    "advdetect.datasets",
    "advdetect.models",
    "advdetect.attacks",
    "advdetect.metrics",
    "advdetect.model_selection",
    "advdetect.plotting",
    "advdetect.benchmark",
    "advdetect.parallel",
    "advdetect.nn.ssim",
    "advdetect.nn.differentiable",
]

#: One line under each module's heading; the module docstrings are longer.
SUMMARIES = {
    "advdetect": "The detectors and the defence.",
    "advdetect.datasets": "Offline data loaders.",
    "advdetect.models": "Victim classifiers and their trainer.",
    "advdetect.attacks": "Adversarial examples for benchmarks and examples.",
    "advdetect.metrics": "Detection metrics and scorers (adversarial = positive class).",
    "advdetect.model_selection": "Cross-validation with clean-only training folds.",
    "advdetect.plotting": "Figures of detectors and reconstructions.",
    "advdetect.benchmark": "The side-by-side benchmark.",
    "advdetect.parallel": "Torch threads on dask.distributed workers (searches on a cluster).",
    "advdetect.nn.ssim": "Batched, differentiable SSIM in torch.",
    "advdetect.nn.differentiable": "Detectors as differentiable torch modules (to_torch).",
}

OUTPUT = "gen_modules"


def public_modules():
    """``["advdetect"] + PUBLIC_SUBMODULES``."""
    return ["advdetect"] + PUBLIC_SUBMODULES


def documented_names():
    """``{module: [names]}``: each module's ``__all__``, less names documented earlier.

    A name a submodule shares with ``advdetect.__all__`` (the same object) is
    documented once, under ``advdetect``; documenting it twice would make two
    targets for one cross-reference.
    """
    seen = {}
    out = {}
    for modname in public_modules():
        module = importlib.import_module(modname)
        names = []
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not _is_data(obj) and id(obj) in seen:
                continue
            seen[id(obj)] = f"{modname}.{name}"
            names.append(name)
        out[modname] = names
    return out


def _is_data(obj):
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def _kind(obj):
    if inspect.isclass(obj):
        return "classes"
    if inspect.isroutine(obj):
        return "functions"
    return "data"


def _underline(text, char):
    return f"{text}\n{char * len(text)}\n"


def write_pages(srcdir):
    """Write ``gen_modules/<module>.rst`` for every public module; return their names."""
    folder = os.path.join(srcdir, OUTPUT)
    os.makedirs(folder, exist_ok=True)
    written = []
    names_by_module = documented_names()
    for modname, names in names_by_module.items():
        module = importlib.import_module(modname)
        groups = {"classes": [], "functions": [], "data": []}
        for name in names:
            groups[_kind(getattr(module, name))].append(name)
        lines = [f".. _api-{modname}:", "", _underline(f":mod:`{modname}`", "="),
                 f".. py:module:: {modname}", "",
                 f".. include:: {modname}.docstring.inc", "",
                 f".. currentmodule:: {modname}", ""]
        titles = {"classes": "Classes", "functions": "Functions", "data": "Constants"}
        for kind, members in groups.items():
            if not members:
                continue
            lines += [_underline(titles[kind], "-"), ".. autosummary::", "   :toctree: .",
                      "   :nosignatures:", ""]
            lines += [f"   {name}" for name in members] + [""]
        _write_if_changed(os.path.join(folder, f"{modname}.rst"), "\n".join(lines))
        _write_if_changed(os.path.join(folder, f"{modname}.docstring.inc"),
                          module_docstring_rst(module))
        written.append(modname)
    index = [".. list-table::", "   :widths: 35 65", ""]
    for modname in written:
        index += [f"   * - :ref:`{modname} <api-{modname}>`", f"     - {SUMMARIES.get(modname, '')}"]
    index += ["", ".. toctree::", "   :hidden:", ""]
    index += [f"   {OUTPUT}/{modname}" for modname in written] + [""]
    _write_if_changed(os.path.join(folder, "api_index.inc"), "\n".join(index))
    _remove_stale_pages(folder, names_by_module)
    return written


def _remove_stale_pages(folder, names_by_module):
    """Delete pages of names no longer public (an orphan page fails a -W build)."""
    keep = set()
    for modname, names in names_by_module.items():
        keep.add(f"{modname}.rst")
        keep.update(f"{modname}.{name}.rst" for name in names)
    for fname in os.listdir(folder):
        if fname.endswith(".rst") and fname not in keep:
            os.remove(os.path.join(folder, fname))


def module_docstring_rst(module):
    """The module docstring, verbatim: its sections ("-" underlines) sit beside the groups."""
    return (inspect.getdoc(module) or "") + "\n"


def _write_if_changed(path, text):
    # Sphinx rebuilds a page whose source file is newer: leave unchanged files alone.
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
