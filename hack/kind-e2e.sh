#!/usr/bin/env bash
# The kind e2e, the way users run the operator: a kind cluster with a real kubelet (hack/kind.sh; a node image built
# here when none can be pulled), the operator image (hack/operator-image.sh), the chart installed with `helm --wait`,
# then the integration suite against that cluster with the operator in-cluster (tests marked `kind` run only here),
# `helm test` included. Prints how long each step took.
#
# Without a Docker engine it says plainly that it skipped — except in CI (CI=true), where that is a failure: the path
# users take must be the one CI proves. KIND_KEEP=1 leaves the cluster up afterwards (for `make kind-e2e` reruns).
#
# usage: hack/kind-e2e.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export KIND_CLUSTER="${KIND_CLUSTER:-mtls-operator}" KIND_KUBECONFIG="${KIND_KUBECONFIG:-$PWD/.cache/kind/kubeconfig}"
PY="${PY:-.venv/bin/python}"
bin="$(hack/bin-dir.sh)"
image="mtls-operator:dev"

if ! docker info >/dev/null 2>&1; then
	why="no running Docker engine (\`docker info\` failed)"
	if [[ "${CI:-}" == "true" ]]; then
		echo "kind e2e: FAILED before it started: $why. CI must prove the in-cluster path; .ci/run starts dockerd." >&2
		exit 1
	fi
	echo "============================================================================================"
	echo "kind e2e: SKIPPED — $why. The operator was NOT tested as a pod under a real kubelet."
	echo "Start Docker (or on Debian: apt-get install docker.io && dockerd &) and run: make kind-e2e"
	echo "============================================================================================"
	exit 0
fi

timings=()
step() { # step NAME COMMAND...: runs a step, remembers its duration
	local name="$1" start=$SECONDS
	shift
	echo "--- kind e2e: $name"
	"$@"
	timings+=("$(printf '%-28s %4d s' "$name" $((SECONDS - start)))")
}

report() {
	local rc=$?
	if [[ $rc -ne 0 && -f "$KIND_KUBECONFIG" ]]; then
		echo "--- kind e2e failed (exit $rc): the operator's pods and logs" >&2
		"$bin/kubectl" --kubeconfig "$KIND_KUBECONFIG" get pods -A -o wide >&2 || true
		"$bin/kubectl" --kubeconfig "$KIND_KUBECONFIG" -n mtls-operator describe pods >&2 || true
		"$bin/kubectl" --kubeconfig "$KIND_KUBECONFIG" -n mtls-operator logs -l app.kubernetes.io/name=mtls-operator \
			--tail=200 --prefix >&2 || true
	fi
	if [[ "${KIND_KEEP:-}" != "1" ]]; then
		hack/kind.sh down || true
	fi
	echo "--- kind e2e timings"
	printf '  %s\n' "${timings[@]}"
	if [[ -s .cache/kind-e2e-report.txt ]]; then
		echo "--- kind e2e results"
		sed 's/^/  /' .cache/kind-e2e-report.txt
	fi
	exit $rc
}
trap report EXIT

mkdir -p .cache
: >.cache/kind-e2e-report.txt
step "binaries" hack/build-bins.sh kind helm kube
if [[ "${CI:-}" == "true" ]]; then  # CI proves a fresh cluster, never one a developer left behind
	step "kind cluster (old one removed)" hack/kind.sh down
fi
step "kind cluster" hack/kind.sh up
step "operator image" hack/operator-image.sh "$image"
step "image into kind" hack/kind.sh load "$image"
step "helm install --wait" "$bin/helm" --kubeconfig "$KIND_KUBECONFIG" upgrade --install mtls-operator \
	charts/mtls-operator --namespace mtls-operator --create-namespace --values hack/kind-values.yaml \
	--wait --timeout 5m
step "integration suite in kind" env MTLS_KUBECONFIG="$KIND_KUBECONFIG" MTLS_OPERATOR=in-cluster MTLS_IMAGE="$image" \
	"$PY" -m pytest -m integration -p no:cacheprovider "$@"
