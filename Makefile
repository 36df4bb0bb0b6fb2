# mtls-operator developer entry points. Everything builds what it needs: a fresh machine runs `make demo` or `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_LOCAL := .cache/cluster/kubeconfig

.PHONY: help venv bin bin-dir cluster-up cluster-down demo test test-unit test-integration lint bench crds-sync clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## the Python environment (.venv) with the operator and test tools

bin: ## build etcd, kube-apiserver, kube-controller-manager, kubectl and helm from pinned Go modules (cached)
	hack/build-bins.sh

bin-dir: ## print where the built binaries are
	@hack/bin-dir.sh

cluster-up: venv bin ## start a local control plane that outlives the command; KUBECONFIG is .cache/cluster/kubeconfig
	$(PY) hack/cluster.py up --kubeconfig $(KUBECONFIG_LOCAL)

cluster-down: ## stop it
	$(PY) hack/cluster.py down

demo: venv ## the local demo: control plane, CRD, operator, identities, a real mTLS handshake, a renewal
	$(PY) hack/demo.py

test: venv bin lint ## lint, unit and integration tests against a real control plane (set MTLS_KUBECONFIG to use another)
	$(PY) -m pytest

test-unit: venv ## unit tests only
	$(PY) -m pytest tests/unit

test-integration: venv bin ## integration tests only
	$(PY) -m pytest -m integration

lint: venv ## ruff
	$(VENV)/bin/ruff check operator hack tests bench

bench: venv bin ## the scale benchmark (numbers, not pass/fail)
	$(PY) bench/scale.py

crds-sync: ## copy crds/ into the Helm chart (one source of truth; a test fails when they drift)
	cp crds/*.yaml charts/mtls-operator/crds/

clean: cluster-down
	rm -rf .cache $(VENV)
