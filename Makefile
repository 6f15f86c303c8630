# Loopline: `make demo` and `make test` each set up everything they need on a fresh machine.
# The virtualenv is (re)installed only when requirements.txt or pyproject.toml change: a stamp file
# named after their hash records the installed lock.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
LOCK_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
UV_VERSION := 0.13.9
# Wheels that live on this machine (the CPU build of torch): reuse pip's own find-links setting.
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
export UV_FIND_LINKS := $(FIND_LINKS)
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export LOOPLINE_HOME ?= $(CURDIR)/var
export AIRFLOW_HOME ?= $(LOOPLINE_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: setup demo test test-fast lint format airflow lock clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -r requirements.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

## demo: the closed loop through the three DAGs on the embedded default profile (everything under var/)
demo: setup
	PYTHONPATH=$(CURDIR)/plugins $(BIN)/python -m loopline_airflow.demo

## test: the whole test pyramid, slow tests included (what CI runs)
test: setup
	$(BIN)/python -m pytest -q

## test-fast: everything but the tests marked slow
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## airflow: Airflow standalone (UI on http://127.0.0.1:8080, no login) with the local profile
airflow: setup
	mkdir -p $(AIRFLOW_HOME)
	PATH="$(CURDIR)/$(BIN):$$PATH" \
	AIRFLOW__CORE__PARALLELISM=4 \
	AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True \
	AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=8080 \
	$(BIN)/airflow standalone

## lock: re-resolve requirements.txt from requirements.in (needs the package registry)
lock: setup
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11 \
		--no-header --annotation-style line

clean:
	rm -rf var .pytest_cache .ruff_cache .hypothesis dbt/target dbt/logs
