"""`ddpm serve` in a real browser: Debian's Chromium, driven by Playwright (no browser download).

The page is loaded from a server in this process over a tiny run. Every request the page makes is
recorded: none may leave the server. Skipped only where Chromium or Playwright cannot be had
(`make test` installs both where it can: the chromium package, and playwright from the test extras).

DDPM_SCREENSHOT=docs/serve.png DDPM_SERVE_RUN=RUN pytest tests/test_serve_browser.py -k screenshot
takes the README's picture of the page mid-draw, of RUN.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from helpers import CHROMIUM, CHROMIUM_FLAGS, request, slowed, trained
from ddpm import Pipeline
from ddpm.serve.server import Server, load_models

playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extras: make test)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (make test installs it)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained(tmp_path_factory, "serve", "--max-steps", "4", "--data", "digits")


@pytest.fixture(scope="module")
def server(run):
    server = Server(load_models([os.environ.get("DDPM_SERVE_RUN", str(run))], "cpu"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    """The page, loaded, with every request it makes checked to go to the server alone."""
    page = browser.new_page(viewport={"width": 1100, "height": 900}, bypass_csp=True)  # CSP forbids the test's eval
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server.url)
    page.wait_for_selector("#sampler option", state="attached")
    yield page
    page.close()
    elsewhere = [url for url in requests if not url.startswith((server.url, "data:", "blob:"))]
    assert not elsewhere, f"the page asked for {elsewhere}"
    assert len(requests) >= 3 and not problems, problems


def png_at(server, url: str) -> np.ndarray:
    status, body = request(server, "GET", url)
    assert status == 200
    return np.asarray(Image.open(io.BytesIO(body)))


def test_a_draw_streams_its_steps_and_the_page_offers_the_pipelines_images(page, server, run):  # noqa: F811
    page.fill("#steps", "5")
    page.fill("#seed", "0")
    page.fill("#n", "4")
    page.click("#draw")
    page.wait_for_function("document.querySelectorAll('#results img').length === 4")
    assert page.inner_text("#frames") == "5" and "5 network evaluations" in page.inner_text("#wall")
    assert page.get_attribute("#xt", "src").startswith("data:image/png") and page.get_attribute("#x0", "src")
    links = [a.get_attribute("href") for a in page.query_selector_all("a.png-link")]
    expected = Pipeline.from_run(run, device="cpu")(4, steps=5, seed=0, progress=False)
    for k, link in enumerate(links):
        assert np.array_equal(png_at(server, link), expected[k, 0].numpy())
    assert page.get_attribute("#download-npz", "href").endswith(".npz")


def test_a_mask_painted_with_the_pointer_is_inpainted_and_the_rest_kept_exactly(page, server):
    page.click("nav button[data-tab=inpaint]")
    page.fill("#inpaint-index", "5")
    page.dispatch_event("#inpaint-index", "change")
    page.fill("#inpaint-steps", "10")
    box = page.query_selector("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    mask = np.array(page.evaluate("Array.from(mask)"), dtype=np.uint8).reshape(8, 8)
    assert 0 < (mask == 255).sum() < 64
    page.click("#inpaint-draw")
    page.wait_for_selector("#inpaint-png:not([hidden])")
    result = png_at(server, page.get_attribute("#inpaint-png", "href"))
    original = png_at(server, "/api/data?index=5")
    assert np.array_equal(result[mask == 0], original[mask == 0])


def test_stop_mid_draw_ends_the_computation_on_the_server(page, server):
    with slowed(server, 0.05):
        page.fill("#steps", "100")
        page.click("#draw")
        page.wait_for_function("+document.getElementById('frames').textContent >= 3")
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        page.wait_for_timeout(400)
        draws = server.draws.status()["draws"]
        last = draws[max(draws, key=lambda key: int(key[1:]))]
        page.wait_for_timeout(400)
        assert last["state"] == "cancelled" and last["steps_done"] < 100
        assert server.draws.status()["draws"] == draws and server.draws.status()["running"] is None


def test_the_forward_process_slider_noises_the_image(page):
    page.click("nav button[data-tab=forward]")
    page.fill("#forward-t", "80")
    page.dispatch_event("#forward-t", "input")
    page.wait_for_function("document.getElementById('forward-info').textContent.startsWith('t = 80')")
    assert "alpha_bar" in page.inner_text("#forward-info")


def test_screenshot_mid_draw(page, server, tmp_path):
    """The README's picture: a draw of 8 images caught between its steps."""
    with slowed(server, 0.1) as pipe:
        page.fill("#steps", str(min(50, pipe.diffusion.timesteps)))
        page.fill("#n", "8")
        page.click("#draw")
        page.wait_for_function("+document.getElementById('frames').textContent >= 12")
        out = os.environ.get("DDPM_SCREENSHOT") or str(tmp_path / "serve.png")
        page.screenshot(path=out, clip={"x": 0, "y": 0, "width": 1100, "height": 560})
        page.click("#stop")
        page.wait_for_function("document.getElementById('draw').disabled === false")
    assert Image.open(out).size[0] >= 1100 // 2


def test_the_pages_images_decode(page):
    page.fill("#steps", "2")
    page.click("#draw")
    page.wait_for_function("document.querySelectorAll('#results img').length >= 1")
    broken = page.evaluate("[...document.images].filter(i => i.src && !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0  # every image the page shows decoded
