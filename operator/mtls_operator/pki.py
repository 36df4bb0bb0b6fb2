"""All X.509 and key handling: making keys, self-signing a root, issuing leaves, and reading back what a Secret holds.

Pure functions over `cryptography` objects: no Kubernetes, no clocks read here (callers pass `now`), so every rule of
the certificate profile is unit-testable. The profile is DESIGN.md's: an X.509-SVID that also works as an ordinary TLS
server/client certificate (kubernetes.io/tls consumers, ingress controllers, Go, OpenSSL, Python ssl).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1}
# A CA key signs certificates and revocation lists, nothing else.
_CA_KEY_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)


class PKIError(ValueError):
    """Material that cannot be used: unparsable PEM, a key that does not fit its certificate, and so on."""


# ---- keys ----

def generate_key(algorithm: str, size: int = 0) -> PrivateKey:
    if algorithm == "ECDSA":
        return ec.generate_private_key(_CURVES[size or 256]())
    if algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)
    if algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PKIError(f"unknown key algorithm {algorithm!r}")


def key_label(key: PrivateKey | PublicKey) -> str:
    """ECDSA-256, RSA-3072, Ed25519: the same labels as spec.KeySpec.label, so a kept key can be checked for fit."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA-{key.curve.key_size}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted: what tls.key holds in a kubernetes.io/tls Secret."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        # The message of cryptography never echoes key bytes; keep ours as terse.
        raise PKIError(f"private key is not an unencrypted PEM key ({type(e).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise PKIError(f"unsupported private key type {type(key).__name__}")
    return key


def _public_bytes(key: PrivateKey | PublicKey) -> bytes:
    pub = key.public_key() if hasattr(key, "private_bytes") else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    return _public_bytes(key) == _public_bytes(cert.public_key())


# ---- certificates: reading ----

def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise PKIError("certificate data is not PEM X.509") from None
    if not chain:
        raise PKIError("no certificate in PEM data")
    return chain


def bare(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate, parsed afresh: reading a certificate's extensions leaves them parsed inside the object
    (about 3 KB for a leaf). A certificate kept for long is kept bare, once what is needed of it has been read."""
    return x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))


def to_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def digest(data: bytes) -> str:
    """A short SHA-256 of some PEM, for an annotation that names it: 128 bits, as spec-hash."""
    return hashlib.sha256(data).hexdigest()[:32]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER: how status and annotations name an issuer."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(cert: x509.Certificate) -> str:
    text = format(cert.serial_number, "x")
    return text if len(text) % 2 == 0 else "0" + text


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def can_sign_certificates(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return True  # no KeyUsage: RFC 5280 puts no limit on the key


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer` signed `cert` (names chain and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def spiffe_ids(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://"))


# ---- certificates: making ----

def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    if isinstance(key, rsa.RSAPrivateKey):
        return builder.sign(key, hashes.SHA256(), rsa_padding=padding.PKCS1v15())
    return builder.sign(key, _signature_hash(key))


def self_signed_ca(key: PrivateKey, common_name: str, organization: str, now: dt.datetime,
                   lifetime: dt.timedelta) -> x509.Certificate:
    """A root for the cluster. pathLen unset, so an intermediate may be added under it later."""
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return _sign(builder, key)


def intermediate_ca(public_key: PublicKey, root: x509.Certificate, root_key: PrivateKey, common_name: str,
                    organization: str, now: dt.datetime, lifetime: dt.timedelta) -> x509.Certificate:
    """An issuing CA under the root: pathLen 0 (it signs leaves only), never outliving the root. With it, the root key
    is used only to sign intermediates, and a new intermediate changes nothing that peers trust."""
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(root.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - dt.timedelta(minutes=5), root.not_valid_before_utc))
        .not_valid_after(min(now + lifetime, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
    )
    return _sign(builder, root_key)


@dataclasses.dataclass(frozen=True)
class LeafRequest:
    spiffe_id: str
    dns_names: Sequence[str]
    ip_addresses: Sequence[str]
    server: bool
    client: bool
    duration: dt.timedelta


def issue_leaf(request: LeafRequest, public_key: PublicKey, issuer: x509.Certificate, issuer_key: PrivateKey,
               now: dt.datetime, backdate: dt.timedelta) -> x509.Certificate:
    """Signs an X.509-SVID leaf. Its subject is empty and its SAN critical (RFC 5280 4.1.2.6), as SPIFFE advises:
    the names a peer checks are all in the SAN. It never outlives, nor predates, its issuer."""
    not_before = max(now - backdate, issuer.not_valid_before_utc)
    not_after = min(now + request.duration, issuer.not_valid_after_utc)
    if not_after <= now:
        raise PKIError("the issuing CA has expired")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(request.spiffe_id)]
    sans += [x509.DNSName(d) for d in request.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in request.ip_addresses]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if request.server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if request.client else [])
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:  # a brought-in CA without SKI: derive the key id the RFC 5280 way
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(public_key, rsa.RSAPublicKey),  # RSA key transport (TLS 1.2 RSA suites)
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    return _sign(builder, issuer_key)
