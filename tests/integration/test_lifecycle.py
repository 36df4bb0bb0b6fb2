"""An identity's life against the real control plane: rotation before expiry, restarts that reissue nothing, healing
after deletion or tampering, conflicts with Secrets we do not own, renew-on-request, and garbage collection."""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest

from mtls_operator import pki
from mtls_operator.workload import client_context, server_context
from tests import tlskit
from tests.kit import Api, OperatorProcess, ready_condition, secret_files, wait_for, write_identity_dir

SHORT = {"duration": "30s", "renewBefore": "20s"}  # renews ~10 s after issuance (the test operator's minimum is 10s)


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def test_rotation_before_expiry_with_new_key_and_working_handshakes(api: Api, operator: OperatorProcess, ns: str,
                                                                     tmp_path) -> None:
    api.create_identity(ns, "rot", SHORT)
    api.create_identity(ns, "peer", {"usages": ["client"]})
    first = api.wait_ready(ns, "rot")["status"]
    old_files = secret_files(api.secret(ns, "rot-mtls"))
    api.wait_ready(ns, "peer")  # issued in its own time: nothing orders it before or after "rot"
    peer = write_identity_dir(api.secret(ns, "peer-mtls"), tmp_path / "peer")

    renewed = wait_for("a renewal", lambda: (o := api.ready(ns, "rot")) and o["status"]["revision"] >= 2 and o,
                       timeout=40)["status"]
    new_files = secret_files(api.secret(ns, "rot-mtls"))
    new_cert = pki.load_chain(new_files["tls.crt"])[0]
    assert renewed["serialNumber"] != first["serialNumber"]
    assert new_files["tls.key"] != old_files["tls.key"]  # rotationPolicy Always: a new key
    # Renewed before the old certificate expired, and not before its renewal time.
    issued_at = new_cert.not_valid_before_utc + dt.timedelta(minutes=5)
    assert _parse(first["renewalTime"]) - dt.timedelta(seconds=1) <= issued_at < _parse(first["notAfter"])
    assert ready_condition(api.identity(ns, "rot"))["reason"] == "Renewed"
    api.wait_event(ns, "rot", lambda e: e.reason == "Renewed")

    folder = write_identity_dir(api.secret(ns, "rot-mtls"), tmp_path / "rot")
    s, c = tlskit.exchange(server_context(folder), client_context(peer), f"rot.{ns}.svc")
    assert s.ok and c.ok, (s, c)


def test_rotation_policy_never_keeps_the_key(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "keep", {**SHORT, "privateKey": {"rotationPolicy": "Never"}})
    api.wait_ready(ns, "keep")
    key = secret_files(api.secret(ns, "keep-mtls"))["tls.key"]
    wait_for("a renewal", lambda: (o := api.ready(ns, "keep")) and o["status"]["revision"] >= 2, timeout=40)
    assert secret_files(api.secret(ns, "keep-mtls"))["tls.key"] == key


@pytest.mark.local_operator
def test_restart_mid_life_reissues_nothing(api: Api, operator: OperatorProcess, ns: str) -> None:
    names = [f"stay{i}" for i in range(5)]
    for name in names:
        api.create_identity(ns, name, {"duration": "1h"})
    before = {}
    for name in names:
        obj = api.wait_ready(ns, name)
        before[name] = (obj["metadata"]["resourceVersion"],
                        api.secret(ns, f"{name}-mtls").metadata.resource_version)
    operator.restart()
    # The restarted operator has looked at every identity once it exports their readiness.
    for name in names:
        wait_for(f"{name} reconciled after the restart", lambda n=name: (
            f'mtls_operator_identity_ready{{name="{n}",namespace="{ns}"}} 1.0' in operator.metrics()))
    # A new identity is served, so the operator is fully running.
    api.create_identity(ns, "after-restart")
    api.wait_ready(ns, "after-restart")
    for name in names:
        assert (api.identity(ns, name)["metadata"]["resourceVersion"],
                api.secret(ns, f"{name}-mtls").metadata.resource_version) == before[name], name


