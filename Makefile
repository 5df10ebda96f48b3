# make test       install into .venv (first time), then unit tests + notebooks in quick mode
# make reproduce  install, then run every notebook in its default mode into results/
# make lab        JupyterLab on notebooks/
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# One CPU thread per process unless told otherwise: the digits-sized models gain nothing from more,
# and on a busy two-core machine spinning OpenMP threads cost several times the work.
export OMP_NUM_THREADS ?= 1

.PHONY: install test test-unit reproduce notebooks report lab clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Unit tests, then every notebook through papermill (tests/test_notebooks.py) and nbval.
test: $(STAMP)
	REPROLIB_QUICK=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env tests notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not notebooks"

reproduce: $(STAMP)
	$(BIN)/python -m reprolib reproduce

# Refresh the committed notebooks' outputs (default mode, executed in place).
notebooks: $(STAMP)
	$(BIN)/python -m reprolib reproduce --inplace

report: $(STAMP)
	$(BIN)/python -m reprolib report

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf results/*.ipynb results/claims.json results/REPORT.md .pytest_cache .hypothesis
