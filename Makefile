# loraops: `make demo` (the whole lifecycle against a local AWS emulator), `make test`, `make synth` (templates for
# every environment), `make lint`, `make deploy ENV=<env>`, `make destroy ENV=<env>`.
# Each target installs what it needs first; a second run with nothing changed installs nothing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := .make
CDK    := node_modules/.bin/cdk
ENV    ?=
CDK_FLAGS := --no-notices $(if $(ENV),-c env=$(ENV))

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export AWS_EC2_METADATA_DISABLED := true
export CDK_DISABLE_VERSION_CHECK := true

.PHONY: install demo synth test lint deploy destroy rehearse clean

install: $(STAMP)/dev $(STAMP)/node

## What synth needs: the CDK app's requirements (requirements.txt) and the pinned CDK CLI.
$(STAMP)/cdk: requirements.txt
	@mkdir -p $(STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	@touch $@

## What the tests need on top: the trainer's stack, test tools, and the loraops distribution itself (editable).
$(STAMP)/dev: $(STAMP)/cdk requirements-dev.txt requirements-cli.txt training_container/requirements.txt pyproject.toml
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -e .
	@touch $@

$(STAMP)/node: package.json package-lock.json
	@mkdir -p $(STAMP)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(STAMP)/lint: requirements-lint.txt
	@mkdir -p $(STAMP)
	test -x .venv-lint/bin/python || $(PYTHON) -m venv .venv-lint
	.venv-lint/bin/python -m pip install -q --disable-pip-version-check -r requirements-lint.txt
	@touch $@

## Synthesize every environment (or ENV=dev for one) into cdk.out; fails on any cdk-nag finding.
synth: $(STAMP)/cdk $(STAMP)/node
	$(CDK) synth -q $(CDK_FLAGS)
	@echo "templates:"; ls cdk.out/*.template.json

## ruff over the code; cfn-lint, checkov and the IAM lint (parliament) over the templates; every skip reasoned.
lint: synth $(STAMP)/dev $(STAMP)/lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/cfn-lint cdk.out/*.template.json
	.venv-lint/bin/checkov --config-file .checkov.yaml -d cdk.out
	$(PY) -m pytest -q -p no:cacheprovider tests/infra/test_iam_lint.py   # parliament over every identity policy

test: install
	$(PY) -m pytest

## The main job: import, fine-tune both ways, register, approve, serve, report; no AWS account (moto's server).
demo: install
	$(PY) -m demo $(DEMO_ARGS)

## Preflight (Docker, credentials, CDK bootstrap), DLC registry login, then `cdk deploy` of one environment's
## stacks in dependency order (serving only once `loraops serve pin` has named its model). Logic: infra/deploy.py.
deploy: $(STAMP)/cdk $(STAMP)/node
	@test -n "$(ENV)" || { echo "make deploy: name the environment, e.g. make deploy ENV=dev"; exit 2; }
	$(PY) -m infra.deploy --env $(ENV) $(CDK_ARGS)

## Rehearse a deploy without an account: every stack of ENV (default dev) created in moto's CloudFormation;
## REHEARSE_ARGS="--json rehearsal.json" writes the report.
rehearse: $(STAMP)/dev
	$(PY) -m infra.rehearsal --env $(or $(ENV),dev) $(REHEARSE_ARGS)

## What deploy-on-approval made outside CloudFormation first, then `cdk destroy` stack by stack in reverse order.
destroy: $(STAMP)/cdk $(STAMP)/node
	@test -n "$(ENV)" || { echo "make destroy: name the environment, e.g. make destroy ENV=dev"; exit 2; }
	$(PY) -m infra.deploy --env $(ENV) --destroy $(CDK_ARGS)

clean:
	rm -rf cdk.out $(STAMP) .pytest_cache .demo .build