@pytest.mark.local_operator
def test_a_restart_reads_only_the_secrets_changed_while_it_was_down(api: Api, operator: OperatorProcess, ns: str,
                                                                    control_plane) -> None:
    """A Secret its identity's status records at its current resourceVersion is as the operator wrote it: a restart
    knows it by its metadata, without a GET. One edited meanwhile, or whose identity asks for more than that metadata
    shows (a renewal request), is read and acted on."""
    if control_plane is None:
        pytest.skip("needs the local control plane's audit log")
    calm = [f"calm{i}" for i in range(3)]
    for name in [*calm, "edited", "asked"]:
        api.create_identity(ns, name, {"duration": "1h"})
    before = {}
    for name in [*calm, "edited", "asked"]:
        obj = api.wait_ready(ns, name)
        secret = api.secret(ns, f"{name}-mtls")
        assert obj["status"]["secretResourceVersion"] == secret.metadata.resource_version, name
        before[name] = (obj["status"]["serialNumber"], secret.metadata.resource_version)
    operator.stop()
    _patch_data(api, ns, "edited-mtls", tls_key=pki.key_to_pem(pki.generate_key("ECDSA", 256)))
    api.patch_identity(ns, "asked", {"metadata": {"annotations": {"mtls-operator.io/renew": "after-restart"}}})
    operator.start()
    pid = operator.proc.pid

    for name in calm:
        wait_for(f"{name} looked at after the restart", lambda n=name: (
            f'mtls_operator_identity_ready{{name="{n}",namespace="{ns}"}} 1.0' in operator.metrics()))
    _healed(api, ns, "edited", before["edited"][0])
    wait_for("the renewal asked for", lambda: (o := api.ready(ns, "asked"))
             and o["status"]["serialNumber"] != before["asked"][0])
    read = {e["objectRef"]["name"] for e in control_plane.audited()
            if e["verb"] == "get" and e["objectRef"].get("resource") == "secrets"
            and e["objectRef"].get("namespace") == ns and f"-{pid}-" in e.get("userAgent", "")}
    assert read == {"edited-mtls", "asked-mtls"}, read
    for name in calm:
        obj = api.ready(ns, name)
        secret = api.secret(ns, f"{name}-mtls")
        assert (obj["status"]["serialNumber"], secret.metadata.resource_version) == before[name], name
        # Its next look is the renewal the status shows (to the second), as a full look would have scheduled it.
        line = f'mtls_operator_certificate_renewal_timestamp_seconds{{name="{name}",namespace="{ns}"}} '
        renewal = float(next(x for x in operator.metrics().splitlines() if x.startswith(line))[len(line):])
        assert 0 <= renewal - _parse(obj["status"]["renewalTime"]).timestamp() < 1, name


def test_deleted_secret_heals(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "heal")
    serial = api.wait_ready(ns, "heal")["status"]["serialNumber"]
    api.core.delete_namespaced_secret("heal-mtls", ns)
    obj = wait_for("a new Secret", lambda: (o := api.ready(ns, "heal")) and o["status"]["serialNumber"] != serial
                   and api.secret(ns, "heal-mtls") and o)
    assert obj["status"]["revision"] == 1  # the record went with the Secret; a fresh start


def _patch_data(api: Api, ns: str, name: str, **files: bytes) -> None:
    api.core.patch_namespaced_secret(name, ns, {"data": {k.replace("_", "."): base64.b64encode(v).decode()
                                                         for k, v in files.items()}})


def _healed(api: Api, ns: str, name: str, serial: str):
    def probe():
        files = secret_files(api.secret(ns, f"{name}-mtls"))
        try:
            cert = pki.load_chain(files["tls.crt"])[0]
            key = pki.load_key(files["tls.key"])
        except pki.PKIError:
            return None
        obj = api.ready(ns, name)
        return (pki.serial_hex(cert) != serial and pki.key_matches(cert, key) and obj
                and obj["status"]["serialNumber"] == pki.serial_hex(cert)
                and pki.spiffe_ids(cert) == (f"spiffe://cluster.local/ns/{ns}/sa/{name}",) and obj)
    return wait_for(f"{name} healed", probe)


def test_tampered_secret_heals(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "tamper")
    serial = api.wait_ready(ns, "tamper")["status"]["serialNumber"]

    _patch_data(api, ns, "tamper-mtls", tls_key=pki.key_to_pem(pki.generate_key("ECDSA", 256)))
    serial = _healed(api, ns, "tamper", serial)["status"]["serialNumber"]

    _patch_data(api, ns, "tamper-mtls", tls_crt=b"not a certificate")
    serial = _healed(api, ns, "tamper", serial)["status"]["serialNumber"]

    # A certificate another identity holds (same CA, other SPIFFE ID) is not this identity's.
    api.create_identity(ns, "other")
    api.wait_ready(ns, "other")
    other = secret_files(api.secret(ns, "other-mtls"))
    _patch_data(api, ns, "tamper-mtls", tls_crt=other["tls.crt"], tls_key=other["tls.key"])
    assert _healed(api, ns, "tamper", serial)["status"]["revision"] == 4


