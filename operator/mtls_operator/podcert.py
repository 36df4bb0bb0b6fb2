"""Pod certificates: what a PodCertificateRequest (certificates.k8s.io/v1) asks of our signer, whether it is granted,
and the status that answers it — pure, so every rule is tested without a cluster.

The kubelet makes the key on the node and sends only a stub CSR carrying the public key; the identity comes from the
pod the kubelet (and the NodeRestriction admission plugin) vouch for: its namespace and ServiceAccount. So the SPIFFE ID
is derived exactly as for an MtlsIdentity (spec.spiffe_id), nothing in the request can choose it, and DNS names, the
one thing a pod author may ask for (through `unverifiedUserAnnotations`), pass the same policy as an MtlsIdentity's.

The API server's rules for an issued status (pkg/apis/certificates/validation): notBefore and notAfter equal to the
leaf's, notBefore within 5 minutes of its clock, a lifetime between one hour and spec.maxExpirationSeconds, and
beginRefreshAt at least 10 minutes inside both ends. Once a request has a chain or a Denied/Failed/Issued condition,
its status is immutable: such a request is never touched again.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import pki, policy, timestamps
from .spec import DNS_NAME, GROUP, spiffe_id

DEFAULT_SIGNER = f"{GROUP}/spiffe"
TERMINAL = frozenset({"Issued", "Denied", "Failed"})
# The API server's bounds on what a signer may answer.
MIN_LIFETIME = dt.timedelta(hours=1)
REFRESH_MARGIN = dt.timedelta(minutes=10)
MAX_BACKDATE = dt.timedelta(minutes=3)  # notBefore must be within 5 minutes of the API server's clock when written
# The keys a pod author may put in the podCertificate source's userAnnotations; anything else is denied, as the API
# asks of signers, so a typo is never silently ignored.
ANN_DNS_NAMES = f"{GROUP}/dns-names"
KNOWN_ANNOTATIONS = frozenset({ANN_DNS_NAMES})
MAX_DNS_NAMES = 32
# The API's key types this signer signs: the ones an MtlsIdentity may have. P-521 is refused (few TLS stacks offer it
# for signatures; the suggestion names a type that works everywhere).
SUPPORTED_KEYS = ("ECDSAP256", "ECDSAP384", "RSA3072", "RSA4096", "ED25519")
SUGGESTED_KEY = "ECDSAP256"

# Condition reasons (UnsupportedKeyType and InvalidUnverifiedUserAnnotations are the API's own).
UNSUPPORTED_KEY_TYPE = "UnsupportedKeyType"
INVALID_ANNOTATIONS = "InvalidUnverifiedUserAnnotations"
NAMESPACE_NOT_ENABLED = "NamespaceNotEnabled"
POLICY_DENIED = "PolicyDenied"
INVALID_REQUEST = "InvalidRequest"


@dataclasses.dataclass(frozen=True)
class Request:
    namespace: str
    name: str
    uid: str
    resource_version: str
    signer: str
    pod_name: str
    pod_uid: str
    service_account: str
    max_expiration: dt.timedelta
    stub_csr: bytes
    annotations: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Deny:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Sign:
    leaf: pki.LeafRequest
    public_key: pki.PublicKey
    key_type: str
    lifetime: dt.timedelta


def parse(body: Mapping[str, Any]) -> Request:
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    stub = spec.get("stubPKCS10Request") or ""
    try:
        stub_der = base64.b64decode(stub) if stub else b""
    except ValueError:
        stub_der = b""
    return Request(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""), signer=spec.get("signerName", ""),
        pod_name=spec.get("podName", ""), pod_uid=spec.get("podUID", ""),
        service_account=spec.get("serviceAccountName", ""),
        max_expiration=dt.timedelta(seconds=int(spec.get("maxExpirationSeconds") or 86400)),
        stub_csr=stub_der, annotations=dict(spec.get("unverifiedUserAnnotations") or {}))


def settled(body: Mapping[str, Any]) -> bool:
    """A chain or a terminal condition: the API server refuses any further status change, so nothing is tried."""
    status = body.get("status") or {}
    return bool(status.get("certificateChain")) or any(
        c.get("type") in TERMINAL for c in status.get("conditions") or [])


def key_type(public_key: Any) -> str:
    """The API's name for a public key's type ("" for one it has no name for)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ECDSAP256", "secp384r1": "ECDSAP384", "secp521r1": "ECDSAP521"}.get(
            public_key.curve.name, "")
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ED25519"
    return ""


