"""Issuance against the real control plane: what lands in the Secret, and that it works with openssl, pkilint and real
mutual-TLS handshakes."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from cryptography import x509

from mtls_operator import pki
from mtls_operator.workload import client_context, server_context
from tests import tlskit
from tests.kit import REPO, Api, OperatorProcess, ready_condition, secret_files, wait_for, write_identity_dir

# pkilint's URI check accepts only web schemes and flags every spiffe:// SAN; a known false positive.
PKILINT_ALLOWED = {"pkix.invalid_uri_syntax"}


def pkilint(*args: str) -> list[dict]:
    out = subprocess.run([str(REPO / ".venv" / "bin" / args[0]), "lint", "-f", "JSON", "-s", "WARNING", *args[1:]],
                         capture_output=True, text=True)
    assert out.stdout, out.stderr
    findings = json.loads(out.stdout)
    results = findings.get("results", findings) if isinstance(findings, dict) else findings
    flat = []
    for result in results:
        for f in result.get("finding_descriptions", []):
            flat.append({"validator": result.get("validator"), **f})
    return flat


@pytest.mark.parametrize("key", [{}, {"algorithm": "ECDSA", "size": 384}, {"algorithm": "RSA", "size": 3072},
                                 {"algorithm": "Ed25519"}])
def test_fresh_identity_secret_verifies_and_lints_clean(api: Api, operator: OperatorProcess, ns: str, tmp_path,
                                                        key: dict) -> None:
    api.grant(ns, ip_addresses=["10.9.8.7"])
    api.create_identity(ns, "web", {"privateKey": key, "ipAddresses": ["10.9.8.7"]})
    obj = api.wait_ready(ns, "web")
    secret = api.secret(ns, "web-mtls")
    folder = write_identity_dir(secret, tmp_path / "web")

    assert secret.type == "kubernetes.io/tls"
    assert set(secret.data) == {"tls.crt", "tls.key", "ca.crt"}
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "mtls-operator"
    owner = secret.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("MtlsIdentity", "web", obj["metadata"]["uid"],
                                                                      True)
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(folder / "ca.crt"), str(folder / "tls.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify.stdout + verify.stderr
    check = subprocess.run(["openssl", "x509", "-in", str(folder / "tls.crt"), "-noout", "-checkend", "3600"],
                           capture_output=True, text=True)
    assert check.returncode == 0

    for finding in pkilint("lint_pkix_cert", str(folder / "tls.crt")) + \
            pkilint("lint_pkix_cert", str(folder / "ca.crt")) + \
            pkilint("lint_pkix_signer_signee_cert_chain", str(folder / "ca.crt"), str(folder / "tls.crt")):
        assert finding["code"] in PKILINT_ALLOWED or finding["severity"] not in ("ERROR", "FATAL"), finding

    cert = pki.load_chain((folder / "tls.crt").read_bytes())[0]
    status = obj["status"]
    assert status["spiffeID"] == f"spiffe://cluster.local/ns/{ns}/sa/web"
    assert status["serialNumber"] == pki.serial_hex(cert) == secret.metadata.annotations["mtls-operator.io/serial"]
    assert status["notAfter"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["revision"] == 1 and status["secretName"] == "web-mtls"
    assert status["renewalTime"] < status["notAfter"]
    assert status["issuerFingerprint"] == pki.fingerprint(pki.load_chain((folder / "ca.crt").read_bytes())[0])
    assert ready_condition(obj)["reason"] == "Issued"
    api.wait_event(ns, "web", lambda e: e.reason == "Issued")


def test_mutual_tls_strict_optional_and_foreign(api: Api, operator: OperatorProcess, ns: str, tmp_path) -> None:
    api.create_identity(ns, "server", {"usages": ["server"]})
    api.create_identity(ns, "client", {"usages": ["client"]})
    for name in ("server", "client"):
        api.wait_ready(ns, name)
    srv = write_identity_dir(api.secret(ns, "server-mtls"), tmp_path / "server")
    cli = write_identity_dir(api.secret(ns, "client-mtls"), tmp_path / "client")
    host = f"server.{ns}.svc"
    client_id = f"spiffe://cluster.local/ns/{ns}/sa/client"

    s, c = tlskit.exchange(server_context(srv), client_context(cli), host)
    assert s.ok and c.ok, (s, c)
    assert s.peer_uris == (client_id,)
    assert c.peer_uris == (f"spiffe://cluster.local/ns/{ns}/sa/server",)
    assert c.data == client_id.encode()

    # Strict: a client without a certificate is refused.
    s, c = tlskit.exchange(server_context(srv), client_context(cli, present_identity=False), host)
    assert not s.ok and not c.ok

    # Optional mTLS (clients not ready yet): anonymous clients get in, and certified ones are still identified.
    optional = server_context(srv, require_client_cert=False)
    s, c = tlskit.exchange(optional, client_context(cli, present_identity=False), host)
    assert s.ok and c.ok and c.data == b"anonymous"
    s, c = tlskit.exchange(optional, client_context(cli), host)
    assert s.ok and s.peer_uris == (client_id,)

    # A client whose certificate comes from another CA is refused, strict or optional.
    foreign = _foreign_identity(tmp_path / "foreign", client_id, trusted=(cli / "ca.crt").read_bytes())
    for required in (True, False):
        s, c = tlskit.exchange(server_context(srv, required), client_context(foreign), host)
        assert not s.ok and not c.ok, (required, s, c)
        assert "certificate verify failed" in s.error or "unknown ca" in s.error.lower(), s.error

    # The client checks the server's name: the wrong hostname fails.
    s, c = tlskit.exchange(server_context(srv), client_context(cli), f"other.{ns}.svc")
    assert not c.ok and "match" in c.error


def _foreign_identity(folder, spiffe_id: str, trusted: bytes):
    """An identity claiming the same SPIFFE ID from a CA the cluster does not trust (it trusts the cluster's CA)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    ca_key = pki.generate_key("ECDSA", 256)
    ca_cert = pki.self_signed_ca(ca_key, "evil root", "evil", now, dt.timedelta(days=1))
    key = pki.generate_key("ECDSA", 256)
    leaf = pki.issue_leaf(pki.LeafRequest(spiffe_id, (), (), False, True, dt.timedelta(hours=1)), key.public_key(),
                          ca_cert, ca_key, now, dt.timedelta(minutes=5))
    folder.mkdir()
    (folder / "tls.crt").write_bytes(pki.to_pem(leaf))
    (folder / "tls.key").write_bytes(pki.key_to_pem(key))
    (folder / "ca.crt").write_bytes(trusted)
    return folder


def test_invalid_spec_is_reported_and_nothing_issued(api: Api, operator: OperatorProcess, ns: str) -> None:
    # 100 days passes the CRD (at most 8760h) but not the operator's own maximum (90 days by default).
    api.create_identity(ns, "greedy", {"duration": "2400h"})
    obj = api.wait_reason(ns, "greedy", "InvalidSpec")
    cond = ready_condition(obj)
    assert cond["status"] == "False" and "outside the operator's bounds" in cond["message"]
    assert api.secret(ns, "greedy-mtls") is None
    api.wait_event(ns, "greedy", lambda e: e.reason == "InvalidSpec" and e.type == "Warning")
    # Fixing the spec heals it.
    api.patch_identity(ns, "greedy", {"spec": {"duration": "48h"}})
    api.wait_ready(ns, "greedy")


def test_spec_change_reissues_and_template_change_only_rewrites_metadata(api: Api, operator: OperatorProcess,
                                                                        ns: str) -> None:
    api.create_identity(ns, "svc")
    first = api.wait_ready(ns, "svc")["status"]["serialNumber"]

    api.patch_identity(ns, "svc", {"spec": {"secretTemplate": {"labels": {"team": "payments"},
                                                                "annotations": {"owner": "pay-team"}}}})
    secret = wait_for("template labels on the Secret",
                      lambda: (s := api.secret(ns, "svc-mtls")) and s.metadata.labels.get("team") == "payments" and s)
    assert secret.metadata.annotations["owner"] == "pay-team"
    assert secret.metadata.annotations["mtls-operator.io/serial"] == first  # same certificate

    api.grant(ns, dns_names=["svc.example.internal"])
    api.patch_identity(ns, "svc", {"spec": {"dnsNames": ["svc.example.internal"]}})
    obj = wait_for("a reissue for the new DNS name", lambda: (o := api.ready(ns, "svc")) and
                   o["status"]["serialNumber"] != first and o)
    cert = pki.load_chain(secret_files(api.secret(ns, "svc-mtls"))["tls.crt"])[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.example.internal"]
    assert obj["status"]["revision"] == 2 and ready_condition(obj)["reason"] == "Renewed"
    assert api.secret(ns, "svc-mtls").metadata.labels.get("team") == "payments"


def test_metrics_and_liveness(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "watched")
    obj = api.wait_ready(ns, "watched")
    text = wait_for("the identity's metrics", lambda: (t := operator.metrics()) and
                    f'mtls_operator_identity_ready{{name="watched",namespace="{ns}"}} 1.0' in t and t)
    expiry = re.search(rf'mtls_operator_certificate_expiry_timestamp_seconds{{name="watched",namespace="{ns}"}} '
                       r'([0-9.e+]+)', text)
    assert expiry
    import datetime as dt

    not_after = dt.datetime.strptime(obj["status"]["notAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert float(expiry.group(1)) == not_after.timestamp()
    assert "mtls_operator_ca_ready 1.0" in text
    assert operator.healthy()


def test_at_most_three_api_writes_per_issuance(api: Api, operator: OperatorProcess, ns: str, control_plane) -> None:
    """Counted exactly from the API server's audit log: every write request in the test's namespace that the test
    itself did not make. kopf must add none of its own (no finalizers, annotations or Events)."""
    if control_plane is None:
        pytest.skip("needs the local control plane's audit log")
    n = 20
    for i in range(n):
        api.create_identity(ns, f"w{i}")
    for i in range(n):
        api.wait_ready(ns, f"w{i}")

    def operator_writes() -> list[dict]:
        return [e for e in control_plane.writes()
                if e.get("objectRef", {}).get("namespace") == ns
                and e["user"]["username"] != "system:kube-controller-manager"
                and not (e["objectRef"].get("resource") in ("mtlsidentities", "serviceaccounts")
                         and e["verb"] == "create")]

    # Settled: the watch events our own writes cause are handled (they must cause no further writes).
    writes = wait_for("the operator's writes to settle",
                      lambda: (w := operator_writes()) and len(w) == len(operator_writes()) and w)
    by_kind: dict[str, int] = {}
    for e in writes:
        ref = e["objectRef"]
        key = f"{e['verb']} {ref['resource']}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        by_kind[key] = by_kind.get(key, 0) + 1
    # Three per issuance, and the namespace's trust-bundle ConfigMap once.
    assert by_kind.pop("create configmaps", 0) <= 1, by_kind
    assert sum(by_kind.values()) <= 3 * n, by_kind
    assert by_kind.get("create secrets") == n, by_kind


def test_trust_bundle_configmap_is_published_and_healed(api: Api, operator: OperatorProcess, ns: str) -> None:
    api.create_identity(ns, "holder")
    api.wait_ready(ns, "holder")
    bundle = secret_files(api.secret(ns, "holder-mtls"))["ca.crt"].decode()

    def published():
        try:
            cm = api.core.read_namespaced_config_map("mtls-trust-bundle", ns)
        except Exception:
            return None
        return cm if (cm.data or {}).get("ca.crt") == bundle else None
    cm = wait_for("the trust bundle ConfigMap", published)
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "mtls-operator"
    api.core.delete_namespaced_config_map("mtls-trust-bundle", ns)
    wait_for("the trust bundle to come back", published)
