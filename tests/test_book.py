"""The documentation site: built strictly, then every page opened in a real browser.

The build (`make docs`: MkDocs, markdown-exec, mkdocstrings) runs every chapter's code; a block that
raises, a number a chapter states that its code no longer gives (each is asserted beside it), a broken
internal link or image, or a public name without a docstring fails it. Then Debian's chromium opens
every page from a local server: every image loads, every formula is rendered by the site's own KaTeX
(no raw TeX left), the search finds a term, and no request goes anywhere but that server.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import CHROMIUM, CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parent.parent
KATEX = ROOT / "build" / "npm" / "node_modules" / "katex" / "dist" / "katex.min.js"

pytest.importorskip("mkdocs", reason="needs the docs extra (make test installs it)")
pytestmark = pytest.mark.skipif(not KATEX.is_file(), reason="needs KaTeX from npm (make test runs make katex)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                           cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr[-4000:]
    return site


def test_the_site_builds_strictly_with_every_chapter_and_reference_page(site):
    chapters = sorted(path.stem for path in (ROOT / "docs" / "book").glob("*.md"))
    assert len(chapters) >= 16
    for stem in chapters:
        assert (site / "book" / f"{stem}.html").is_file(), stem
    api = (site / "reference" / "api.html").read_text()
    import ddpm

    for name in ddpm.__all__:  # every public name is documented where it lives
        assert re.search(rf'id="ddpm\.[\w.]+\.{name}"', api), name
    cli = (site / "reference" / "cli.html").read_text()
    for command in ("train", "sample", "distill", "ema", "serve", "export"):
        assert f"ddpm {command}" in cli, command


def test_an_undocumented_public_name_stops_the_build(monkeypatch):
    """The hook's check, on a planted bug: a public name's docstring removed."""
    import griffe
    from mkdocs.exceptions import PluginError

    sys.path.insert(0, str(ROOT / "docs" / "tools"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs" / "tools"))
    loaded = griffe.load

    def without_a_docstring(*args, **kwargs):
        package = loaded(*args, **kwargs)
        package["diffusion.process.q_sample"].docstring = None
        return package

    monkeypatch.setattr(griffe, "load", without_a_docstring)
    with pytest.raises(PluginError, match="ddpm.diffusion.process.q_sample"):
        hooks.api_page()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(site):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium package (make test installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extras)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


# In the page: images not loaded, formulas KaTeX did not render, and raw TeX left in them.
CHECK = """() => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  const formulas = [...document.querySelectorAll('.arithmatex')];
  const unrendered = formulas.filter(f => !f.querySelector('.katex') || /\\\\[(\\[]/.test(f.innerText))
                             .map(f => f.innerText.slice(0, 60));
  const errors = [...document.querySelectorAll('.katex-error')].map(e => e.title);
  const pictures = [...document.images].filter(i => i.src.includes('/figures/')).length;
  return {broken, formulas: formulas.length, unrendered, errors, pictures,
          svgs: document.querySelectorAll('figure.book svg').length};
}"""


def test_every_page_renders_offline_in_a_browser(site, server, browser):
    from playwright.sync_api import TimeoutError as NotRendered

    pages = sorted(str(path.relative_to(site)) for path in site.rglob("*.html") if path.name != "404.html")
    assert len(pages) > 30
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests, problems = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    formulas = drawn = pictures = 0
    for name in pages:
        page.goto(f"{server}/{name}", wait_until="load")
        try:  # KaTeX renders after the page loads; CHECK below says which formulas it left
            page.wait_for_function("document.querySelectorAll('.arithmatex').length === 0 || "
                                   "document.querySelectorAll('.arithmatex .katex').length > 0", timeout=10_000)
        except NotRendered:
            pass
        found = page.evaluate(CHECK)
        assert not found["broken"], (name, found["broken"])
        assert not found["unrendered"] and not found["errors"], (name, found)
        formulas += found["formulas"]
        drawn += found["svgs"]
        pictures += found["pictures"]
    # the book's formulas, the figures its code draws as the page builds, and the pinned run's pictures
    assert formulas > 40 and drawn >= 10 and pictures >= 7, (formulas, drawn, pictures)
    assert not problems, problems
    outside = [url for url in requests if not url.startswith((server, "data:", "blob:"))]
    assert not outside, outside[:5]
    page.close()


def test_the_search_finds_a_term(site, server, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{server}/index.html", wait_until="load")
    page.locator("input.md-search__input").click()  # at this width the search box sits in the header
    page.keyboard.type("posterior")
    page.wait_for_selector(".md-search-result__item", timeout=20_000)
    titles = page.locator(".md-search-result__item").all_inner_texts()
    assert any("DDPM sampling" in title for title in titles), titles[:5]
    page.close()