def _dns_names(value: str) -> list[str] | str:
    """The names asked for, or why they cannot be (a message)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if len(names) > MAX_DNS_NAMES:
        return f"{ANN_DNS_NAMES} lists {len(names)} names; at most {MAX_DNS_NAMES} are allowed"
    for name in names:
        if len(name) > 253 or not DNS_NAME.match(name):
            return f"{ANN_DNS_NAMES} entry {name[:64]!r} is not a lower-case DNS name"
    return names


def decide(request: Request, *, signer: str, namespace_enabled: bool, namespace_rule: str,
           rules: Iterable[policy.Rule], trust_domain: str, cluster_domain: str,
           max_lifetime: dt.timedelta) -> Sign | Deny:
    """Whether to sign, and what. Every refusal says what to change."""
    if request.signer != signer:
        raise ValueError(f"request for signer {request.signer!r} given to {signer!r}")
    if not namespace_enabled:
        return Deny(NAMESPACE_NOT_ENABLED, f"namespace {request.namespace} has not opted in to pod certificates from "
                    f"{signer} ({namespace_rule}); a cluster admin enables it, then the pod must be recreated")
    unknown = sorted(set(request.annotations) - KNOWN_ANNOTATIONS)
    if unknown:
        return Deny(INVALID_ANNOTATIONS, f"unknown userAnnotations key(s) {', '.join(k[:80] for k in unknown[:5])}; "
                    f"{signer} understands only {', '.join(sorted(KNOWN_ANNOTATIONS))}")
    try:
        csr = x509.load_der_x509_csr(request.stub_csr)
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return Deny(INVALID_REQUEST, "spec.stubPKCS10Request holds no readable CSR (a request made through an older "
                    "API version?); recreate the pod")
    kind = key_type(public_key)
    if kind not in SUPPORTED_KEYS:
        return Deny(UNSUPPORTED_KEY_TYPE, f"key type {kind or 'unknown'} is not signed by {signer}; use keyType: "
                    f"{SUGGESTED_KEY} (or one of {', '.join(SUPPORTED_KEYS)})")
    dns = _dns_names(request.annotations.get(ANN_DNS_NAMES, ""))
    if isinstance(dns, str):
        return Deny(INVALID_ANNOTATIONS, dns)
    denial = policy.check_names(request.namespace, dns, (), rules, cluster_domain)
    if denial:
        return Deny(POLICY_DENIED, denial)
    lifetime = min(request.max_expiration, max_lifetime)
    leaf = pki.LeafRequest(spiffe_id=spiffe_id(trust_domain, request.namespace, request.service_account),
                           dns_names=tuple(dns), ip_addresses=(), server=True, client=True, duration=lifetime)
    return Sign(leaf=leaf, public_key=public_key, key_type=kind, lifetime=lifetime)


def validity(now: dt.datetime, issuer_not_before: dt.datetime, lifetime: dt.timedelta,
             configured_backdate: dt.timedelta) -> tuple[dt.timedelta, dt.timedelta]:
    """(backdate, duration) for pki.issue_leaf, so that notAfter - notBefore is exactly `lifetime`: the API checks the
    lifetime against spec.maxExpirationSeconds to the second, and a fresh CA's own notBefore may cut the backdate."""
    back = min(configured_backdate, MAX_BACKDATE, max(now - issuer_not_before, dt.timedelta(0)))
    back = dt.timedelta(seconds=int(back.total_seconds()))  # whole seconds, as the certificate keeps them
    return back, lifetime - back


def begin_refresh_at(not_before: dt.datetime, not_after: dt.datetime, uid: str, fraction: float) -> dt.datetime:
    """`fraction` into the lifetime (--pod-cert-refresh, two thirds by default: a third is left to ride out a signer
    outage), spread by up to ±1/12 of it (a fleet started together does not refresh together), and always inside the
    API server's bounds, 10 minutes from either end. Whole seconds: the API keeps no more."""
    lifetime = not_after - not_before
    spread = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF  # 0..1, stable per request
    width = min(1 / 12, fraction, 1 - fraction)  # narrower near the ends: 0 and 1 mean the API's own bounds
    at = not_before + lifetime * (fraction + width * (2 * spread - 1))
    at = max(not_before + REFRESH_MARGIN, min(at, not_after - REFRESH_MARGIN))
    return at.replace(microsecond=0)


def _condition(kind: str, reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason, "message": message[:4096],
            "lastTransitionTime": timestamps.text(now)}


def issued_status(cert: x509.Certificate, chain_pem: bytes, uid: str, now: dt.datetime,
                  refresh: float) -> dict[str, Any]:
    """The one status write that answers a request: the chain, the Issued condition and the three times together."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    return {
        "certificateChain": (pki.to_pem(cert) + chain_pem).decode(),
        "notBefore": timestamps.text(not_before), "notAfter": timestamps.text(not_after),
        "beginRefreshAt": timestamps.text(begin_refresh_at(not_before, not_after, uid, refresh)),
        "conditions": [_condition("Issued", "Issued", f"serial {pki.serial_hex(cert)} for "
                                  f"{', '.join(pki.spiffe_ids(cert))}", now)],
    }


def lifetime_problem(cert: x509.Certificate) -> str | None:
    """The issuing CA cut the leaf below the API's one-hour minimum (it expires within the hour): not signable now."""
    if cert.not_valid_after_utc - cert.not_valid_before_utc < MIN_LIFETIME:
        return (f"the issuing CA expires at {timestamps.text(cert.not_valid_after_utc)}, too soon for the one-hour "
                f"minimum lifetime of a pod certificate")
    return None


def denied_status(deny: Deny, now: dt.datetime) -> dict[str, Any]:
    return {"conditions": [_condition("Denied", deny.reason, deny.message, now)]}
