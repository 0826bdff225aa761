# Every target installs what it needs on first use: a fresh clone only needs python3.11, node and npm.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
TEST_PREREQS := $(VENV_STAMP) $(NODE_STAMP)
PYTEST_ARGS ?=

.PHONY: test lint format bench clean

$(VENV_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .  # the `cosell` console script (.venv/bin/cosell)
	touch $@

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --silent
	touch $@

-include mk/*.mk

test: $(TEST_PREREQS)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache dist

# `make bench`: API calls and Table Storage operations per record, path by path, through the real app out of
# process (devtools/bench). BENCH_RECORDS (default 1000) flagged opportunities and as many referrals;
# CRM=dynamics (default) or CRM=salesforce; BENCH_ARGS passes other options (python -m devtools.bench --help).
# Writes bench.json; exits non-zero only when a record is missing or duplicated.
BENCH_RECORDS ?= 1000
BENCH_ARGS ?=
.PHONY: bench
bench: $(VENV_STAMP) $(NODE_STAMP)
	$(PY) -m devtools.bench --records $(BENCH_RECORDS) --crm $(or $(CRM),dynamics) $(BENCH_ARGS)
