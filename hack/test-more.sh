#!/usr/bin/env bash
# The rest of `make test` after the main pytest run: the integration suite on the oldest supported minor (1.35) and
# the kind e2e, side by side. Both spend most of their time waiting (certificate lifetimes, rotation phases, the
# kubelet's Secret sync), so running them together keeps CI within its budget; each has its own cluster and ports.
# The 1.35 run's output is printed when it ends; the script fails if either part failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY="${PY:-.venv/bin/python}"
mkdir -p .cache
log=.cache/test-1.35.log

start=$SECONDS
MTLS_KUBE_VERSION=1.35 "$PY" -m pytest -m integration -p no:cacheprovider >"$log" 2>&1 &
minor=$!
echo "--- integration suite on Kubernetes 1.35: running in the background (log: $log)"

hack/kind-e2e.sh
kind_rc=$?

wait "$minor"
minor_rc=$?
echo "--- integration suite on Kubernetes 1.35 (exit $minor_rc, $((SECONDS - start)) s for both parts):"
cat "$log"
if [[ $kind_rc -ne 0 || $minor_rc -ne 0 ]]; then
	echo "FAILED: kind e2e exit $kind_rc, integration suite on 1.35 exit $minor_rc" >&2
	exit 1
fi
