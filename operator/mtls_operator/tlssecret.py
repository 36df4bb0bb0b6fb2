"""The identity Secret's format, both ways: the body the operator writes, and what it reads back out of one.

A `kubernetes.io/tls` Secret (tls.crt = leaf then intermediates, tls.key = PKCS#8, ca.crt = trust bundle) so ingress
controllers and cert-manager consumers understand it. The Secret is the operator's record of what it issued:
annotations carry revision, spec hash and issuer, so a restarted operator re-derives everything from it (the
identity's status only records which version of the Secret the operator wrote last: plan.standing).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from . import pki, timestamps
from .spec import GROUP, KIND, VERSION, IdentitySpec

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "mtls-operator"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"  # the server-side filter of the operator's Secret watch

ANN_SERIAL = f"{GROUP}/serial"
ANN_NOT_AFTER = f"{GROUP}/not-after"
ANN_REVISION = f"{GROUP}/revision"
ANN_SPEC_HASH = f"{GROUP}/spec-hash"
ANN_ISSUER = f"{GROUP}/issuer-fingerprint"
ANN_SPIFFE_ID = f"{GROUP}/spiffe-id"
# "<namespace>/<name>" of the CA Secret that issued it: ties the issuer fingerprint to one CA, so that after that CA
# Secret is lost, its certificates in use are told apart from another CA's (caloss.py).
ANN_CA_SECRET = f"{GROUP}/ca-secret"
ANN_RENEW_HANDLED = f"{GROUP}/renew-handled"
# pki.digest of ca.crt and of the chain in tls.crt, as written. With the resourceVersion the identity's status records
# (status.secretResourceVersion), they tell a restarted operator what the Secret holds without reading its data
# (plan.standing).
ANN_BUNDLE = f"{GROUP}/bundle-digest"
ANN_CHAIN = f"{GROUP}/chain-digest"
# Set on the MtlsIdentity by a user ("renew now"): any new value, e.g. a timestamp, triggers one reissue.
ANN_RENEW_REQUEST = f"{GROUP}/renew"
# On the pod template of a restartTargets workload: the certificate its pods were rolled for, and when.
ANN_ROLLED_SERIAL = f"{GROUP}/rolled-for-serial"
ANN_ROLLED_AT = f"{GROUP}/rolled-at"


@dataclasses.dataclass(frozen=True)
class SecretView:
    """What the identity's Secret holds, as far as the decision needs to know."""

    exists: bool
    owned: bool = False
    # What the decision reads is worked out once, when the Secret is read, and kept as plain values: a view lives as
    # long as its Secret is unchanged (10,000 of them at once), and each parsed object kept costs memory — a
    # certificate whose extensions were read holds them parsed (3 KB more), a private key is about 2 KB of OpenSSL's.
    cert: x509.Certificate | None = None  # the leaf, whose extensions are never read (pki.bare)
    spiffe_ids: tuple[str, ...] = ()  # the leaf's SPIFFE IDs
    key_pem: bytes = b""  # tls.key as read; empty when missing or unreadable. private_key() parses it
    key_label: str = ""  # pki.key_label of the key ("ECDSA-256", "RSA-2048"...), "" when unreadable
    key_fits: bool = False  # the key belongs to the certificate
    chain_pem: bytes = b""  # the part of tls.crt after the leaf
    ca_pem: bytes = b""
    problem: str = ""  # why cert or key could not be read
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    resource_version: str = ""
    # `immutable: true` on the Secret: the API server refuses every change to its data, so nothing can be renewed in
    # it; only deleting it (the operator then recreates it) brings it back under management.
    immutable: bool = False
    # Whether the leaf was issued by a given CA certificate (a signature check, about 0.3 ms): each view is decided
    # on many times, against the CA in force, rarely another.
    _issuers: dict[x509.Certificate, bool] = dataclasses.field(default_factory=dict, init=False, compare=False,
                                                                repr=False)

    def issued_by(self, issuer: x509.Certificate) -> bool:
        if self.cert is None:
            return False
        known = self._issuers.get(issuer)
        if known is None:
            known = self._issuers[issuer] = pki.issued_by(self.cert, issuer)
        return known

    def private_key(self) -> pki.PrivateKey:
        """The key, parsed (read() has parsed it once already: it does not fail)."""
        return pki.load_key(self.key_pem)

    @property
    def revision(self) -> int:
        try:
            return int(self.annotations.get(ANN_REVISION, "0"))
        except ValueError:
            return 0


ABSENT = SecretView(exists=False)


