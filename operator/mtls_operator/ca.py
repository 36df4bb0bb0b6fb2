"""The issuing CA: what a usable one is, how a fresh root is made, and the trust bundle that identities carry.

The CA lives in a Secret in the operator's namespace: `tls.crt` (the issuing CA first, then any intermediates above it),
`tls.key`, and optionally `ca.crt` (the trust anchors, needed when tls.crt is an intermediate whose root stays outside
the cluster). A self-made root has only tls.crt and tls.key; its bundle is itself. Validation here is pure; fetching and
the race-safe create-if-absent are in kube.py and handlers.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
from collections.abc import Mapping

from cryptography import x509

from . import pki, timestamps
from .config import Settings

ROOT_COMMON_NAME = "mtls-operator root CA"
INTERMEDIATE_COMMON_NAME = "mtls-operator issuing CA"


class CAError(ValueError):
    """The CA Secret cannot be used to issue; the message says why, without any key material."""


@dataclasses.dataclass(frozen=True)
class CA:
    cert: x509.Certificate  # the issuing CA
    key: pki.PrivateKey
    chain: tuple[x509.Certificate, ...]  # what follows the leaf in tls.crt: `cert` if an intermediate, and above
    bundle_pem: bytes  # trust anchors: what ca.crt in every identity Secret holds
    fingerprint: str  # of `cert`: names the issuer in status and annotations
    # Roots whose key was lost, still in the bundle while a recovery (caloss.py) propagates the new root: leaves they
    # issued are kept until then instead of being swapped all at once.
    legacy_roots: tuple[x509.Certificate, ...] = ()

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def chain_pem(self) -> bytes:
        return self._chain_pem

    @functools.cached_property
    def _chain_pem(self) -> bytes:  # every decision compares a Secret's chain with it: encoded once per loaded CA
        return pki.to_pem(*self.chain)

    @functools.cached_property
    def bundle_digest(self) -> str:
        """pki.digest of the bundle, as the Secrets written with it record it (tlssecret.ANN_BUNDLE)."""
        return pki.digest(self.bundle_pem)

    @functools.cached_property
    def chain_digest(self) -> str:
        return pki.digest(self.chain_pem())

    @functools.cached_property
    def anchor_fingerprint(self) -> str:
        """The trust anchor (root in the bundle) that the issuer's certificates chain to: the issuer itself when it is
        a root. A root rotation retires anchors, so what was signed is recorded against the anchor. Worked out once
        per loaded CA (it verifies signatures), not per pod certificate."""
        top = (self.chain or (self.cert,))[-1]
        if _is_self_signed(top):
            return pki.fingerprint(top)
        anchors = pki.load_chain(self.bundle_pem)
        return next((pki.fingerprint(a) for a in anchors if pki.issued_by(top, a)), pki.fingerprint(top))


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and pki.issued_by(cert, cert)


def load(data: Mapping[str, bytes], now: dt.datetime) -> CA:
    """Validates a CA Secret's decoded data. Every failure names the field and the rule, never the key bytes."""
    if not data.get("tls.crt") or not data.get("tls.key"):
        missing = [k for k in ("tls.crt", "tls.key") if not data.get(k)]
        raise CAError(f"CA Secret lacks {' and '.join(missing)}")
    try:
        certs = pki.load_chain(data["tls.crt"])
    except pki.PKIError as e:
        raise CAError(f"CA tls.crt: {e}") from None
    try:
        key = pki.load_key(data["tls.key"])
    except pki.PKIError as e:
        raise CAError(f"CA tls.key: {e}") from None
    cert = certs[0]
    if not pki.is_ca(cert):
        raise CAError("CA tls.crt is not a CA certificate (BasicConstraints CA:TRUE is missing)")
    if not pki.can_sign_certificates(cert):
        raise CAError("CA tls.crt may not sign certificates (KeyUsage lacks keyCertSign)")
    if not pki.key_matches(cert, key):
        raise CAError("CA tls.key does not belong to the certificate in tls.crt")
    if cert.not_valid_after_utc <= now:
        raise CAError(f"CA certificate expired at {cert.not_valid_after_utc.isoformat()}")
    if cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise CAError(f"CA certificate is not valid before {cert.not_valid_before_utc.isoformat()}")
    for lower, upper in itertools.pairwise(certs):
        if not pki.issued_by(lower, upper):
            raise CAError(f"CA tls.crt chain is broken: {lower.subject.rfc4514_string()!r} is not signed by the "
                          f"next certificate {upper.subject.rfc4514_string()!r}")

    if data.get("ca.crt"):
        try:
            anchors = pki.load_chain(data["ca.crt"])
        except pki.PKIError as e:
            raise CAError(f"CA ca.crt: {e}") from None
        top = certs[-1]
        if not (_is_self_signed(top) and any(a == top for a in anchors)) and not any(
                pki.issued_by(top, a) for a in anchors):
            raise CAError("CA ca.crt does not hold the root that tls.crt chains up to")
    elif _is_self_signed(certs[-1]):
        anchors = [certs[-1]]
    else:
        raise CAError("CA tls.crt is an intermediate but the Secret has no ca.crt with its root")

    # Peers need every certificate between the leaf and their trust anchor: the issuing CA itself when it is an
    # intermediate, and any above it. A self-signed root is never sent; peers have it in ca.crt.
    chain = tuple(c for c in certs if not _is_self_signed(c))
    _trial_sign(cert, key, now)
    return CA(cert=cert, key=key, chain=chain, bundle_pem=pki.to_pem(*anchors), fingerprint=pki.fingerprint(cert))


