# The two quick-start commands: `make demo` (the demo study: MobileCLIP recipe vs plain CLIP vs a compressed
# student, then its report) and `make test`.
# Each creates .venv on first use and installs the exact tested versions from constraints.txt.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint format install clean

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(BIN)/ablate launch ablations/studies/demo.yaml
	HF_HUB_OFFLINE=1 $(BIN)/ablate report demo

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/pytest --numprocesses auto --maxprocesses 4 --dist loadfile

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs mlflow.db mlartifacts reports/demo reports/quickstart
