#!/usr/bin/env bash
# The last part of `make test`, overlapped: the kind e2e (hack/kind-e2e.sh) and, beside its final wait, the local
# tests that fit there — the integration suite on the oldest supported minor, Kubernetes 1.35, then the `fault_timing`
# tests on 1.37 (kills, outages, stalls of the operator; `make test` runs the rest of the 1.37 suite before this).
#
# Why overlapped: the kind session ends with minutes of waiting on clocks — a pod certificate cannot be refreshed
# before it is 10 minutes old (the API's floor, less the signer's backdate), and the rotation's phases are sized for the
# kubelet's Secret sync — while the machine sits idle. The kind session says when that wait begins by creating
# $MTLS_E2E_WAITING_FILE (tests/kit.py, only_waiting_from_here); the local tests start then, one suite after the
# other. If the kind e2e ends first, or is skipped (no Docker engine), they run after it. Their output is kept in logs
# and printed whole when they end, so it does not interleave with the kind session's.
#
# Exit status: 0 only when all passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
mkdir -p .cache
waiting="$PWD/.cache/kind-e2e-waiting"
rm -f "$waiting"

MTLS_E2E_WAITING_FILE="$waiting" hack/kind-e2e.sh &
kind_pid=$!
trap 'kill "$kind_pid" 2>/dev/null; wait "$kind_pid"; exit 130' INT TERM

while kill -0 "$kind_pid" 2>/dev/null && [[ ! -e "$waiting" ]]; do
	sleep 1
done
if [[ -e "$waiting" ]]; then
	echo "--- the kind session now waits on clocks: the local tests run beside it"
else
	echo "--- the kind e2e has ended: the local tests run now"
fi

names=() codes=() took=() logs=()
local_suite() { # local_suite NAME LOG ENV... -- PYTEST ARGS...: one suite, its output kept in LOG
	local name="$1" log="$2" start=$SECONDS rc
	shift 2
	echo "--- $name (log: $log)"
	env "$@" >"$log" 2>&1
	rc=$?
	names+=("$name") codes+=("$rc") took+=($((SECONDS - start))) logs+=("$log")
}
local_suite "integration suite on Kubernetes 1.35" "$PWD/.cache/pytest-1.35.log" \
	MTLS_KUBE_VERSION=1.35 "$PY" -m pytest -m "integration and not fault_timing" -p no:cacheprovider
local_suite "fault_timing tests on Kubernetes 1.37" "$PWD/.cache/pytest-fault-timing.log" \
	"$PY" -m pytest -m fault_timing -p no:cacheprovider

wait "$kind_pid"
kind_rc=$?

failed=$((kind_rc != 0))
for i in "${!names[@]}"; do
	echo "=============================== ${names[$i]} (${took[$i]} s, exit ${codes[$i]}) ==============================="
	cat "${logs[$i]}"
	((codes[i] == 0)) || failed=1
done
echo "--- kind e2e exit ${kind_rc}; $(for i in "${!names[@]}"; do printf '%s exit %s; ' "${names[$i]}" "${codes[$i]}"; done)"
((failed == 0))
