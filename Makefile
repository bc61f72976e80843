# `make test` is the README's test command: it sets up .venv and runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint format venv clean bench reliability

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# Two workers (one per core on the CI machine): most tests wait on emulators and subprocesses,
# so the suite takes about half as long; each file stays on one worker (module fixtures).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# `make demo` is the README's first command: both emulators, the bridge, a scripted conversation.
demo: $(STAMP)
	$(PY) main.py demo

# The import contracts of docs/ARCHITECTURE.md are a test that parses imports (import-linter
# cannot take flat modules as roots): tests/test_architecture.py, run here and by `make test`.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (about 10 minutes; BENCH_SCALE=0.05 for a smoke run): bench/results.json + table.
BENCH_SCALE ?= 1
bench: $(STAMP)
	$(PY) -m bench.run_all --scale $(BENCH_SCALE)

# The full reliability suite (issue 9; tens of minutes): tests/reliability with its full-size
# variants, whose reduced variants already run in `make test`. Prints its figures and writes
# them to reliability-figures.json.
reliability: $(STAMP)
	RELIABILITY_FULL=1 RELIABILITY_FIGURES=reliability-figures.json $(PY) -m pytest tests/reliability

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
