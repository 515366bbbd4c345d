# `make test` and `make demo` set everything up on a fresh machine: a .venv, then one pip call that installs the
# package with its test and demo extras together with torch==2.13.0 (the CPU build), pinned in the same call so that
# the resolver never reaches for the newest torch (a multi-GB CUDA build) to satisfy the project's `torch>=2.4`.
# The venv's bundled pip is recent enough; upgrading it first only costs time. The stamp reinstalls when
# pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make lint` and `make format` need only ruff (pinned: a new release may add rules or reformat), installed into the
# same venv without the package, so linting a fresh clone does not install torch.
RUFF_VERSION := 0.17.6
RUFF_STAMP := $(VENV)/.ruff-$(RUFF_VERSION)

.PHONY: test demo install lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[test,demo]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/run_demo.py

$(RUFF_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check ruff==$(RUFF_VERSION)
	touch $(RUFF_STAMP)

# Both checks always run (one report for lint findings and unformatted files); either failing fails the target.
lint: $(RUFF_STAMP)
	$(PY) -m ruff check . ; status=$$?; $(PY) -m ruff format --check . && exit $$status

format: $(RUFF_STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) outputs build dist *.egg-info
