# `make test` and `make demo` set everything up on a fresh machine: a .venv, then one pip call that installs the
# package with its test and demo extras together with torch==2.13.0 (the CPU build), pinned in the same call so that
# the resolver never reaches for the newest torch (a multi-GB CUDA build) to satisfy the project's `torch>=2.4`.
# The venv's bundled pip is recent enough; upgrading it first only costs time. The stamp reinstalls when
# pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[test,demo]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/run_demo.py

clean:
	rm -rf $(VENV) outputs build dist *.egg-info
