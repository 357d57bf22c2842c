# fashion-attr: retraining pipeline for fashion attribute classification (HABP + MR-GAN + Deact).
# `make run` and `make test` do all the set-up on a fresh machine (Python 3.11 required).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNNER ?= subprocess
IMAGE ?= ghcr.io/fashion-attr/fashion-attr:0.1.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-all test-slow lint format run compile image bench clean

help: ## Show the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch/torchvision are pinned exactly in pyproject.toml (torch==2.14.1, torchvision==0.29.1).
	$(PY) -m pip install --quiet -e ".[test]"
	@command -v kubectl >/dev/null || echo "note: kubectl (>= 1.27, with kustomize v5) not found: the k8s render tests will skip"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its test extras

test: $(STAMP) ## Run the test suite (skips tests marked slow)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: $(STAMP) ## Run only the slow tests
	$(PY) -m pytest -m "slow" -q $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test, slow ones included
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint + format check), hadolint and checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/lint_infra.sh

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

run: $(STAMP) ## Run the whole pipeline locally on the embedded demo data (RUNNER=subprocess|docker)
	$(PY) -m pipelines.run_local --runner $(RUNNER)

compile: $(STAMP) ## Compile the KFP pipeline to build/fashion-attr-retraining.yaml
	$(PY) -m pipelines.retraining --output build/fashion-attr-retraining.yaml

image: ## Build and push the project image (needs a Docker engine; IMAGE=registry/name:tag)
	docker build -f docker/Dockerfile -t $(IMAGE) .
	docker push $(IMAGE)

bench: $(STAMP) ## Quick CPU benchmarks (see bench/README.md)
	$(PY) bench/throughput.py --preset tiny

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build .local_pipeline .pytest_cache .ruff_cache