def test_foreign_secret_is_never_touched(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.core.create_namespaced_secret(ns, {"metadata": {"name": "taken"}, "stringData": {"password": "hunter2"}})
    original = api.secret(ns, "taken")
    api.create_identity(ns, "squatter", {"secretName": "taken"})
    obj = api.wait_reason(ns, "squatter", "SecretConflict")
    assert ready_condition(obj)["status"] == "False"
    api.wait_event(ns, "squatter", lambda e: e.reason == "SecretConflict")
    # Poke the identity so it is reconciled again; the Secret must still be exactly as it was.
    before = _reconciles(operator)
    api.patch_identity(ns, "squatter", {"metadata": {"labels": {"poke": "1"}}})
    wait_for("the poke to be reconciled", lambda: _reconciles(operator) > before)
    assert api.secret(ns, "taken").metadata.resource_version == original.metadata.resource_version
    # Once its owner removes it, the identity takes the name on its next look.
    api.core.delete_namespaced_secret("taken", ns)
    api.patch_identity(ns, "squatter", {"metadata": {"labels": {"poke": "2"}}})
    api.wait_ready(ns, "squatter")
    assert api.secret(ns, "taken").type == "kubernetes.io/tls"


def test_renew_on_request(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "manual")
    serial = api.wait_ready(ns, "manual")["status"]["serialNumber"]
    api.patch_identity(ns, "manual", {"metadata": {"annotations": {"mtls-operator.io/renew": "2026-11-26T12:00:00Z"}}})
    obj = wait_for("a requested renewal", lambda: (o := api.ready(ns, "manual")) and
                   o["status"]["serialNumber"] != serial and o)
    assert obj["status"]["revision"] == 2
    secret = api.secret(ns, "manual-mtls")
    assert secret.metadata.annotations["mtls-operator.io/renew-handled"] == "2026-11-26T12:00:00Z"
    # The same request is not handled twice: another change of the identity leaves the certificate alone.
    api.patch_identity(ns, "manual", {"metadata": {"labels": {"poke": "1"}}})
    api.patch_identity(ns, "manual", {"spec": {"secretTemplate": {"labels": {"seen": "yes"}}}})
    wait_for("the template label", lambda: api.secret(ns, "manual-mtls").metadata.labels.get("seen") == "yes")
    assert api.identity(ns, "manual")["status"]["revision"] == 2


def test_deleting_the_identity_removes_its_secret(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "brief")
    api.wait_ready(ns, "brief")
    api.delete_identity(ns, "brief")
    wait_for("garbage collection of the Secret", lambda: api.secret(ns, "brief-mtls") is None, timeout=60)


def _reconciles(operator: OperatorProcess) -> float:
    """How many reconciles the operator has finished (its own metric)."""
    m = re.search(r"^mtls_operator_reconcile_duration_seconds_count ([0-9.e+]+)$", operator.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def test_restart_targets_are_rolled_once_per_certificate_and_rate_limited(api: Api, operator: OperatorProcess,
                                                                          ns: str) -> None:
    import kubernetes

    apps = kubernetes.client.AppsV1Api(api.client)
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "legacy"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}}, "template": {
            "metadata": {"labels": {"app": "legacy"}},
            "spec": {"containers": [{"name": "app", "image": "legacy:1"}]}}}})

    def rolled_for() -> dict:
        dep = apps.read_namespaced_deployment("legacy", ns)
        return dep.spec.template.metadata.annotations or {}

    api.create_identity(ns, "legacy", {"restartTargets": [{"kind": "Deployment", "name": "legacy"},
                                                         {"kind": "StatefulSet", "name": "not-there-yet"}]})
    serial = api.wait_ready(ns, "legacy")["status"]["serialNumber"]
    wait_for("the Deployment rolled for the certificate (and the bundle)",
             lambda: rolled_for().get("mtls-operator.io/rolled-for-serial", "").startswith(serial + "."))
    api.wait_event(ns, "legacy", lambda e: e.reason == "WorkloadRolled")
    first_roll = rolled_for()["mtls-operator.io/rolled-at"]

    # A second certificate right away: the roll waits out the operator's minimum interval (5 minutes by default)
    # instead of restarting the pods again; the schedule holds it, nothing is lost.
    api.patch_identity(ns, "legacy", {"metadata": {"annotations": {"mtls-operator.io/renew": "again"}}})
    wait_for("the renewal", lambda: (o := api.ready(ns, "legacy")) and o["status"]["serialNumber"] != serial)
    assert rolled_for()["mtls-operator.io/rolled-at"] == first_roll
    assert rolled_for()["mtls-operator.io/rolled-for-serial"].startswith(serial + ".")
