"""The documentation site: builds with warnings as errors, reads offline, shows no raw markup.

One build (module fixture) serves every check, since a build takes several seconds.
"""

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="docs extra not installed")
pytest.importorskip("myst_parser", reason="docs extra not installed")

DOCS = Path(__file__).resolve().parents[1] / "docs"
# reStructuredText that failed to parse shows up as its source text: a role, or a double backquote
RAW_MARKUP = re.compile(r":(?:func|class|meth|mod|attr|math|data|obj|ref|doc):`|``")
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def _source_files() -> set[Path]:
    return {p for p in DOCS.rglob("*") if p.is_file() and "_build" not in p.parts and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    before = _source_files()
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert _source_files() == before, "the build wrote into the docs source tree"
    return out


class _Page(HTMLParser):
    """What a reader's browser would fetch (script/img/link/iframe sources) and the visible text
    outside code, where markup that failed to render would show."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []
        self.text: list[str] = []
        self._code_depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe") and attrs.get("src"):
            self.fetched.append(attrs["src"])
        if tag == "link" and attrs.get("rel") in ("stylesheet", "preload", "modulepreload") and attrs.get("href"):
            self.fetched.append(attrs["href"])
        if tag in ("pre", "code", "script", "style"):
            self._code_depth += 1

    def handle_endtag(self, tag):
        if tag in ("pre", "code", "script", "style"):
            self._code_depth -= 1

    def handle_data(self, data):
        if self._code_depth == 0:
            self.text.append(data)


def _pages(site: Path) -> dict[str, _Page]:
    pages = {}
    for path in sorted(site.glob("*.html")):
        page = _Page()
        page.feed(path.read_text())
        pages[path.name] = page
    return pages


@pytest.mark.slow
def test_every_page_loads_only_local_files_and_they_exist(site):
    pages = _pages(site)
    assert "theory.html" in pages and "api.html" in pages
    for name, page in pages.items():
        for url in page.fetched:
            assert not REMOTE.match(url), f"{name} loads {url} from the network"
            assert (site / url.split("?")[0]).is_file(), f"{name} loads {url}, missing from the build"


@pytest.mark.slow
def test_math_is_rendered_by_the_local_mathjax(site):
    theory = _pages(site)["theory.html"]
    mathjax = [url for url in theory.fetched if "mathjax" in url.lower()]
    assert mathjax and all((site / url).is_file() for url in mathjax)
    # MathJax finds its fonts relative to its own script: they must have been copied next to it
    assert list((site / "_static" / "mathjax").rglob("*.woff"))


@pytest.mark.slow
def test_no_page_shows_unrendered_markup(site):
    for name, page in _pages(site).items():
        text = "".join(page.text)
        bad = [text[max(0, m.start() - 60) : m.end() + 30] for m in RAW_MARKUP.finditer(text)]
        assert not bad, f"{name} shows raw markup: {bad}"


@pytest.mark.slow
@pytest.mark.parametrize("page,figure", [("theory", "spectral_radius.png"), ("monitor", "edge_of_stability.png")])
def test_figures_are_drawn_into_the_build_folder(site, page, figure):
    assert f"_static/{figure}" in _pages(site)[f"{page}.html"].fetched
    assert (site / "_static" / figure).stat().st_size > 10_000
