"""Real certificates, keys and Secret bodies for the kubectl-mtls unit tests, made with the operator's own pki.py,
ca.py and tlssecret.py (no fixtures on disk: nothing here can go stale)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools

from mtls_operator import ca as ca_mod
from mtls_operator import pki, spec, tlssecret
from mtls_operator.config import Settings

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
UID = "11111111-2222-3333-4444-555555555555"
SETTINGS = Settings(min_duration=dt.timedelta(seconds=10))


@functools.cache
def root(tag: str = "a") -> ca_mod.CA:
    """A root CA. Every tag is a different key under the *same* name (a stamp of NOW), as two clusters' roots, or a
    root before and after a rotation, can be."""
    return ca_mod.load(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=30)), NOW)


@functools.cache
def intermediate() -> ca_mod.CA:
    return ca_mod.load(ca_mod.new_intermediate(ca_mod.new_root(Settings(), NOW - dt.timedelta(days=1)), Settings(),
                                               NOW - dt.timedelta(hours=1)), NOW)


@dataclasses.dataclass(frozen=True)
class Issued:
    body: dict  # the Secret as the API returns it
    key_pem: bytes  # tls.key, to search outputs for
    cert: object


def identity(name: str = "api", namespace: str = "payments", **spec_fields) -> spec.IdentitySpec:
    return spec.parse(namespace, name, dict(spec_fields), SETTINGS)


def issue(authority: ca_mod.CA | None = None, now: dt.datetime = NOW, duration: str = "24h",
          key: pki.PrivateKey | None = None, ca_pem: bytes | None = None, name: str = "api",
          namespace: str = "payments", algorithm: str = "ECDSA", **spec_fields) -> Issued:
    """An identity Secret exactly as the operator writes it."""
    authority = authority or root()
    ident = identity(name, namespace, duration=duration, **spec_fields)
    leaf_key = key or pki.generate_key(algorithm, 0)
    request = pki.LeafRequest(ident.spiffe_id, ident.dns_names, ident.ip_addresses, ident.server, ident.client,
                              ident.duration)
    cert = pki.issue_leaf(request, leaf_key.public_key(), authority.cert, authority.key, now, dt.timedelta(minutes=5))
    body = tlssecret.build(ident, UID, cert, leaf_key, authority.chain_pem(),
                           authority.bundle_pem if ca_pem is None else ca_pem,
                           tlssecret.record(ident, cert, authority.fingerprint, 1, ""), "7")
    return Issued(body=body, key_pem=pki.key_to_pem(leaf_key), cert=cert)


def with_key(issued: Issued, key: pki.PrivateKey) -> Issued:
    """The same Secret with another tls.key (a swapped key)."""
    pem = pki.key_to_pem(key)
    body = {**issued.body, "data": {**issued.body["data"], "tls.key": base64.b64encode(pem).decode()}}
    return Issued(body=body, key_pem=pem, cert=issued.cert)


def key_fragments(key_pem: bytes) -> list[str]:
    """What must never appear in any output: the PEM, each base64 line of its body, the body joined, and the base64
    of the whole PEM as a Secret's data holds it (and long slices of each)."""
    text = key_pem.decode()
    body_lines = [line for line in text.splitlines() if line and not line.startswith("-----")]
    joined = "".join(body_lines)
    secret_b64 = base64.b64encode(key_pem).decode()
    fragments = [text, joined, secret_b64, *body_lines]
    fragments += [joined[i:i + 24] for i in range(0, len(joined) - 24, 12)]
    fragments += [secret_b64[i:i + 24] for i in range(0, len(secret_b64) - 24, 12)]
    return [f for f in fragments if len(f) >= 16]


def assert_no_key_material(output: str, key_pem: bytes) -> None:
    assert "PRIVATE KEY" not in output
    for fragment in key_fragments(key_pem):
        assert fragment not in output, "key material in the output"
