# loraops: `make synth` (main job: templates for every environment) and `make test`.
# Each target installs what it needs first; a second run with nothing changed installs nothing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := .make
CDK    := node_modules/.bin/cdk
ENV    ?=
CDK_FLAGS := --no-notices $(if $(ENV),-c env=$(ENV))

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export AWS_EC2_METADATA_DISABLED := true
export CDK_DISABLE_VERSION_CHECK := true

.PHONY: install synth test lint clean

install: $(STAMP)/python $(STAMP)/node

$(STAMP)/python: requirements.txt requirements-dev.txt training_container/requirements.txt pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	# the loraops distribution itself (the `loraops` and `loraops-train` commands), editable
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

$(STAMP)/node: package.json package-lock.json
	@mkdir -p $(STAMP)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## Synthesize every environment (or ENV=dev for one) into cdk.out; fails on any cdk-nag finding.
synth: install
	$(CDK) synth -q $(CDK_FLAGS)
	@echo "templates:"; ls cdk.out/*.template.json

## ruff (lint + format check) over the Python code, cfn-lint over the synthesized templates.
lint: synth
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/cfn-lint cdk.out/*.template.json

test: install
	$(PY) -m pytest

clean:
	rm -rf cdk.out $(STAMP) .pytest_cache
