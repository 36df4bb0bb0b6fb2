"""What an identity Secret holds, judged from its bytes, for `kubectl mtls inspect secret`: each certificate of the
chain, the names, the key's type and whether it fits, and the chain verified twice — against the Secret's own ca.crt
(what the workload mounting it trusts) and against the cluster's current trust bundle (what its peers trust), which
differ while a root rotation propagates or when a Secret was copied from elsewhere.

Pure: no API, no clock read (callers pass `now`). The private key is parsed only to learn its type and whether it
belongs to the certificate; nothing derived from it leaves this module — no PEM, no bytes, no fingerprint. The public
key is named by the certificate's SPKI SHA-256, which is public.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from .. import pki, tlssecret
from . import times

MAX_PATH = 8  # certificates between leaf and anchor, at most: a loop in a crafted bundle must end
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


@dataclasses.dataclass(frozen=True)
class CertInfo:
    """One certificate, as people compare them: names, serial, validity, fingerprint."""

    subject: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str  # SHA-256 of the DER
    is_ca: bool
    public_key: str  # ECDSA-256, RSA-2048, ...

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertInfo:
        return cls(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                   serial=pki.serial_hex(cert), not_before=cert.not_valid_before_utc,
                   not_after=cert.not_valid_after_utc, fingerprint=pki.fingerprint(cert), is_ca=pki.is_ca(cert),
                   public_key=pki.key_label(cert.public_key()))  # type: ignore[arg-type]

    def window(self, now: dt.datetime) -> str:
        if now < self.not_before:
            return "not yet valid"
        return "expired" if now > self.not_after else "valid"

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "serialNumber": self.serial,
                "notBefore": times.iso(self.not_before), "notAfter": times.iso(self.not_after),
                "validity": self.window(now), "sha256": self.fingerprint, "isCA": self.is_ca,
                "publicKey": self.public_key}


@dataclasses.dataclass(frozen=True)
class TrustBundle:
    """The cluster's view of what peers trust, and where it came from. Either certificates (the trust-bundle
    ConfigMap) or fingerprints only (an MtlsAuthority's status lists its anchors by fingerprint, not by PEM: then the
    anchor certificate itself must come from the Secret, and is accepted only when its fingerprint is listed)."""

    source: str  # e.g. "ConfigMap payments/mtls-trust-bundle", "MtlsAuthority mtls-operator.mtls-operator-ca"
    anchors: tuple[x509.Certificate, ...] = ()
    fingerprints: frozenset[str] = frozenset()
    unavailable: str = ""  # why no bundle could be read ("" when one was)
    note: str = ""  # e.g. why the first choice was not used

    @classmethod
    def from_pem(cls, source: str, pem: bytes, note: str = "") -> TrustBundle:
        try:
            return cls(source=source, anchors=tuple(pki.load_chain(pem)), note=note)
        except pki.PKIError as e:
            return cls(source=source, unavailable=f"{source} holds no readable certificate ({e})", note=note)

    @classmethod
    def from_authorities(cls, authorities: Sequence[Mapping[str, Any]], note: str = "") -> TrustBundle:
        names, prints = [], set()
        for authority in authorities:
            anchors = [a.get("fingerprint") for a in (authority.get("status") or {}).get("trustAnchors") or []
                       if isinstance(a, Mapping) and a.get("fingerprint")]
            if anchors:
                names.append(str((authority.get("metadata") or {}).get("name")))
                prints.update(str(f).lower() for f in anchors)
        if not prints:
            return cls(source="", unavailable="no MtlsAuthority lists trust anchors", note=note)
        label = "MtlsAuthority" if len(names) == 1 else "MtlsAuthorities"
        return cls(source=f"{label} {', '.join(names)} (trust anchors by SHA-256 fingerprint)",
                   fingerprints=frozenset(prints), note=note)


@dataclasses.dataclass(frozen=True)
class Verification:
    against: str  # "ca.crt" or the cluster bundle's source
    verified: bool | None  # None: not attempted (no bundle to verify against)
    path: tuple[str, ...] = ()  # subjects from the leaf up to the anchor
    anchor_fingerprint: str = ""
    problems: tuple[str, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"against": self.against or None, "verified": self.verified, "path": list(self.path),
                "anchorSha256": self.anchor_fingerprint or None, "problems": list(self.problems),
                "note": self.note or None}


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What may be said about tls.key: whether it is there and readable, its type, whether it fits the leaf."""

    present: bool
    type: str = ""
    matches_certificate: bool | None = None  # None: could not be compared
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"present": self.present, "type": self.type or None, "matchesCertificate": self.matches_certificate,
                "problem": self.problem or None}


