"""Sphinx configuration: `python -m sphinx -W -b html docs docs/_build/html` builds the site.

Everything the pages load is served from the build folder, so the site reads offline: MathJax comes
from the sphinx-mathjax-offline package, and the figures are drawn into the build folder's _static/
when the build starts (never into the source tree).
"""

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import figures  # noqa: E402

project = "naggs-lightning"
author = "naggs-lightning developers"
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
exclude_patterns = ["_build"]
html_theme = "furo"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
nitpicky = False


def _draw_figures(app) -> None:
    # Pages show them as _static/<name>.png (raw <img>: Sphinx's image directive would look for the
    # file in the source tree).
    figures.main(Path(app.outdir) / "_static")


def setup(app):
    app.connect("builder-inited", _draw_figures)
