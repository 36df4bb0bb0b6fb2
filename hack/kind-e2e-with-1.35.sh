#!/usr/bin/env bash
# The last two parts of `make test`, overlapped: the kind e2e (hack/kind-e2e.sh) and the integration suite on the
# oldest supported minor, Kubernetes 1.35, against a local control plane.
#
# Why overlapped: the kind session ends with minutes of waiting on clocks — a pod certificate cannot be refreshed
# before it is 10 minutes old (the API's floor, less the signer's backdate), and the rotation's phases are sized for the
# kubelet's Secret sync — while the machine sits idle. The kind session says when that wait begins by creating
# $MTLS_E2E_WAITING_FILE (tests/kit.py, only_waiting_from_here); the 1.35 suite starts then. If the kind e2e ends
# first, or is skipped (no Docker engine), the 1.35 suite runs after it. The 1.35 suite's output is kept in a log and
# printed whole when it ends, so the two do not interleave.
#
# Exit status: 0 only when both passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
mkdir -p .cache
waiting="$PWD/.cache/kind-e2e-waiting"
log="$PWD/.cache/pytest-1.35.log"
rm -f "$waiting"

MTLS_E2E_WAITING_FILE="$waiting" hack/kind-e2e.sh &
kind_pid=$!
trap 'kill "$kind_pid" 2>/dev/null' INT TERM

while kill -0 "$kind_pid" 2>/dev/null && [[ ! -e "$waiting" ]]; do
	sleep 1
done
if [[ -e "$waiting" ]]; then
	echo "--- the kind session now waits on clocks: the integration suite on Kubernetes 1.35 runs beside it (log: $log)"
else
	echo "--- the kind e2e has ended: the integration suite on Kubernetes 1.35 runs now (log: $log)"
fi
start=$SECONDS
MTLS_KUBE_VERSION=1.35 "$PY" -m pytest -m "integration and not fault_timing" -p no:cacheprovider >"$log" 2>&1
old_rc=$?
old_took=$((SECONDS - start))

wait "$kind_pid"
kind_rc=$?

echo "=============================== integration suite on Kubernetes 1.35 (${old_took} s, exit ${old_rc}) ==============================="
cat "$log"
echo "--- kind e2e exit ${kind_rc}; integration suite on 1.35 exit ${old_rc}"
((kind_rc == 0 && old_rc == 0))