@dataclasses.dataclass(frozen=True)
class SecretReport:
    namespace: str
    name: str
    secret_type: str
    owner: str  # "MtlsIdentity <name>" when an identity controls it
    chain: tuple[CertInfo, ...]  # tls.crt: leaf first
    bundle: tuple[CertInfo, ...]  # ca.crt
    spiffe_ids: tuple[str, ...]
    uris: tuple[str, ...]  # URI SANs other than SPIFFE IDs
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    spki_sha256: str  # of the leaf's public key
    key: KeyInfo
    own: Verification
    cluster: Verification
    problems: tuple[str, ...]
    now: dt.datetime

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "SecretInspection", "namespace": self.namespace, "name": self.name, "ok": self.ok,
            "type": self.secret_type or None, "owner": self.owner or None,
            "chain": [c.to_dict(self.now) for c in self.chain], "caBundle": [c.to_dict(self.now) for c in self.bundle],
            "sans": {"spiffeIDs": list(self.spiffe_ids), "uris": list(self.uris), "dnsNames": list(self.dns_names),
                     "ipAddresses": list(self.ip_addresses)},
            "extendedKeyUsage": list(self.extended_key_usage), "publicKeySha256": self.spki_sha256 or None,
            "key": self.key.to_dict(),
            "verification": {"caCrt": self.own.to_dict(), "cluster": self.cluster.to_dict()},
            "problems": list(self.problems),
        }


def _certs(pem: bytes) -> tuple[list[x509.Certificate], str]:
    if not pem:
        return [], "missing"
    try:
        return pki.load_chain(pem), ""
    except pki.PKIError as e:
        return [], str(e)


def _key_info(pem: bytes, leaf: x509.Certificate | None) -> KeyInfo:
    """Reads the key only to compare it; the key object never leaves this function."""
    if not pem:
        return KeyInfo(present=False, problem="tls.key is missing")
    try:
        key = pki.load_key(pem)
    except pki.PKIError as e:  # pki's messages never echo key bytes
        return KeyInfo(present=True, problem=f"tls.key: {e}")
    label = pki.key_label(key)
    if leaf is None:
        return KeyInfo(present=True, type=label)
    matches = pki.key_matches(leaf, key)
    return KeyInfo(present=True, type=label, matches_certificate=matches,
                   problem="" if matches else "tls.key does not belong to the certificate in tls.crt")


def _spki_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), (), ()
    uris = tuple(u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if not u.startswith("spiffe://"))
    return (uris, tuple(san.get_values_for_type(x509.DNSName)),
            tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def _eku(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_EKU_NAMES.get(u, u.dotted_string) for u in usages)


def _label(cert: x509.Certificate) -> str:
    """A certificate in a path: its subject, or for an X.509-SVID (empty subject) its SPIFFE ID."""
    subject = cert.subject.rfc4514_string()
    if subject:
        return subject
    ids = pki.spiffe_ids(cert)
    return f"<{ids[0]}>" if ids else "(empty subject)"


def _role(index: int, length: int) -> str:
    return "the leaf" if index == 0 else "the anchor" if index == length - 1 else f"intermediate {index}"


def verify(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], anchors: Iterable[x509.Certificate],
           now: dt.datetime, against: str) -> Verification:
    """Builds the path leaf → intermediates → an anchor by signatures (not by names alone), then checks what a TLS
    peer checks on it: every certificate within its validity, every issuer a CA allowed to sign certificates."""
    anchors = list(anchors)
    if not anchors:
        return Verification(against=against, verified=False, problems=(f"{against} holds no certificate",))
    path, pool, anchor = [leaf], list(intermediates), None
    while len(path) <= MAX_PATH:
        current = path[-1]
        if len(path) > 1 and current in anchors:
            anchor = current
            break
        anchor = next((a for a in anchors if pki.issued_by(current, a)), None)
        if anchor is not None:
            path.append(anchor)
            break
        parent = next((c for c in pool if c != current and pki.issued_by(current, c)), None)
        if parent is None:
            break
        pool.remove(parent)
        path.append(parent)
    if anchor is None:
        top = path[-1]
        what = "the leaf" if top is leaf else "the top of tls.crt's chain"
        if any(a.subject == top.issuer for a in anchors):
            why = (f"{against} holds a CA named {top.issuer.rfc4514_string()!r}, but another key signed {what}: a "
                   f"different CA of the same name (another cluster's, or a root since rotated)")
        else:
            why = (f"{what} was issued by {top.issuer.rfc4514_string()!r}, which is none of the {len(anchors)} "
                   f"certificate(s) in {against}")
        return Verification(against=against, verified=False, path=tuple(_label(c) for c in path), problems=(why,))
    problems = []
    for i, cert in enumerate(path):
        info = CertInfo.of(cert)
        window = info.window(now)
        if window != "valid":
            problems.append(f"{_role(i, len(path))} is {window} ({times.iso(info.not_before)} to "
                            f"{times.iso(info.not_after)})")
        if i > 0 and not (pki.is_ca(cert) and pki.can_sign_certificates(cert)):
            problems.append(f"{_role(i, len(path))} {info.subject!r} is not a CA allowed to sign certificates")
    return Verification(against=against, verified=not problems, path=tuple(_label(c) for c in path),
                        anchor_fingerprint=pki.fingerprint(path[-1]), problems=tuple(problems))


