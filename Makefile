# make run: set up .venv and train the default experiment.  make test: set up .venv and run the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# The pinned pair installs from local disk on the team's machines and from PyPI elsewhere; override to taste.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test test-fast lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/archlab fit -c configs/resnet_digits.yaml

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	WANDB_MODE=offline $(PY) -m pytest

# The suite without the tests marked slow (real kills, DDP, malicious inputs, dashboards, benchmarks).
test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	WANDB_MODE=offline $(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
