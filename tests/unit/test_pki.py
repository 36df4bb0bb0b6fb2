"""The certificate profile (DESIGN.md) and CA validation, checked on the certificates themselves."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls_operator import ca as ca_mod
from mtls_operator import pki, spec
from mtls_operator.config import Settings

from .conftest import NOW, issue_view


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


@pytest.mark.parametrize("key_spec", [
    {"algorithm": "ECDSA"}, {"algorithm": "ECDSA", "size": 384}, {"algorithm": "RSA"},
    {"algorithm": "RSA", "size": 3072}, {"algorithm": "Ed25519"},
])
def test_leaf_profile(root, settings, key_spec) -> None:
    ident = spec.parse("payments", "api", {"privateKey": key_spec, "ipAddresses": ["10.1.2.3"]}, settings)
    cert = issue_view(ident, root).cert
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment == (key_spec["algorithm"] == "RSA")
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH,
                                                           ExtendedKeyUsageOID.CLIENT_AUTH}
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty
    assert cert.subject == x509.Name([])
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [ident.spiffe_id]
    assert san.value.get_values_for_type(x509.DNSName) == list(ident.dns_names)
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(root.cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert cert.serial_number.bit_length() >= 128 - 8  # 159 random bits; leading zero bits are possible
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + ident.duration
    assert pki.issued_by(cert, root.cert)
    assert pki.key_label(cert.public_key()) == ident.key.label


def test_client_only_leaf(root, settings) -> None:
    cert = issue_view(spec.parse("ns", "job", {"usages": ["client"]}, settings), root).cert
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == []


def test_leaf_never_outlives_its_issuer(settings) -> None:
    short = ca_mod.load(ca_mod.new_root(dataclasses.replace(settings, ca_lifetime=dt.timedelta(hours=3)), NOW), NOW)
    cert = issue_view(spec.parse("ns", "x", {"duration": "24h"}, settings), short).cert
    assert cert.not_valid_after_utc == short.not_after


def test_expired_issuer_cannot_issue(root, identity) -> None:
    with pytest.raises(pki.PKIError):
        issue_view(identity, root, now=root.not_after + dt.timedelta(seconds=1))


@pytest.mark.parametrize("ca_key, cls", [("ECDSA-256", ec.EllipticCurvePrivateKey),
                                         ("ECDSA-384", ec.EllipticCurvePrivateKey),
                                         ("RSA-2048", rsa.RSAPrivateKey), ("Ed25519", ed25519.Ed25519PrivateKey)])
def test_new_root_of_each_key_type_validates(ca_key, cls) -> None:
    loaded = ca_mod.load(ca_mod.new_root(Settings(ca_key=ca_key), NOW), NOW)
    assert isinstance(loaded.key, cls)
    assert pki.is_ca(loaded.cert) and loaded.chain == ()
    assert loaded.bundle_pem == pki.to_pem(loaded.cert)


def _root_data(now=NOW, lifetime=dt.timedelta(days=10)) -> dict[str, bytes]:
    key = pki.generate_key("ECDSA", 256)
    cert = pki.self_signed_ca(key, "test root", "example", now, lifetime)
    return {"tls.crt": pki.to_pem(cert), "tls.key": pki.key_to_pem(key)}


def _intermediate(root_data: dict[str, bytes]) -> dict[str, bytes]:
    root_cert = pki.load_chain(root_data["tls.crt"])[0]
    root_key = pki.load_key(root_data["tls.key"])
    key = pki.generate_key("ECDSA", 256)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "intermediate")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(root_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(days=5))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, pki.hashes.SHA256()))
    return {"tls.crt": pki.to_pem(cert, root_cert), "tls.key": pki.key_to_pem(key), "ca.crt": root_data["tls.crt"]}


def test_brought_intermediate_issues_leaves_with_the_chain(settings, identity) -> None:
    root_data = _root_data()
    inter = ca_mod.load(_intermediate(root_data), NOW)
    assert inter.bundle_pem == root_data["tls.crt"]
    assert inter.chain == (inter.cert,)  # the intermediate goes with every leaf; the root never does
    leaf = issue_view(identity, inter).cert
    # No SKI on the intermediate: the AKI is derived from its public key.
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == \
        x509.SubjectKeyIdentifier.from_public_key(inter.cert.public_key()).digest


def _replace(data: dict[str, bytes], **changes: bytes | None) -> dict[str, bytes]:
    out = dict(data)
    for k, v in changes.items():
        key = k.replace("_", ".")
        if v is None:
            out.pop(key, None)
        else:
            out[key] = v
    return out


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: _replace(d, tls_key=None), "lacks tls.key"),
    (lambda d: _replace(d, tls_crt=None), "lacks tls.crt"),
    (lambda d: _replace(d, tls_crt=b"garbage"), "not PEM X.509"),
    (lambda d: _replace(d, tls_key=b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
     "not an unencrypted PEM key"),
    (lambda d: _replace(d, tls_key=pki.key_to_pem(pki.generate_key("ECDSA", 256))), "does not belong"),
    (lambda d: _replace(d, ca_crt=_root_data()["tls.crt"]), "does not hold the root"),
])
def test_broken_ca_secrets_are_refused(mutate, fragment) -> None:
    with pytest.raises(ca_mod.CAError) as err:
        ca_mod.load(mutate(_root_data()), NOW)
    assert fragment in str(err.value)


def test_expired_and_future_cas_are_refused() -> None:
    with pytest.raises(ca_mod.CAError, match="expired"):
        ca_mod.load(_root_data(now=NOW - dt.timedelta(days=20)), NOW)
    with pytest.raises(ca_mod.CAError, match="not valid before"):
        ca_mod.load(_root_data(now=NOW + dt.timedelta(days=1)), NOW)


def test_leaf_certificate_is_not_accepted_as_ca(root, identity) -> None:
    view = issue_view(identity, root)
    data = {"tls.crt": pki.to_pem(view.cert), "tls.key": view.key_pem}
    with pytest.raises(ca_mod.CAError, match="not a CA certificate"):
        ca_mod.load(data, NOW)


def test_intermediate_without_its_root_is_refused() -> None:
    data = _intermediate(_root_data())
    with pytest.raises(ca_mod.CAError, match=r"no ca\.crt"):
        ca_mod.load({"tls.crt": data["tls.crt"].split(b"-----END CERTIFICATE-----")[0] +
                     b"-----END CERTIFICATE-----\n", "tls.key": data["tls.key"]}, NOW)


def test_key_material_never_appears_in_errors() -> None:
    data = _root_data()
    broken = _replace(data, tls_key=data["tls.key"][:-40] + b"\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ca_mod.CAError) as err:
        ca_mod.load(broken, NOW)
    body = data["tls.key"].split(b"\n")[1].decode()
    assert body[:16] not in str(err.value)


def test_operator_made_intermediate_profile(settings) -> None:
    root_data = ca_mod.new_root(settings, NOW)
    inter = ca_mod.load(ca_mod.new_intermediate(root_data, dataclasses.replace(
        settings, intermediate_lifetime=dt.timedelta(days=90)), NOW), NOW)
    root = pki.load_chain(root_data["tls.crt"])[0]
    assert pki.issued_by(inter.cert, root)
    bc = ext(inter.cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ext(inter.cert, x509.KeyUsage).value.key_cert_sign
    assert inter.bundle_pem == root_data["tls.crt"]  # peers trust the root
    assert inter.chain == (inter.cert,)  # leaves carry the intermediate
    assert inter.not_after == NOW + dt.timedelta(days=90)
    short_root = ca_mod.new_root(dataclasses.replace(settings, ca_lifetime=dt.timedelta(days=10)), NOW)
    capped = ca_mod.load(ca_mod.new_intermediate(short_root, settings, NOW), NOW)
    assert capped.not_after == pki.load_chain(short_root["tls.crt"])[0].not_valid_after_utc