def _verify_cluster(leaf: x509.Certificate, chain: Sequence[x509.Certificate], own_bundle: Sequence[x509.Certificate],
                    trust: TrustBundle, now: dt.datetime) -> Verification:
    if trust.unavailable:
        return Verification(against=trust.source, verified=None, note="; ".join(
            p for p in (trust.note, f"not verified against the cluster: {trust.unavailable}") if p))
    if trust.anchors:
        result = verify(leaf, chain[1:], trust.anchors, now, trust.source)
    else:
        # Anchors known by fingerprint only: a certificate the Secret carries stands in for one when it is exactly
        # that certificate (same SHA-256 over the DER), which is as strong as holding its PEM.
        candidates = [c for c in (*chain[1:], *own_bundle) if pki.fingerprint(c) in trust.fingerprints]
        if not candidates:
            return Verification(against=trust.source, verified=False, note=trust.note, problems=(
                f"none of the certificates in tls.crt or ca.crt is one of the {len(trust.fingerprints)} trust "
                f"anchor(s) of {trust.source}",))
        result = verify(leaf, chain[1:], candidates, now, trust.source)
    return dataclasses.replace(result, note=trust.note) if trust.note else result


def inspect(namespace: str, name: str, body: Mapping[str, Any], trust: TrustBundle, now: dt.datetime) -> SecretReport:
    """The report on one Secret, as the API returned it (data base64-encoded)."""
    data = tlssecret.decode_data(body)
    owner_ref = tlssecret.controller_ref(body)
    chain, chain_problem = _certs(data.get("tls.crt", b""))
    bundle, bundle_problem = _certs(data.get("ca.crt", b""))
    leaf = chain[0] if chain else None
    key = _key_info(data.get("tls.key", b""), leaf)
    problems: list[str] = []
    if chain_problem:
        problems.append(f"tls.crt: {chain_problem}")
    if bundle_problem:
        problems.append(f"ca.crt: {bundle_problem}")
    if key.problem:
        problems.append(key.problem)

    spiffe: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    eku: tuple[str, ...] = ()
    spki = ""
    if leaf is None:
        own = Verification(against="ca.crt", verified=None, note="no certificate to verify")
        cluster = Verification(against=trust.source, verified=None, note="no certificate to verify")
    else:
        spiffe, (uris, dns, ips), eku, spki = pki.spiffe_ids(leaf), _sans(leaf), _eku(leaf), _spki_sha256(leaf)
        leaf_info = CertInfo.of(leaf)
        if leaf_info.window(now) != "valid":
            problems.append(f"the certificate is {leaf_info.window(now)} (valid {times.iso(leaf_info.not_before)} to "
                            f"{times.iso(leaf_info.not_after)})")
        if len(spiffe) != 1:
            problems.append(f"an X.509-SVID names exactly one SPIFFE ID; this one names {len(spiffe)}")
        expected = ((body.get("metadata") or {}).get("annotations") or {}).get(tlssecret.ANN_SPIFFE_ID)
        if expected and spiffe and expected not in spiffe:
            problems.append(f"the SPIFFE ID is not the one the Secret's {tlssecret.ANN_SPIFFE_ID} annotation records "
                            f"({expected})")
        own = (verify(leaf, chain[1:], bundle, now, "ca.crt") if bundle else
               Verification(against="ca.crt", verified=False, problems=("ca.crt is missing or unreadable",)))
        cluster = _verify_cluster(leaf, chain, bundle, trust, now)
        # The leaf's own validity is said once above, not again per verification.
        problems += [f"against ca.crt: {p}" for p in own.problems if bundle and not p.startswith("the leaf is ")]
        problems += [f"against the cluster's trust bundle: {p}" for p in cluster.problems
                     if not p.startswith("the leaf is ")]
    return SecretReport(
        namespace=namespace, name=name, secret_type=str(body.get("type") or ""),
        owner=f"{owner_ref.get('kind')} {owner_ref.get('name')}" if owner_ref else "",
        chain=tuple(CertInfo.of(c) for c in chain), bundle=tuple(CertInfo.of(c) for c in bundle),
        spiffe_ids=spiffe, uris=uris, dns_names=dns, ip_addresses=ips, extended_key_usage=eku, spki_sha256=spki,
        key=key, own=own, cluster=cluster, problems=tuple(dict.fromkeys(problems)), now=now)
