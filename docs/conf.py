"""Sphinx configuration of the advdetect documentation.

Build (offline, warnings are errors) with ``make docs``, which runs::

    ADVDETECT_EXAMPLE_QUICK=1 python -m sphinx -W --keep-going -E -b html docs docs/_build/html

(``make test`` builds them first, then runs the suite, whose
``tests/test_docs.py`` checks the built site.)

The gallery runs every ``examples/plot_*.py`` at its quick size
(``ADVDETECT_EXAMPLE_QUICK=1``, set below unless the environment sets it):
the pages show what the code does, not what a full-size run measures.
"""

import os
import sys

# One thread everywhere: the build machine has two cores shared with others.
# These must be set before torch (imported by advdetect and the examples) loads.
os.environ.setdefault("ADVDETECT_EXAMPLE_QUICK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples")
sys.path[:0] = [ROOT, os.path.join(HERE, "_ext"), os.path.join(HERE, "_scripts"), EXAMPLES]

import torch  # noqa: E402

torch.set_num_threads(1)

import advdetect  # noqa: E402
import apigen  # noqa: E402
import benchtables  # noqa: E402
import reconstruction_schematic  # noqa: E402

# -- Generated sources (before Sphinx reads anything) ----------------------
# API pages from the __all__ lists, the schematic figure, the benchmark tables.
apigen.write_pages(HERE)
GENERATED = os.path.join(HERE, "_generated")
os.makedirs(GENERATED, exist_ok=True)
reconstruction_schematic.draw(os.path.join(GENERATED, "reconstruction_schematic.png"))
benchtables.write(HERE, os.path.join(GENERATED, "benchmark_results.inc"))

# -- Project ---------------------------------------------------------------
project = "advdetect"
author = "the advdetect developers"
copyright = "the advdetect developers"
release = advdetect.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "mathml_math",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "_templates", "benchmarks", "**/*.inc", "Thumbs.db",
                    ".DS_Store"]
root_doc = "index"
default_role = "obj"
nitpicky = False

# -- API reference ---------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document the members advdetect defines, not those of sklearn, skorch or torch.

    Detector pages list the methods inherited from advdetect's own base class
    (``fit``, ``score_samples``, ``calibrate`` ...); scikit-learn's
    ``get_params`` and torch's ``nn.Module`` methods are documented by their
    projects, and their docstrings cross-reference pages that exist only there.
    """
    if skip or what != "class":
        return None
    target = obj.fget if isinstance(obj, property) else obj
    target = getattr(target, "__func__", target)
    module = getattr(target, "__module__", None)
    if module is not None and not module.startswith("advdetect"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)


# -- Gallery ---------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"plot_",
    "ignore_pattern": r"_common",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("advdetect",),
    "backreferences_dir": "gen_modules/backreferences",
    "download_all_examples": False,
    "remove_config_comments": True,
    "plot_gallery": True,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "min_reported_time": 1,
    # The execution-time pages load jQuery and DataTables from a CDN; the site is offline.
    "write_computation_times": False,
}

# -- HTML ------------------------------------------------------------------
html_theme = "alabaster"
html_theme_options = {
    "description": "Detectors of adversarial examples for image classifiers, "
                   "scikit-learn style.",
    "fixed_sidebar": False,
    "show_powered_by": False,
    "font_family": "sans-serif",
    "head_font_family": "sans-serif",
    "code_font_family": "monospace",
    "page_width": "1100px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path = []
html_math_renderer = "mathml"
html_show_sourcelink = False
html_title = f"advdetect {release}"
