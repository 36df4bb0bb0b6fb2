"""A tenant's look-alike Secrets, against the real control plane: Secrets in its own namespace that carry the
operator's managed-by label and a controller ownerReference to its own identity. They must cost the operator no
memory (ownership by proof: only the Secret an identity names is read) and must not hold a root rotation (they are
never counted, and churn cannot restart the stall timer). bench/lookalikes.py measures the same at full size."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import re
import threading
import time
from pathlib import Path

import kubernetes
import pytest

from mtls_operator import rotation
from tests.kit import OPERATOR_NAMESPACE, Api, OperatorProcess, swapped_operator, wait_for

pytestmark = pytest.mark.local_operator
COUNT, SIZE = 40, 1_000_000  # 40 MB of look-alike data: before the fix, the operator's RSS grew by about 55 MB
MAPS = 30  # look-alike ConfigMaps of SIZE each: before their fix (a name filter on the watch), kopf held them all


def lookalike_map(namespace: str, name: str, size: int) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "mtls-operator"}},
            "data": {"ca.crt": os.urandom(size // 2).hex()[:size]}}


def lookalike(namespace: str, name: str, owner: dict, size: int, ca_crt: bytes = b"") -> dict:
    filler = os.urandom(size // 2).hex()[:size].encode()
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "mtls-operator"},
                     "ownerReferences": [{"apiVersion": "mtls-operator.io/v1alpha1", "kind": "MtlsIdentity",
                                          "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                          "controller": True}]},
        "data": {"tls.crt": base64.b64encode(filler).decode(), "tls.key": "",
                 "ca.crt": base64.b64encode(ca_crt).decode()},
    }


def memory(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{f}:\s+(\d+) kB", status).group(1)) / 1024 for f in ("VmHWM", "VmRSS"))


def settled(pid: int, quiet: float = 2.0) -> tuple[float, float]:
    """Memory once the RSS has stopped growing for `quiet` seconds (the operator has absorbed what it was sent)."""
    state = {"rss": memory(pid)[1], "since": time.monotonic()}

    def quiet_now() -> bool:
        rss = memory(pid)[1]
        if rss > state["rss"] + 0.5:
            state.update(rss=rss, since=time.monotonic())
        return time.monotonic() - state["since"] >= quiet
    wait_for("the operator's memory to settle", quiet_now, timeout=120, interval=0.2)
    return memory(pid)


@pytest.mark.timeout(300)
def test_lookalike_secrets_cost_no_memory_even_across_a_restart(api: Api, operator: OperatorProcess, ns: str) -> None:
    """Bad inputs 100 and 103 (docs/security.md). Before the fix each look-alike was cached whole (and listed whole at
    start)."""
    owner = api.create_identity(ns, "shop")
    api.wait_ready(ns, "shop")
    with swapped_operator(operator, "--namespace", ns) as op:
        api.wait_ready(ns, "shop")
        base_peak, base_rss = settled(op.proc.pid)
        for i in range(COUNT):
            api.core.create_namespaced_secret(ns, lookalike(ns, f"lookalike-{i}", owner, SIZE))
        for i in range(MAPS):
            api.core.create_namespaced_config_map(ns, lookalike_map(ns, f"lookalike-{i}", SIZE))
        _, rss = settled(op.proc.pid)
        assert rss - base_rss < 20, f"RSS grew {rss - base_rss:.1f} MiB with {COUNT} + {MAPS} look-alikes"
        op.restart()
        peak, _ = settled(op.proc.pid)
        assert peak - base_peak < 20, f"a restart peaked {peak - base_peak:.1f} MiB above the baseline"
        api.wait_ready(ns, "shop")
        # Never touched: the operator does not write a Secret it cannot prove is its own.
        assert api.secret(ns, "lookalike-0").metadata.resource_version
        assert api.secret(ns, "shop-mtls").data["tls.crt"] != api.secret(ns, "lookalike-0").data["tls.crt"]
        bundle = api.core.read_namespaced_config_map("mtls-trust-bundle", ns)  # the real one is still kept
        assert bundle.data["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")


class Churn:
    """A tenant creating and deleting look-alikes with a stale bundle, so the count of 'Secrets without the new
    bundle' would change every half second."""

    def __init__(self, api: Api, namespace: str, owner: dict) -> None:
        self.api, self.namespace, self.owner = api, namespace, owner
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            name = f"churn-{self.rounds % 3}"
            with contextlib.suppress(kubernetes.client.exceptions.ApiException):
                if self.rounds % 2:
                    self.api.core.delete_namespaced_secret(name, self.namespace)
                else:
                    self.api.core.create_namespaced_secret(
                        self.namespace, lookalike(self.namespace, name, self.owner, 100, b"an old bundle"))
            self.rounds += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _authority(api: Api, secret: str) -> dict:
    try:
        return api.custom.get_cluster_custom_object("mtls-operator.io", "v1alpha1", "mtlsauthorities",
                                                    f"{OPERATOR_NAMESPACE}.{secret}")
    except kubernetes.client.exceptions.ApiException:
        return {}


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


@pytest.mark.fault_timing
@pytest.mark.timeout(240)
def test_churning_lookalikes_cannot_hold_a_root_rotation(api: Api, operator: OperatorProcess, ns: str) -> None:
    """Bad input 101. Before the fix the look-alikes were waited for, and each change of their count restarted the
    stall timer: the rotation never left Propagating. Now it finishes in its own time, well inside --ca-stall, and a
    phase that waits (one leaf reissued every 2 s) names what it waits for on the MtlsAuthority."""
    ca = "lookalike-churn-ca"
    owner = api.create_identity(ns, "shop")
    with swapped_operator(operator, "--namespace", ns, "--ca-secret-name", ca, "--ca-propagation", "3s",
                          "--ca-grace", "3s", "--ca-stall", "60s", "--reissue-rate", "0.5",
                          "--lease-name", f"lease-{ca}"):
        for name in ("a", "b", "c"):
            api.create_identity(ns, name)
        for name in ("shop", "a", "b", "c"):
            api.wait_ready(ns, name)
        churn = Churn(api, ns, owner)
        try:
            api.core.patch_namespaced_secret(ca, OPERATOR_NAMESPACE, {"metadata": {"annotations": {
                rotation.ANN_REQUEST: dt.datetime.now(dt.UTC).isoformat()}}})
            waiting = wait_for("the MtlsAuthority to name what Reissuing waits for", lambda: (
                c := _condition(_authority(api, ca), "RotationWaiting")) and c["status"] == "True"
                and "certificate from the old root" in c["message"] and c, timeout=60, interval=0.05)
            assert f"{ns}/" in waiting["message"] and "churn-" not in waiting["message"]
            started = time.monotonic()

            def finished() -> bool:
                secret = api.secret(OPERATOR_NAMESPACE, ca)
                return secret is not None and not (secret.metadata.annotations or {}).get(rotation.ANN_PHASE)
            wait_for("the rotation to finish despite the churn", finished, timeout=45)
            assert time.monotonic() - started < 45  # well before --ca-stall (60 s) could have moved it on
            assert churn.rounds >= 4
        finally:
            churn.stop()
        done = wait_for("the MtlsAuthority to stop waiting", lambda: (
            c := _condition(_authority(api, ca), "RotationWaiting")) and c["status"] == "False" and c)
        assert done["reason"] == "NotWaiting"
