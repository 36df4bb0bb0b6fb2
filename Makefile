# mtls-operator developer entry points. Everything builds what it needs: a fresh machine runs `make demo` or `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_LOCAL := .cache/cluster/kubeconfig
KIND_KUBECONFIG := .cache/kind/kubeconfig
IMAGE := mtls-operator:dev
HELM = $(shell hack/bin-dir.sh)/helm

.PHONY: help venv bin bin-dir cluster-up cluster-down demo test test-unit test-integration lint bench crds-sync clean \
	kind-up kind-load kind-install kind-e2e kind-down

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## the Python environment (.venv) with the operator and test tools

bin: ## build etcd, helm, promtool and the control plane (Kubernetes 1.37 and 1.35) from pinned Go modules (cached)
	hack/build-bins.sh

bin-dir: ## print where the built binaries are
	@hack/bin-dir.sh

cluster-up: venv bin ## start a local control plane that outlives the command; KUBECONFIG is .cache/cluster/kubeconfig
	$(PY) hack/cluster.py up --kubeconfig $(KUBECONFIG_LOCAL)

cluster-down: ## stop it
	$(PY) hack/cluster.py down

demo: venv ## the local demo: control plane, CRD, operator, identities, a real mTLS handshake, a renewal
	$(PY) hack/demo.py

test: venv bin lint ## lint; unit, chart and integration tests on Kubernetes 1.37 and 1.35; the kind e2e (operator as a pod)
	$(PY) -m pytest -m "not fault_timing"
	hack/kind-e2e-with-local-tests.sh

test-unit: venv ## unit tests only
	$(PY) -m pytest tests/unit

test-integration: venv bin ## integration tests only (MTLS_KUBE_VERSION=1.35 for the oldest supported minor)
	$(PY) -m pytest -m integration

lint: venv ## ruff
	$(VENV)/bin/ruff check operator hack tests bench

bench: venv bin ## the scale benchmark (numbers, not pass/fail)
	$(PY) bench/scale.py

crds-sync: ## copy crds/ into the Helm chart (one source of truth; a test fails when they drift)
	cp crds/*.yaml charts/mtls-operator/crds/

# ---- kind: a real kubelet. Images are built here when none can be pulled (hack/kind.sh, hack/operator-image.sh) ----

kind-up: ## create (or reuse) the kind cluster; builds an offline node image when kindest/node cannot be pulled
	hack/kind.sh up

kind-load: ## build the operator image (offline when needed) and load it into the kind cluster
	hack/operator-image.sh $(IMAGE)
	hack/kind.sh load $(IMAGE)

kind-install: bin ## helm install the chart into the kind cluster with the e2e values (hack/kind-values.yaml)
	$(HELM) --kubeconfig $(KIND_KUBECONFIG) upgrade --install mtls-operator charts/mtls-operator \
		--namespace mtls-operator --create-namespace --values hack/kind-values.yaml --wait --timeout 5m

kind-e2e: venv ## the whole kind e2e (up, image, helm install, in-cluster suite); leaves the cluster up
	KIND_KEEP=1 hack/kind-e2e.sh

kind-down: ## delete the kind cluster
	hack/kind.sh down

clean: cluster-down
	rm -rf .cache $(VENV)
