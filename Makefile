# The two commands a user needs: `make demo` and `make test` (both create .venv and install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FAST := -m "not slow and not cluster"
# A second environment holding torch, torchvision and triton at the lowest versions pyproject.toml allows.
LOWEST_VENV ?= .venv-lowest

.PHONY: install demo test test-lowest test-slow test-all lint format bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) launch/sweep.py --sweep configs/sweep/demo.yaml --cluster local --out runs --wait
	$(PY) launch/sweep.py collect runs/demo
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir runs/demo"

test: install
	$(PY) -m pytest $(FAST)

$(LOWEST_VENV)/.installed: pyproject.toml .ci/lowest_constraints.py
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) .ci/lowest_constraints.py > $(LOWEST_VENV)/constraints.txt
	$(LOWEST_VENV)/bin/python -m pip install --quiet -c $(LOWEST_VENV)/constraints.txt -e '.[dev]'
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	$(LOWEST_VENV)/bin/python -m pytest $(FAST)

test-slow: install
	$(PY) -m pytest -m "slow or cluster"

test-all: install
	$(PY) -m pytest -m ""

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) benchmarks/neurons.py --quick
