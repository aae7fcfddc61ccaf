# Two entry points for a fresh machine (see README):  make run   and   make test
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run demo test test-fast lint format typecheck browser proto clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Run the system: the local stack on the embedded defaults with the embedded mini models.
run: setup
	$(VENV)/bin/vplab up --demo

# The demo without services: miniworld data, visual prompting with the embedded mini models.
demo: setup
	$(VENV)/bin/vplab demo-data .vplab/demo
	$(VENV)/bin/vplab visual-prompt --demo --ref .vplab/demo/images/img_000.png --ref-mask .vplab/demo/masks/img_000.png --targets .vplab/demo/images --out .vplab/demo/pred

# The whole test suite, as CI runs it: lint and type checks first, then pytest.
test: lint typecheck browser
	CHROMIUM=$(CHROMIUM) FIREFOX=$(FIREFOX) $(PY) -m pytest

# The web app's tests drive Debian's chromium through Playwright (never `playwright install`:
# it downloads) and Debian's firefox-esr over WebDriver BiDi (tests/_firefox.py says why not
# Playwright's Firefox). Installed with apt when missing and we are root (CI); otherwise say how.
CHROMIUM ?= /usr/lib/chromium/chromium
FIREFOX ?= /usr/bin/firefox-esr
BROWSER_PACKAGES = $(if $(wildcard $(CHROMIUM)),,chromium) $(if $(wildcard $(FIREFOX)),,firefox-esr)
browser:
	@test -z "$(strip $(BROWSER_PACKAGES))" || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) \
	    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES); }; \
	  else \
	    echo "The browser tests need Debian's chromium at $(CHROMIUM) and firefox-esr at $(FIREFOX): run"; \
	    echo "  sudo apt-get install --no-install-recommends$(BROWSER_PACKAGES)"; \
	    echo "(or set CHROMIUM=/path/to/chromium FIREFOX=/path/to/firefox)."; exit 1; \
	  fi; }

# ruff: lint and formatting (check only; `make format` rewrites).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# mypy: strict for storage, tenancy, errors and the wire modules; gradual elsewhere.
typecheck: setup
	$(VENV)/bin/mypy

test-fast: setup
	$(PY) -m pytest -m "not slow and not integration"

# Regenerate the gRPC stubs in libs/vplab/rpc from proto/.
proto: setup
	$(PY) -m vplab.rpc.generate

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
