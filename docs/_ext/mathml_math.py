"""Render ``.. math::`` and ``:math:`` as MathML, converted at build time.

Sphinx's default HTML math renderer, MathJax, loads a script from a CDN; this
site must work offline, and ``sphinx.ext.imgmath`` needs a LaTeX installation.
docutils ships a pure-Python LaTeX-to-MathML converter, and every current
browser renders MathML Core, so the pages carry their equations as markup and
load nothing.
"""

from docutils import nodes
from docutils.utils.math import latex2mathml
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)


def _convert(self, node, latex, block):
    try:
        return latex2mathml.tex2mathml(latex, as_block=block)
    except Exception as exc:  # a LaTeX construct docutils does not know
        logger.warning("cannot convert math to MathML (%s): %s", exc, latex,
                       location=node, type="mathml")
        return f'<code class="math">{self.encode(latex)}</code>'


def visit_math(self, node):
    self.body.append(self.starttag(node, "span", "", CLASS="math"))
    self.body.append(_convert(self, node, node.astext(), block=False))
    self.body.append("</span>")
    raise nodes.SkipNode


def visit_displaymath(self, node):
    self.body.append(self.starttag(node, "div", CLASS="math"))
    if node["number"]:
        number = get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, "Link to this equation")
        self.body.append("</span>")
    # Blank-line separated parts are separate equations, as in Sphinx's other renderers.
    parts = [p for p in node.astext().split("\n\n") if p.strip()]
    latex = parts[0] if len(parts) == 1 else (
        r"\begin{aligned}" + r" \\ ".join(p.replace("\n", " ") for p in parts)
        + r"\end{aligned}")
    self.body.append(_convert(self, node, latex, block=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
