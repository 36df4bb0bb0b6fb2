"""What a good identity Secret is, judged from the outside — as a workload that mounts it would: the leaf chains to a
root in ca.crt, every certificate on the way is in its validity window, the private key belongs to the leaf, and the
leaf names exactly the SPIFFE ID it should. Pure; used by `mtls-operator selftest` (the chart's `helm test`).

Deliberately independent of pki.py and ca.py: a check that reused the operator's own reading of certificates would share
its mistakes. Messages never quote key material.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

MAX_CHAIN = 8


def _certs(pem: bytes, field: str, problems: list[str]) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        problems.append(f"{field} holds no readable PEM certificate")
        return []
    return certs


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # a bad signature, an issuer name mismatch, another key type
        return False
    return True


def _path_to_root(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                  roots: list[x509.Certificate]) -> list[x509.Certificate] | None:
    """leaf, intermediates..., root — or None when no root in ca.crt is reached."""
    path = [leaf]
    pool = list(intermediates)
    while len(path) <= MAX_CHAIN:
        current = path[-1]
        root = next((r for r in roots if _signed_by(current, r)), None)
        if root is not None:
            return [*path, root]
        parent = next((c for c in pool if _signed_by(current, c)), None)
        if parent is None:
            return None
        pool.remove(parent)
        path.append(parent)
    return None


def _in_window(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def problems(data: Mapping[str, bytes], spiffe_id: str, now: dt.datetime) -> list[str]:
    """Everything wrong with an identity Secret's decoded data; empty when it is good."""
    found: list[str] = []
    missing = [k for k in ("tls.crt", "tls.key", "ca.crt") if not data.get(k)]
    if missing:
        return [f"the Secret lacks {', '.join(missing)}"]
    chain = _certs(data["tls.crt"], "tls.crt", found)
    roots = _certs(data["ca.crt"], "ca.crt", found)
    if not chain or not roots:
        return found
    leaf = chain[0]

    try:
        key = serialization.load_pem_private_key(data["tls.key"], password=None)
    except (ValueError, TypeError):
        found.append("tls.key is not an unencrypted PEM private key")
    else:
        if _spki(key.public_key()) != _spki(leaf.public_key()):
            found.append("tls.key does not belong to the certificate in tls.crt")

    path = _path_to_root(leaf, chain[1:], roots)
    if path is None:
        found.append("tls.crt does not chain to any certificate in ca.crt")
    else:
        for i, cert in enumerate(path):
            if not _in_window(cert, now):
                what = "the leaf" if i == 0 else "the root" if i == len(path) - 1 else f"intermediate {i}"
                found.append(f"{what} is outside its validity ({cert.not_valid_before_utc.isoformat()} to "
                             f"{cert.not_valid_after_utc.isoformat()})")

    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            found.append("the leaf is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [spiffe_id]:
        found.append(f"the leaf's URI SANs are {uris}, expected exactly [{spiffe_id!r}]")
    return found
