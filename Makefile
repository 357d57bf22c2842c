# fashion-attr: retraining pipeline for fashion attribute classification (HABP + MR-GAN + Deact).
# `make run` and `make test` do all the set-up on a fresh machine (Python 3.11 required).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNNER ?= subprocess
# The project image, tagged locally; `make image PUSH=1 IMAGE=registry/name:tag` also pushes.
IMAGE ?= fashion-attr:0.1.0
# Empty: the Dockerfile's default base (python:3.11-slim-trixie). Behind an air gap, your mirror's
# copy; on a machine with no registry at all, the local test base of scripts/container-engine.sh.
BASE_IMAGE ?=
PUSH ?= 0
ENGINE := bash scripts/container-engine.sh
PYTEST_ARGS ?=
# Test files run on this many pytest-xdist workers (one file stays on one worker, so a
# module's MLflow server or trained model is built once); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# make serve / make predict: the champion of the local demo pipeline (make run).
MODEL ?= fashion-attr-demo
PORT ?= 5001
MLFLOW_DB ?= $(CURDIR)/.local_pipeline/mlflow.db

.DEFAULT_GOAL := help
.PHONY: help install test test-all test-slow test-containers lint format run compile image \
	serve predict mlflow-ui bench clean

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

test: $(STAMP) ## Run the test suite (not the slow or container tests)
	$(PY) -m pytest -m "not slow and not containers" -q $(XDIST) $(PYTEST_ARGS)

test-slow: $(STAMP) ## Run only the slow tests
	$(PY) -m pytest -m "slow and not containers" -q $(XDIST) $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test but the container ones
	$(PY) -m pytest -m "not containers" -q $(XDIST) $(PYTEST_ARGS)

test-containers: $(STAMP) ## Build the image here and run the DAG, a step and serving in containers
	bash scripts/test-containers.sh $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint + format check), hadolint and checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/lint_infra.sh

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

run: $(STAMP) ## Run the whole pipeline locally on the embedded demo data (RUNNER=subprocess|docker)
	$(PY) -m pipelines.run_local --runner $(RUNNER) --image $(IMAGE)

compile: $(STAMP) ## Compile the KFP pipeline to build/fashion-attr-retraining.yaml
	$(PY) -m pipelines.retraining --output build/fashion-attr-retraining.yaml

image: ## Build the project image with BuildKit (IMAGE=name:tag, BASE_IMAGE=..., PUSH=1 pushes)
	DOCKER_BUILDKIT=1 "$$($(ENGINE) docker)" build --network host -f docker/Dockerfile \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) .
	@if [ "$(PUSH)" = 1 ]; then "$$($(ENGINE) docker)" push $(IMAGE); \
	else echo "built $(IMAGE) (local only; PUSH=1 pushes it)"; fi

serve: $(STAMP) ## Serve the champion of `make run` (MODEL=..., PORT=5001) with MLflow
	@test -f $(MLFLOW_DB) || { echo "no $(MLFLOW_DB): run 'make run' first"; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI=sqlite:///$(MLFLOW_DB) \
		$(PY) -m mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local \
		--host 127.0.0.1 --port $(PORT)

predict: $(STAMP) ## Classify PHOTO=path.jpg [BBOX=x1,y1,x2,y2] with the server of `make serve`
	@test -n "$(PHOTO)" || { echo "usage: make predict PHOTO=path/to/photo.jpg [BBOX=x1,y1,x2,y2]"; exit 2; }
	$(PY) -m fashion_attr.registry.client "$(PHOTO)" $(if $(BBOX),--bbox $(BBOX)) \
		--url http://127.0.0.1:$(PORT)

mlflow-ui: $(STAMP) ## Browse the runs and models of `make run` (MLflow UI on port 5000)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m mlflow ui \
		--backend-store-uri sqlite:///$(MLFLOW_DB) --host 127.0.0.1 --port 5000

bench: $(STAMP) ## Quick CPU benchmarks (see bench/README.md)
	$(PY) bench/throughput.py --preset tiny

clean: ## Remove build outputs, local runs and their demo catalogs (keeps .venv)
	rm -rf build .local_pipeline .pytest_cache .ruff_cache
