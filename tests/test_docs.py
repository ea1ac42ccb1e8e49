"""The documentation: every public name is documented, and the built site is whole.

* ``test_docstring_sections`` (fast, always runs): every name in
  ``advdetect.__all__`` and in the ``__all__`` of each public submodule that
  the API reference documents has a numpydoc docstring with a "Parameters"
  section (if it takes arguments) and an "Examples" section; a constant has a
  ``#:`` doc comment, which is what the API reference shows for it.
* ``TestBuiltSite`` (runs when ``docs/_build/html`` exists, i.e. after
  ``python -m sphinx -W --keep-going -b html docs docs/_build/html``): an API
  page exists for every public name, no relative link or image in the HTML
  points to a missing file or anchor, and no page loads a remote asset.
"""

import html.parser
import importlib
import importlib.util
import inspect
import pathlib
import re
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD = DOCS / "_build" / "html"


def _load_apigen():
    """The docs' own list of public modules (docs/_ext/apigen.py), so the two agree."""
    spec = importlib.util.spec_from_file_location("_advdetect_apigen",
                                                  DOCS / "_ext" / "apigen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


apigen = _load_apigen()

#: Names exempt from a section, for good: {"module.name": {section: reason}}.
EXCEPTIONS = {
    "advdetect.attacks.AttackResult": {
        "Parameters": "a result record that generate() builds, never the user; its "
                      "fields are documented under Attributes",
        "Examples": "generate()'s Examples show it in use; building one by hand is not "
                    "something to show",
    },
}

#: Sections missing today that should be written: each is an expected failure
#: (strict, so the entry must go once the section exists). Owners: the module's.
KNOWN_GAPS = {}

_SECTION = r"^[ \t]*{}[ \t]*\n[ \t]*-{{3,}}[ \t]*$"


def _has_section(doc, title):
    return re.search(_SECTION.format(title), doc, re.M) is not None


def _takes_arguments(obj):
    try:
        return len(inspect.signature(obj).parameters) > 0
    except (TypeError, ValueError):  # builtins without a signature
        return True


def _has_doc_comment(module, name):
    """``#:`` on the line(s) above ``name = ...`` or on the same line (autodoc's rule)."""
    lines = inspect.getsource(module).splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(name)}\s*(:[^=]*)?=", line):
            return "#:" in line or (i > 0 and lines[i - 1].lstrip().startswith("#:"))
    return False


def _public_names():
    out = []
    for modname in apigen.public_modules():
        module = importlib.import_module(modname)
        assert hasattr(module, "__all__"), f"{modname} has no __all__"
        for name in module.__all__:
            out.append((modname, name))
    return out


def _cases():
    cases = []
    for modname, name in _public_names():
        full = f"{modname}.{name}"
        marks = []
        if full in KNOWN_GAPS:
            marks.append(pytest.mark.xfail(
                strict=True, reason=f"missing {sorted(KNOWN_GAPS[full])} (KNOWN_GAPS)"))
        cases.append(pytest.param(modname, name, id=full, marks=marks))
    return cases


@pytest.mark.parametrize("modname, name", _cases())
def test_docstring_sections(modname, name):
    module = importlib.import_module(modname)
    obj = getattr(module, name)
    full = f"{modname}.{name}"
    exempt = EXCEPTIONS.get(full, {})
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        assert _has_doc_comment(module, name), (
            f"{full} is a constant: document it with a '#:' comment on the line above its "
            "assignment (the API reference shows that comment)")
        return
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{full} has no docstring"
    missing = []
    if _takes_arguments(obj) and "Parameters" not in exempt and \
            not _has_section(doc, "Parameters"):
        missing.append("Parameters")
    if "Examples" not in exempt and not _has_section(doc, "Examples"):
        missing.append("Examples")
    assert not missing, f"{full}: the docstring lacks numpydoc section(s) {missing}"
    if "Examples" not in exempt:
        examples = _section_text(doc, "Examples")
        assert ">>>" in examples, (
            f"{full}: the Examples section has no '>>>' prompt, so it is not run as a "
            "doctest (test_doctests_run_with_the_suite): write it as a doctest")


def _section_text(doc, title):
    """The body of a numpydoc section: up to the next underlined heading."""
    match = re.search(_SECTION.format(title), doc, re.M)
    body = doc[match.end():]
    following = re.search(r"^[ \t]*\S[^\n]*\n[ \t]*-{3,}[ \t]*$", body, re.M)
    return body[:following.start()] if following else body