def controller_ref(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ownerReference of the MtlsIdentity that controls this Secret, or {} when none does."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref
    return {}


def b64(raw: bytes) -> str:
    """How bytes go into a Secret's (or ConfigMap's binary) data."""
    return base64.b64encode(raw).decode()


def decode_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's data, decoded; a field that is not valid base64 reads as empty (never raises)."""
    data = body.get("data") or {}
    return {k: decode_field(data, k) for k in data}


def decode_field(data: Mapping[str, str], field: str) -> bytes:
    raw = data.get(field)
    if not raw:
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        return b""


def read(body: Mapping[str, Any] | None, identity_uid: str) -> SecretView:
    """Parses a Secret body (as the API returns it). Never raises: a broken Secret is a view with a problem."""
    if not body:
        return ABSENT
    meta = body.get("metadata") or {}
    common = dict(labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
                  resource_version=meta.get("resourceVersion", ""), immutable=body.get("immutable") is True)
    if controller_ref(body).get("uid") != identity_uid:
        return SecretView(exists=True, owned=False, **common)
    data = body.get("data") or {}
    crt, key_pem, ca_pem = decode_field(data, "tls.crt"), decode_field(data, "tls.key"), decode_field(data, "ca.crt")
    cert = key = None
    chain_pem = b""
    spiffe_ids: tuple[str, ...] = ()
    problems = []
    try:
        chain = pki.load_chain(crt)
        # Anyone who may edit the Secret may paste in a certificate whose extensions do not parse (a malformed SAN,
        # a duplicated extension): that is a content problem to heal, never an exception.
        spiffe_ids = pki.spiffe_ids(chain[0])
        cert, chain_pem = pki.bare(chain[0]), pki.to_pem(*chain[1:])
    except (pki.PKIError, ValueError, UnsupportedAlgorithm, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType) as e:
        problems.append(f"tls.crt: {e}")
    try:
        key = pki.load_key(key_pem)
    except pki.PKIError as e:
        problems.append(f"tls.key: {e}")
    fits = False
    if cert is not None and key is not None:
        try:
            fits = pki.key_matches(cert, key)
        except (ValueError, UnsupportedAlgorithm) as e:
            problems.append(f"tls.crt: {e}")
    # The key is kept as this process writes it: the PEM of tls.key may carry any text around the key block.
    return SecretView(exists=True, owned=True, cert=cert, spiffe_ids=spiffe_ids,
                      key_pem=pki.key_to_pem(key) if key else b"", key_label=pki.key_label(key) if key else "",
                      key_fits=fits, chain_pem=chain_pem, ca_pem=ca_pem, problem="; ".join(problems), **common)


def desired_labels(spec: IdentitySpec) -> dict[str, str]:
    return {**spec.secret_labels, MANAGED_BY: MANAGED_BY_VALUE}


def build(spec: IdentitySpec, identity_uid: str, cert: x509.Certificate, key: pki.PrivateKey, chain_pem: bytes,
          ca_pem: bytes, annotations: Mapping[str, str], resource_version: str = "") -> dict[str, Any]:
    """The whole Secret body, for a create or a full replace (with resourceVersion: optimistic concurrency)."""
    metadata: dict[str, Any] = {
        "name": spec.secret_name,
        "namespace": spec.namespace,
        "labels": desired_labels(spec),
        "annotations": {**spec.secret_annotations, **annotations, ANN_BUNDLE: pki.digest(ca_pem),
                        ANN_CHAIN: pki.digest(chain_pem)},
        "ownerReferences": [{
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": spec.name, "uid": identity_uid,
            "controller": True, "blockOwnerDeletion": False,
        }],
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": metadata,
        "data": {
            "tls.crt": b64(pki.to_pem(cert) + chain_pem),
            "tls.key": b64(pki.key_to_pem(key)),
            "ca.crt": b64(ca_pem),
        },
    }


def record(spec: IdentitySpec, cert: x509.Certificate, issuer_fingerprint: str, revision: int,
           renew_handled: str, ca_secret: str = "") -> dict[str, str]:
    """The annotations that make the Secret its own record of issuance."""
    out = {
        ANN_SERIAL: pki.serial_hex(cert),
        ANN_NOT_AFTER: timestamps.text(cert.not_valid_after_utc),
        ANN_REVISION: str(revision),
        ANN_SPEC_HASH: spec.shape_hash,
        ANN_ISSUER: issuer_fingerprint,
        ANN_SPIFFE_ID: spec.spiffe_id,
    }
    if renew_handled:
        out[ANN_RENEW_HANDLED] = renew_handled
    if ca_secret:
        out[ANN_CA_SECRET] = ca_secret
    return out
