# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install ddpm, train on the embedded MNIST-5k, sample, write a grid and an FID
#               (make demo-color: the same on the color emoji of Debian's Noto Color Emoji font)
#   make test   create .venv with the test extras and run the test suite
#   make docs   the documentation site (the book, guides, API and command reference) in build/site, offline
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip --disable-pip-version-check -q
DEMO_RUN     ?= runs/demo
DEMO_MINUTES ?= 6.5
DEMO_DATA    ?= mnist5k
# FID on 2 CPU cores runs at ~7 images/s: the demo measures a small, quick FID (biased upward;
# benchmarks/ holds the 1,000-sample measure).
DEMO_FID_N   ?= 250
DEMO_FID_REF ?= 500

.PHONY: demo demo-color serve test test-slow install clean chromium emoji gpu-check docs docs-figures docs-serve katex

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per extra, redone when the dependencies change.
$(VENV)/.installed-%: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e '.[$*]'
	touch $@

$(VENV)/.installed-base: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e .
	touch $@

install: $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	rm -rf $(DEMO_RUN)
	$(BIN)/ddpm train --out $(DEMO_RUN) --data $(DEMO_DATA) --max-minutes $(DEMO_MINUTES)
	$(BIN)/ddpm sample --run $(DEMO_RUN) --n 64 --grid $(DEMO_RUN)/grid.png
	$(BIN)/ddpm eval --run $(DEMO_RUN) --n $(DEMO_FID_N) --ref-n $(DEMO_FID_REF) --json $(DEMO_RUN)/fid.json
	$(BIN)/ddpm show trajectory --run $(DEMO_RUN)
	$(BIN)/ddpm show progression --run $(DEMO_RUN)
	$(BIN)/ddpm report --run $(DEMO_RUN)
	@echo "demo: samples in $(DEMO_RUN)/grid.png, FID in $(DEMO_RUN)/fid.json, everything on one page in $(DEMO_RUN)/report.html"
	@echo "      for color: make demo-color (runs/demo-color)"

# The demo in color: the emoji data set, with the defaults for color data.
demo-color: emoji
	$(MAKE) demo DEMO_DATA=emoji DEMO_RUN=runs/demo-color

# The demo run's page (after make demo): watch it draw, steer it, inpaint by drawing; Ctrl-C stops.
SERVE_PORT ?= 8000
serve: $(VENV)/.installed-base
	$(BIN)/ddpm serve --run $(DEMO_RUN) --port $(SERVE_PORT)

# One pytest worker per core, each on one thread (tests/conftest.py): most tests are small tensors
# and process starts, which leave a core idle in one process (docs/tests.md has the measure).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: $(VENV)/.installed-test chromium emoji katex
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# The site: MkDocs with Material, mkdocstrings and markdown-exec (the docs extra); the chapters' code
# runs as it builds, and a failing block, a broken link or an undocumented public name stops it.
# KaTeX comes from npm into build/npm, once, and is served from the site itself.
KATEX_VERSION ?= 0.16.22
KATEX = build/npm/node_modules/katex/dist/katex.min.js
$(KATEX):
	@command -v npm >/dev/null 2>&1 || $(call APT,npm) || true
	@command -v npm >/dev/null 2>&1 && npm install --prefix build/npm --no-audit --no-fund --silent katex@$(KATEX_VERSION) || \
	  echo "npm is not available: KaTeX is missing, so make docs cannot build and the book's test is skipped"
katex: $(KATEX)

docs: $(VENV)/.installed-docs katex
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs: open build/site/index.html, or make docs-serve"

# The book's pictures of a trained model: two small pinned runs (about ten minutes on two CPU cores).
docs-figures: $(VENV)/.installed-base
	$(BIN)/python docs/tools/figures.py

DOCS_PORT ?= 8001
docs-serve: docs
	$(BIN)/python -m http.server $(DOCS_PORT) --bind 127.0.0.1 --directory build/site

# Debian packages, installed when this machine allows it (root with apt-get); without them the
# tests that need them are skipped. The report's browser test opens it in headless chromium; the
# emoji data set renders Noto Color Emoji from Unicode's list (unicode-data).
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
APT = { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
        { $(APT_INSTALL) $(1) >/dev/null || { apt-get update -q >/dev/null && $(APT_INSTALL) $(1) >/dev/null; }; }; }
chromium:
	@command -v chromium >/dev/null 2>&1 || $(call APT,chromium fonts-dejavu-core) || \
	  echo "chromium is not installed: the browser test will be skipped"
emoji:
	@{ [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && [ -f /usr/share/unicode/emoji/emoji-test.txt ]; } || \
	  $(call APT,fonts-noto-color-emoji unicode-data) || \
	  echo "fonts-noto-color-emoji or unicode-data is not installed: --data emoji and its tests are unavailable"

# On a machine with a CUDA GPU: every CUDA path in one command, under 8 minutes (benchmarks/gpu_check.py).
gpu-check: $(VENV)/.installed-base
	$(BIN)/python benchmarks/gpu_check.py --out gpu_check.json

test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) src/*.egg-info .pytest_cache