def _trial_sign(cert: x509.Certificate, key: pki.PrivateKey, now: dt.datetime) -> None:
    """Proves the key really signs something the certificate verifies, before any workload depends on it."""
    probe = pki.LeafRequest(spiffe_id="spiffe://probe.invalid/ca-check", dns_names=(), ip_addresses=(),
                            server=False, client=True, duration=dt.timedelta(minutes=1))
    try:
        leaf = pki.issue_leaf(probe, pki.generate_key("ECDSA", 256).public_key(), cert, key, now, dt.timedelta())
    except Exception as e:  # any failure to sign is a CA the operator must not use
        raise CAError(f"CA key cannot sign ({type(e).__name__})") from None
    if not pki.issued_by(leaf, cert):
        raise CAError("a certificate signed with the CA key does not verify against the CA certificate")


def new_root(settings: Settings, now: dt.datetime) -> dict[str, bytes]:
    """Data for a fresh self-signed root Secret: tls.crt, tls.key, and ca.crt (the trust bundle, which holds both
    roots while one replaces the other)."""
    algorithm, _, size = settings.ca_key.partition("-")
    key = pki.generate_key(algorithm, int(size or 0))
    stamp = now.strftime("%Y-%m-%dT%H:%MZ")
    cert = pki.self_signed_ca(key, f"{ROOT_COMMON_NAME} {stamp}", settings.trust_domain, now, settings.ca_lifetime)
    return {"tls.crt": pki.to_pem(cert), "tls.key": pki.key_to_pem(key), "ca.crt": pki.to_pem(cert)}


def new_intermediate(root_data: Mapping[str, bytes], settings: Settings, now: dt.datetime) -> dict[str, bytes]:
    """Data for an issuing-CA Secret under the operator's root: tls.crt (the intermediate), tls.key, and ca.crt (the
    root's bundle, what peers trust)."""
    root = load(root_data, now)
    algorithm, _, size = settings.ca_key.partition("-")
    key = pki.generate_key(algorithm, int(size or 0))
    stamp = timestamps.text(now)
    cert = pki.intermediate_ca(key.public_key(), root.cert, root.key, f"{INTERMEDIATE_COMMON_NAME} {stamp}",
                               settings.trust_domain, now, settings.intermediate_lifetime)
    return {"tls.crt": pki.to_pem(cert), "tls.key": pki.key_to_pem(key), "ca.crt": root.bundle_pem}
