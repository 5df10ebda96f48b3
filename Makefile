# make test       install into .venv (first time), then unit tests + notebooks in quick mode
# make reproduce  install, then run every notebook in its default mode into results/
# make lab        JupyterLab on notebooks/
# make chromium   Debian's chromium for the browser test (make test installs it when missing, as root)
# make bench      speed/memory benchmarks (ratios side by side) into results/bench.json
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# One CPU thread per process unless told otherwise: the digits-sized models gain nothing from more,
# and on a busy two-core machine spinning OpenMP threads cost several times the work.
export OMP_NUM_THREADS ?= 1

.PHONY: install test test-unit chromium reproduce notebooks report lab bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Unit tests, then every notebook through papermill (tests/test_notebooks.py) and nbval, and the
# notebook 05 slider in headless chromium (tests/test_browser.py).
test: $(STAMP) chromium
	REPROLIB_QUICK=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env tests notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not notebooks"

# The browser test drives Debian's chromium through Playwright (never a downloaded browser). As root
# (CI) it is installed when missing; otherwise the test is skipped, except in CI where it fails.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: apt-get install chromium (the browser test is skipped without it)"; fi; }

reproduce: $(STAMP)
	$(BIN)/python -m reprolib reproduce

# Refresh the committed notebooks' outputs (default mode, executed in place).
notebooks: $(STAMP)
	$(BIN)/python -m reprolib reproduce --inplace

report: $(STAMP)
	$(BIN)/python -m reprolib report

# Benchmarks, run by hand: ratios measured side by side; `reproduce` (~30 min) only when named.
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf results/*.ipynb results/claims.json results/REPORT.md results/html results/browser_*.png .pytest_cache .hypothesis
