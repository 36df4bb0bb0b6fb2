"""Fencing and API outages (issue 10, items 4 and 5), against a real API server, judged from its audit log.

A leader that lost its lease must not write another byte; an API server that goes away for half a minute must not
kill the operator: it steps down if it must, wins the lease back, and catches up on what fell due meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import kubernetes
import pytest

from tests.kit import OPERATOR_NAMESPACE, Api, OperatorProcess, other_operator, swapped_operator, wait_for

pytestmark = pytest.mark.local_operator
LEASE = ("--lease-duration", "6s")  # short, so that losing and winning the lease fits in a test


def _holder(api: Api) -> str:
    lease = kubernetes.client.CoordinationV1Api(api.client).read_namespaced_lease("mtls-operator", OPERATOR_NAMESPACE)
    return lease.spec.holder_identity or ""


def _probe(proc: OperatorProcess, path: str) -> tuple[int, dict[str, Any]]:
    assert proc.proc is not None and proc.proc.poll() is None, f"operator exited:\n{proc.log()[-3000:]}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.health_port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:  # a slow answer on a loaded machine: the caller polls again
        return 0, {}


def _by(proc: OperatorProcess, event: dict[str, Any]) -> bool:
    """An audit event sent by this replica: its User-Agent names the replica identity (<host>-<pid>-<random>)."""
    assert proc.proc is not None
    return f"-{proc.proc.pid}-" in event.get("userAgent", "")


def _at(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))


def _is_lease(event: dict[str, Any]) -> bool:
    return event.get("objectRef", {}).get("resource") == "leases"


@pytest.mark.fault_timing
def test_a_paused_leader_writes_nothing_once_another_replica_holds_the_lease(
        api: Api, operator: OperatorProcess, ns: str, control_plane) -> None:
    """SIGSTOP the leader mid-work for longer than the lease, let a standby take over, pile up work for the paused one
    (renew requests it will read from its watch on waking, RSA-4096 keys in flight), then SIGCONT it. From the
    moment the standby's lease write was received, the old leader's audit trail must hold nothing but refused lease
    attempts; it steps down and stands by, still running."""
    if control_plane is None:
        pytest.skip("needs the local control plane's audit log")
    heavy = {"duration": "10s", "privateKey": {"algorithm": "RSA", "size": 4096}}
    names = [f"busy{i}" for i in range(6)]
    with swapped_operator(operator, *LEASE) as old:
        for name in names:
            api.create_identity(ns, name, heavy)
        for name in names:
            api.wait_ready(ns, name, timeout=120)
        new = other_operator(operator, *LEASE).start()
        try:
            wait_for("the second replica to stand by", lambda: _probe(new, "/healthz")[1].get("role") == "standby")
            os.kill(old.proc.pid, signal.SIGSTOP)
            try:
                for name in names:  # work the paused leader will find on waking
                    api.patch_identity(ns, name, {"metadata": {"annotations": {
                        "mtls-operator.io/renew": str(time.time_ns())}}})
                wait_for("the standby to take the lease", lambda: f"-{new.proc.pid}-" in _holder(api), timeout=60)
                taken = min(_at(e) for e in control_plane.writes() if _by(new, e) and _is_lease(e))
                wait_for("the new leader to write", lambda: any(
                    _by(new, e) and not _is_lease(e) for e in control_plane.writes()), timeout=60)
            finally:
                os.kill(old.proc.pid, signal.SIGCONT)
            wait_for("the old leader to step down and stand by",
                     lambda: _probe(old, "/healthz")[1].get("role") == "standby", timeout=60)
            assert "lost lease" in old.log()
            # It stands by still (another holder): give any straggler every chance to show up in the audit log.
            wait_for("the old leader to campaign again",
                     lambda: "held by another replica" in old.log().split("lost lease")[-1], timeout=60)
            late = [e for e in control_plane.writes() if _by(old, e) and _at(e) >= taken
                    and (not _is_lease(e) or e.get("responseStatus", {}).get("code", 0) < 300)]
            assert not late, "writes by the old leader after it lost the lease:\n" + "\n".join(
                f"{e['requestReceivedTimestamp']} {e['verb']} {e['objectRef']}" for e in late)
            assert old.proc.poll() is None, "the old leader exited instead of standing by"
        finally:
            new.stop()
            for name in names:  # ten-second RSA-4096 identities would keep the machine busy for the whole session
                api.delete_identity(ns, name)


@pytest.mark.fault_timing
def test_an_api_server_outage_does_not_kill_the_operator(api: Api, operator: OperatorProcess, ns: str,
                                                         control_plane) -> None:
    """The API server stops for 30 s, far longer than the lease. The operator stays up, says it is not ready, wins the
    lease back once the server returns, and renews the short-lived certificate that expired meanwhile."""
    if control_plane is None:
        pytest.skip("needs the local control plane, to stop its API server")
    with swapped_operator(operator, *LEASE) as op:
        api.create_identity(ns, "short", {"duration": "20s"})
        before = api.wait_ready(ns, "short")["status"]["serialNumber"]
        wait_for("/readyz to say ready", lambda: _probe(op, "/readyz")[0] == 200)
        control_plane.halt("kube-apiserver")
        try:
            wait_for("/readyz to say not ready", lambda: _probe(op, "/readyz")[0] == 503, timeout=60)
            ends = time.monotonic() + 30
            while time.monotonic() < ends:  # the outage itself: the operator must live through all of it
                assert op.proc.poll() is None, f"the operator exited during the outage:\n{op.log()[-3000:]}"
                time.sleep(0.5)
        finally:
            control_plane.resume("kube-apiserver")
        wait_for("the operator to hold the lease again", lambda: f"-{op.proc.pid}-" in _holder(api), timeout=90)

        def renewed() -> bool:
            obj = api.ready(ns, "short")
            if not obj or obj["status"]["serialNumber"] == before:
                return False
            expiry = dt.datetime.fromisoformat(obj["status"]["notAfter"].replace("Z", "+00:00"))
            return expiry > dt.datetime.now(dt.UTC)

        wait_for("the certificate to be renewed after the outage", renewed, timeout=90)
        wait_for("/readyz to say ready again", lambda: _probe(op, "/readyz")[0] == 200, timeout=60)
        assert op.proc.poll() is None


def test_the_serving_leader_says_ready(operator: OperatorProcess) -> None:
    """/readyz of the leader, once it serves: every stream it needs is watched (kopf's and its own), nothing missing.
    The kubelet's readiness probe and helm's --wait hang on this answer."""
    status, body = wait_for("/readyz to say ready", lambda: (r := _probe(operator, "/readyz"))[0] == 200 and r)
    assert body == {"ready": True, "role": "leader", "missing": []}, (status, body)


def test_sigterm_hands_the_lease_over_at_once(api: Api, operator: OperatorProcess) -> None:
    """A clean shutdown releases the Lease before the process exits: the next replica need not wait for expiry."""
    wait_for("the operator to hold the lease", lambda: f"-{operator.proc.pid}-" in _holder(api))
    try:
        operator.stop()
        assert _holder(api) == ""
    finally:
        operator.start()
