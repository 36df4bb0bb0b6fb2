# mtls-operator developer entry points. Everything builds what it needs: a fresh machine runs `make demo` or `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_LOCAL := .cache/cluster/kubeconfig
KIND ?= kind
KIND_CLUSTER := mtls-operator
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

# ---- kind (machines with Docker and kind) ----

kind-up: ## create the kind cluster (kind-config.yaml: the same Kubernetes release as the local control plane)
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "kind-up needs a running Docker engine"; exit 1; }
	@command -v $(KIND) >/dev/null || { echo "kind-up needs kind: go install sigs.k8s.io/kind@v0.33.0"; exit 1; }
	$(KIND) create cluster --config kind-config.yaml --kubeconfig $(KIND_KUBECONFIG) \
		$(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE))

kind-load: ## build the operator image and load it into the kind cluster
	docker build -t $(IMAGE) .
	$(KIND) load docker-image $(IMAGE) --name $(KIND_CLUSTER)

kind-install: bin ## helm install the chart into the kind cluster, using the loaded image
	$(HELM) --kubeconfig $(KIND_KUBECONFIG) upgrade --install mtls-operator charts/mtls-operator \
		--namespace mtls-operator --create-namespace --wait --timeout 3m \
		--set image.repository=mtls-operator --set image.tag=dev --set image.pullPolicy=Never \
		--set certificates.minDuration=10s

kind-e2e: venv ## the integration suite against kind with the operator in-cluster, plus workloads doing mTLS
	MTLS_KUBECONFIG=$(KIND_KUBECONFIG) MTLS_OPERATOR=in-cluster $(PY) -m pytest -m integration

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER) --kubeconfig $(KIND_KUBECONFIG)

clean: cluster-down
	rm -rf .cache $(VENV)
