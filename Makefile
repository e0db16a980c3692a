# Two commands do the whole set-up on a fresh machine with Python 3.11+:
#   make run   - virtual environment, install, sample data, the console running the pipeline at once
#                (headless: make run-headless)
#   make test  - virtual environment, install, the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-headless qtsw test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/qtsw sample --if-empty
	$(BIN)/qtsw --run-now

run-headless: $(STAMP)
	$(BIN)/qtsw sample --if-empty
	$(BIN)/qtsw --run-now --no-ui

# any qtsw command line: make qtsw ARGS="status --json"
qtsw: $(STAMP)
	$(BIN)/qtsw $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/translate.py
	$(BIN)/python bench/analyze.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/console.py
	$(BIN)/python bench/results.py
	$(BIN)/python bench/attach.py
	$(BIN)/python bench/stepback.py

clean:
	rm -rf $(VENV) data logs .pytest_cache
