# fashion-attr: retraining pipeline for fashion attribute classification (HABP + MR-GAN + Deact).
# `make run` and `make test` do all the set-up on a fresh machine (Python 3.11 required).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNNER ?= subprocess
# The one version source: fashion_attr.__version__ (the image tag and the code version).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' components/fashion_attr/__init__.py)
# The project image, tagged locally; `make image PUSH=1 IMAGE=registry/name:tag` also pushes
# and records the pushed digest in build/image.json, which `make compile` uses.
IMAGE ?= fashion-attr:$(VERSION)
# Empty: the Dockerfile's default base (python:3.11-slim-trixie). Behind an air gap, your mirror's
# copy; on a machine with no registry at all, the local test base of scripts/container-engine.sh.
BASE_IMAGE ?=
PUSH ?= 0
ENGINE := bash scripts/container-engine.sh
PYTEST_ARGS ?=
# make compile TARGET=cluster refuses an image that is not pinned by digest.
TARGET ?= local
# make run: the pipeline's own inputs (empty: run_local's defaults; see its --help).
SOURCE ?=
BATCH ?=
BASE ?=
SEED ?=
PRESET ?=
WORKDIR ?=
IMAGES ?=
GAN_OVERRIDES ?=
CLASSIFIER_OVERRIDES ?=
RUN_ARGS = $(if $(SOURCE),--source "$(SOURCE)") $(if $(BATCH),--batch "$(BATCH)") \
	$(if $(BASE),--base "$(BASE)") $(if $(SEED),--seed $(SEED)) $(if $(PRESET),--preset $(PRESET)) \
	$(if $(WORKDIR),--workdir "$(WORKDIR)") $(if $(IMAGES),--images $(IMAGES)) \
	$(if $(GAN_OVERRIDES),--gan-overrides "$(GAN_OVERRIDES)") \
	$(if $(CLASSIFIER_OVERRIDES),--classifier-overrides "$(CLASSIFIER_OVERRIDES)")
# Every variable a target reads; one given on the command line that is not here is a typo
# (make would ignore it and, say, start a full run): refuse it.
KNOWN_VARS := PYTHON VENV RUNNER IMAGE BASE_IMAGE PUSH PYTEST_ARGS TEST_WORKERS MODEL PORT \
	MLFLOW_DB TARGET SOURCE BATCH BASE SEED PRESET WORKDIR IMAGES GAN_OVERRIDES \
	CLASSIFIER_OVERRIDES PHOTO BBOX CI
GIVEN_VARS := $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v)))
UNKNOWN_VARS := $(filter-out $(KNOWN_VARS),$(GIVEN_VARS))
ifneq ($(UNKNOWN_VARS),)
$(error unknown variable(s) $(UNKNOWN_VARS). Known: $(KNOWN_VARS); `make help` lists the targets and `.venv/bin/python -m pipelines.run_local --help` the run options)
endif
# Test files run on this many pytest-xdist workers (one file stays on one worker, so a
# module's MLflow server or trained model is built once); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# make serve / make predict: the champion of the local demo pipeline (make run).
MODEL ?= fashion-attr-demo
PORT ?= 5001
MLFLOW_DB ?= $(CURDIR)/.local_pipeline/mlflow.db

.DEFAULT_GOAL := help
.PHONY: help install test test-all test-slow test-containers lint typecheck format run compile image \
	serve serve-image predict mlflow-ui bench clean

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

run: $(STAMP) ## Run the pipeline locally (SOURCE= BATCH= BASE= SEED= PRESET= WORKDIR= ..., RUNNER=docker)
	$(PY) -m pipelines.run_local --runner $(RUNNER) --image $(IMAGE) $(RUN_ARGS)

compile: $(STAMP) ## Compile the pipeline to build/fashion-attr-retraining.yaml (TARGET=cluster)
	$(PY) -m pipelines.retraining --output build/fashion-attr-retraining.yaml --target $(TARGET)

image: ## Build the image (IMAGE=name:tag, BASE_IMAGE=..., PUSH=1 pushes and records the digest)
	DOCKER_BUILDKIT=1 "$$($(ENGINE) docker)" build --network host -f docker/Dockerfile \
		--build-arg VERSION=$(VERSION) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) .
	@mkdir -p build; docker="$$($(ENGINE) docker)"; pinned=""; \
	if [ "$(PUSH)" = 1 ]; then "$$docker" push $(IMAGE) && \
		pinned=$$("$$docker" inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $(IMAGE) \
			| grep -m1 "^$$(echo '$(IMAGE)' | sed 's/:[^:/]*$$//')@"); fi; \
	id=$$("$$docker" inspect --format '{{.Id}}' $(IMAGE)); \
	printf '{"image": "%s", "id": "%s", "pinned": "%s"}\n' '$(IMAGE)' "$$id" "$$pinned" > build/image.json; \
	if [ -n "$$pinned" ]; then echo "pushed $$pinned (build/image.json; make compile TARGET=cluster uses it)"; \
	else echo "built $(IMAGE) (local only, recorded in build/image.json; PUSH=1 pushes it and records its digest)"; fi

serve: $(STAMP) ## Serve the champion of `make run` (MODEL=..., PORT=5001) with MLflow
	@test -f $(MLFLOW_DB) || { echo "no $(MLFLOW_DB): run 'make run' first"; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI=sqlite:///$(MLFLOW_DB) \
		MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false GIT_PYTHON_REFRESH=quiet \
		$(PY) -m mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local \
		--host 127.0.0.1 --port $(PORT)

serve-image: ## Serve the champion of `make run` from the project image (IMAGE=, MODEL=, PORT=)
	@test -f $(MLFLOW_DB) || { echo "no $(MLFLOW_DB): run 'make run' first"; exit 2; }
	@# The work folder is mounted at its own path: the store records absolute artifact paths.
	"$$($(ENGINE) docker)" run --rm --name fa-serve-$(PORT) --network host \
		--user "$$(id -u):$$(id -g)" -e MLFLOW_TRACKING_URI=sqlite:///$(MLFLOW_DB) -e HOME=/tmp \
		--mount type=bind,source=$(dir $(MLFLOW_DB)),target=$(dir $(MLFLOW_DB)) \
		$(IMAGE) mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local \
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

typecheck: $(STAMP) ## mypy, strict (see pyproject.toml)
	$(VENV)/bin/mypy
