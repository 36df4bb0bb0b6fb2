"""The CA Secret against the real control plane: a broken one is reported and never overwritten, a fixed or replaced
one is picked up live, and a brought-in intermediate issues leaves that chain to its outside root."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess

import pytest
from cryptography import x509

from mtls_operator import ca as ca_mod
from mtls_operator import pki
from mtls_operator.config import Settings
from mtls_operator.workload import client_context, server_context
from tests import tlskit
from tests.kit import (
    OPERATOR_NAMESPACE,
    Api,
    OperatorProcess,
    ready_condition,
    secret_files,
    swapped_operator,
    wait_for,
    write_identity_dir,
)

pytestmark = pytest.mark.local_operator

def operator_with_ca(operator: OperatorProcess, ca_secret: str):
    """The session's operator swapped for one that uses another CA Secret."""
    return swapped_operator(operator, "--ca-secret-name", ca_secret)


def _put_ca(api: Api, name: str, data: dict[str, bytes]) -> None:
    body = {"metadata": {"name": name}, "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    if api.secret(OPERATOR_NAMESPACE, name) is None:
        api.core.create_namespaced_secret(OPERATOR_NAMESPACE, body)
    else:
        api.core.replace_namespaced_secret(name, OPERATOR_NAMESPACE, body)


def test_broken_ca_is_reported_never_overwritten_and_fixed_live(api: Api, operator: OperatorProcess, ns: str) -> None:
    now = dt.datetime.now(dt.UTC)
    leaf_key = pki.generate_key("ECDSA", 256)
    root = ca_mod.load(ca_mod.new_root(Settings(), now), now)
    not_a_ca = pki.issue_leaf(pki.LeafRequest("spiffe://x/y", (), (), False, True, dt.timedelta(days=1)),
                              leaf_key.public_key(), root.cert, root.key, now, dt.timedelta())
    _put_ca(api, "broken-ca", {"tls.crt": pki.to_pem(not_a_ca), "tls.key": pki.key_to_pem(leaf_key)})
    version = api.secret(OPERATOR_NAMESPACE, "broken-ca").metadata.resource_version

    with operator_with_ca(operator, "broken-ca") as other:
        api.create_identity(ns, "waiting")
        obj = api.wait_reason(ns, "waiting", "CAUnavailable")
        assert "not a CA certificate" in ready_condition(obj)["message"]
        assert api.secret(ns, "waiting-mtls") is None
        assert api.secret(OPERATOR_NAMESPACE, "broken-ca").metadata.resource_version == version
        api.wait_event(OPERATOR_NAMESPACE, "broken-ca", lambda e: e.reason == "CAInvalid")
        assert "mtls_operator_ca_ready 0.0" in other.metrics()
        wait_for("the MtlsAuthority to say why", lambda: _authority_ready(api, "broken-ca") == "False")

        # Fixed in place: picked up from the watch, no restart.
        good = ca_mod.new_root(Settings(), now)
        _put_ca(api, "broken-ca", good)
        obj = api.wait_ready(ns, "waiting")
        assert secret_files(api.secret(ns, "waiting-mtls"))["ca.crt"] == good["tls.crt"]

        # Replaced by another root: every identity is reissued from it.
        newer = ca_mod.new_root(Settings(), now)
        _put_ca(api, "broken-ca", newer)
        wait_for("a reissue from the new root", lambda: (o := api.ready(ns, "waiting"))
                 and o["status"]["revision"] == 2
                 and secret_files(api.secret(ns, "waiting-mtls"))["ca.crt"] == newer["tls.crt"])
        api.wait_event(ns, "waiting", lambda e: e.reason == "Renewed" and "CAChanged" in e.message)


def _intermediate_ca(now: dt.datetime) -> tuple[dict[str, bytes], bytes]:
    """An enterprise-style hierarchy: a root kept outside the cluster, and an intermediate whose key is brought in."""
    root_key = pki.generate_key("ECDSA", 384)
    root = pki.self_signed_ca(root_key, "Enterprise Root", "example corp", now, dt.timedelta(days=3650))
    key = pki.generate_key("ECDSA", 256)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "cluster issuing CA")])
    inter = (x509.CertificateBuilder().subject_name(name).issuer_name(root.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
             .sign(root_key, pki.hashes.SHA384()))
    data = {"tls.crt": pki.to_pem(inter), "tls.key": pki.key_to_pem(key), "ca.crt": pki.to_pem(root)}
    return data, pki.to_pem(root)


def test_brought_in_intermediate_issues_chained_leaves(api: Api, operator: OperatorProcess, ns: str, tmp_path) -> None:
    data, root_pem = _intermediate_ca(dt.datetime.now(dt.UTC))
    _put_ca(api, "enterprise-ca", data)
    with operator_with_ca(operator, "enterprise-ca"):
        api.create_identity(ns, "branch", {"usages": ["server"]})
        api.create_identity(ns, "teller", {"usages": ["client"]})
        api.wait_ready(ns, "branch")
        api.wait_ready(ns, "teller")
        srv = write_identity_dir(api.secret(ns, "branch-mtls"), tmp_path / "branch")
        cli = write_identity_dir(api.secret(ns, "teller-mtls"), tmp_path / "teller")

    chain = pki.load_chain((srv / "tls.crt").read_bytes())
    assert len(chain) == 2 and pki.to_pem(chain[1]) == data["tls.crt"]  # leaf, then the intermediate
    assert (srv / "ca.crt").read_bytes() == root_pem  # peers trust the root, not the intermediate
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(srv / "ca.crt"), "-untrusted", str(srv / "tls.crt"),
                             str(srv / "tls.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    s, c = tlskit.exchange(server_context(srv), client_context(cli), f"branch.{ns}.svc")
    assert s.ok and c.ok, (s, c)
    assert s.peer_uris == (f"spiffe://cluster.local/ns/{ns}/sa/teller",)


def test_tampered_ca_secret_is_refused_live_and_never_overwritten(api: Api, operator: OperatorProcess,
                                                                  ns: str) -> None:
    now = dt.datetime.now(dt.UTC)
    good = ca_mod.new_root(Settings(), now)
    old_key = pki.generate_key("ECDSA", 256)
    expired = pki.self_signed_ca(old_key, "old root", "x", now - dt.timedelta(days=10), dt.timedelta(days=1))
    leaf_key = pki.generate_key("ECDSA", 256)
    root = ca_mod.load(good, now)
    not_a_ca = pki.issue_leaf(pki.LeafRequest("spiffe://x/y", (), (), False, True, dt.timedelta(days=1)),
                              leaf_key.public_key(), root.cert, root.key, now, dt.timedelta())
    variants = {
        "key-swapped": ({**good, "tls.key": pki.key_to_pem(pki.generate_key("ECDSA", 256))}, "does not belong"),
        "not-a-ca": ({"tls.crt": pki.to_pem(not_a_ca), "tls.key": pki.key_to_pem(leaf_key)}, "not a CA certificate"),
        "expired": ({"tls.crt": pki.to_pem(expired), "tls.key": pki.key_to_pem(old_key)}, "expired"),
        "garbage-pem": ({**good, "tls.crt": b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"},
                        "not PEM X.509"),
        "empty-key": ({"tls.crt": good["tls.crt"], "tls.key": b""}, "lacks tls.key"),
    }
    _put_ca(api, "tamper-ca", good)
    with operator_with_ca(operator, "tamper-ca") as other:
        api.create_identity(ns, "steady")
        steady = api.wait_ready(ns, "steady")["status"]["serialNumber"]
        for i, (label, (data, fragment)) in enumerate(variants.items()):
            _put_ca(api, "tamper-ca", data)
            version = api.secret(OPERATOR_NAMESPACE, "tamper-ca").metadata.resource_version
            wait_for(f"the {label} CA to be refused", lambda f=fragment: any(
                e.reason == "CAInvalid" and f in e.message for e in api.events(OPERATOR_NAMESPACE, "tamper-ca")))
            assert "mtls_operator_ca_ready 0.0" in other.metrics()
            api.create_identity(ns, f"new{i}")
            obj = api.wait_reason(ns, f"new{i}", "CAUnavailable")
            assert fragment in ready_condition(obj)["message"], label
            assert api.secret(ns, f"new{i}-mtls") is None
            assert api.secret(OPERATOR_NAMESPACE, "tamper-ca").metadata.resource_version == version, label
        # The identity whose certificate is still good kept it, and its Ready.
        obj = api.identity(ns, "steady")
        assert ready_condition(obj)["status"] == "True" and obj["status"]["serialNumber"] == steady


def _authority_ready(api: Api, secret: str) -> str:
    try:
        obj = api.custom.get_cluster_custom_object("mtls-operator.io", "v1alpha1", "mtlsauthorities",
                                                   f"{OPERATOR_NAMESPACE}.{secret}")
    except Exception:
        return ""
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), "")