def test_doctests_run_with_the_suite():
    """The Examples above run as doctests in ``make test``: pytest collects the
    package with ``--doctest-modules`` (setup.cfg), so a broken example fails CI."""
    import configparser
    import shlex

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    options = cfg["tool:pytest"]
    assert "--doctest-modules" in shlex.split(options.get("addopts", ""))
    assert "advdetect" in options.get("testpaths", "").split()


def test_exceptions_and_gaps_name_public_objects():
    """A stale entry (a renamed or removed name) must not linger in the lists."""
    public = {f"{m}.{n}" for m, n in _public_names()}
    assert set(EXCEPTIONS) <= public, set(EXCEPTIONS) - public
    assert set(KNOWN_GAPS) <= public, set(KNOWN_GAPS) - public


def test_toplevel_names_are_documented_under_advdetect():
    """Every name of ``advdetect.__all__`` gets its page as ``advdetect.<name>``."""
    import advdetect

    names = apigen.documented_names()
    assert names["advdetect"] == list(advdetect.__all__)


# --------------------------------------------------------------------------- #
# The built site
# --------------------------------------------------------------------------- #
class _Page(html.parser.HTMLParser):
    """Link targets and anchors of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links = []    # (tag, attribute, value)
        self.anchors = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key) and (key == "id" or tag == "a"):
                self.anchors.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) is not None and tag in ("a", "link", "img", "script", "source"):
                self.links.append((tag, key, attrs[key], attrs.get("rel")))


def _parse(path, cache):
    if path not in cache:
        page = _Page()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = page
    return cache[path]


def _is_external(url):
    parts = urllib.parse.urlsplit(url)
    return bool(parts.scheme or parts.netloc)


@pytest.mark.skipif(not BUILD.is_dir(),
                    reason="docs not built: run python -m sphinx -W --keep-going -b html docs "
                           "docs/_build/html")
class TestBuiltSite:
    def test_api_page_for_every_public_name(self):
        import advdetect

        missing = [name for name in advdetect.__all__
                   if not (BUILD / "gen_modules" / f"advdetect.{name}.html").is_file()]
        for modname, names in apigen.documented_names().items():
            if not (BUILD / "gen_modules" / f"{modname}.html").is_file():
                missing.append(modname)
            missing += [f"{modname}.{n}" for n in names
                        if not (BUILD / "gen_modules" / f"{modname}.{n}.html").is_file()]
        assert not missing, (f"no API page for {missing}: rebuild the docs (the build may "
                             "predate these names)")

    def test_user_guide_and_gallery_pages_exist(self):
        for page in ("index", "api", "user_guide/index", "user_guide/how_it_works",
                     "user_guide/cmag", "user_guide/dafar", "user_guide/own_model",
                     "user_guide/thresholds", "user_guide/benchmarks",
                     "auto_examples/index"):
            assert (BUILD / f"{page}.html").is_file(), page
        examples = sorted(p.stem for p in (ROOT / "examples").glob("plot_*.py"))
        built = {p.stem for p in (BUILD / "auto_examples").glob("plot_*.html")}
        assert set(examples) <= built, set(examples) - built

    def test_internal_links_resolve(self):
        cache = {}
        broken = []
        pages = sorted(BUILD.rglob("*.html"))
        assert pages
        for page in pages:
            for tag, attr, url, _ in _parse(page, cache).links:
                if not url or _is_external(url) or url.startswith(("mailto:", "data:",
                                                                  "javascript:")):
                    continue
                parts = urllib.parse.urlsplit(url)
                path = urllib.parse.unquote(parts.path)
                target = (page.parent / path).resolve() if path else page
                if target.is_dir():
                    target = target / "index.html"
                where = f"{page.relative_to(BUILD)}: <{tag} {attr}={url!r}>"
                if not target.is_file():
                    broken.append(f"{where} -> missing file")
                    continue
                if parts.fragment and target.suffix == ".html":
                    anchor = urllib.parse.unquote(parts.fragment)
                    if anchor not in _parse(target, cache).anchors:
                        broken.append(f"{where} -> no anchor #{anchor}")
        assert not broken, f"{len(broken)} broken internal link(s):\n" + "\n".join(broken[:30])

    def test_no_remote_assets(self):
        """The site works offline: no script, stylesheet or image from the network."""
        cache = {}
        remote = []
        for page in sorted(BUILD.rglob("*.html")):
            for tag, attr, url, rel in _parse(page, cache).links:
                if tag == "a" or not _is_external(url):
                    continue
                remote.append(f"{page.relative_to(BUILD)}: <{tag} {attr}={url!r}>")
        assert not remote, "\n".join(remote[:30])
