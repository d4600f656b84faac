# The two commands of the README. Both install what is missing first.
SHELL := /bin/bash
VENV_BIN := $(CURDIR)/.venv/bin
export PATH := $(VENV_BIN):$(PATH)

.PHONY: setup run test lint

setup:
	bash scripts/setup.sh

## make run: install everything, then run the whole default pipeline (dvc repro)
run: setup
	dvc repro

## make test: install everything, then run the lint and the test suite
test: setup
	ruff check .
	python -m pytest

lint: setup
	ruff check .
	ruff format --check .
