# The README's commands. Each installs what is missing first.
SHELL := /bin/bash
VENV_BIN := $(CURDIR)/.venv/bin
export PATH := $(VENV_BIN):$(PATH)

.PHONY: setup run quick test lint

setup:
	bash scripts/setup.sh

## make run: install everything, then run the whole default pipeline (dvc repro)
run: setup
	dvc repro

## make quick: install everything, then a ~5-minute smoke run of every stage in .quick/ (profiles/quick.yaml)
quick: setup
	bash scripts/quick.sh

## make test: install everything, then run the lint (make lint) and the test suite; its log ends with the 20
## slowest tests, where CI's 20-minute budget goes
test: lint
	python -m pytest -n 2 --dist loadgroup --durations=20

lint: setup
	ruff check .
	ruff format --check .
