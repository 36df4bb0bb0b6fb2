"""Parsing, defaults and the operator's own validation of MtlsIdentity specs (the layer behind the CRD schema)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from mtls_operator import spec
from mtls_operator.durations import format_duration, parse_duration


def test_defaults(settings) -> None:
    s = spec.parse("payments", "api", {}, settings)
    assert s.secret_name == "api-mtls"
    assert s.service_account == "api"
    assert s.spiffe_id == "spiffe://cluster.local/ns/payments/sa/api"
    assert (s.server, s.client) == (True, True)
    assert s.dns_names == ("api.payments", "api.payments.svc", "api.payments.svc.cluster.local")
    assert s.duration == dt.timedelta(hours=24)
    assert s.renew_before == dt.timedelta(hours=8)
    assert s.key == spec.KeySpec("ECDSA", 256, True)


def test_client_only_has_no_dns_names(settings) -> None:
    assert spec.parse("ns", "job", {"usages": ["client"]}, settings).dns_names == ()


def test_trust_and_cluster_domain_come_from_settings(settings) -> None:
    s = spec.parse("ns", "x", {"serviceAccountName": "sa1"},
                   dataclasses.replace(settings, trust_domain="corp.example", cluster_domain="k8s.local"))
    assert s.spiffe_id == "spiffe://corp.example/ns/ns/sa/sa1"
    assert "x.ns.svc.k8s.local" in s.dns_names


@pytest.mark.parametrize("raw, expected", [
    ({"algorithm": "RSA"}, spec.KeySpec("RSA", 2048, True)),
    ({"algorithm": "RSA", "size": 4096}, spec.KeySpec("RSA", 4096, True)),
    ({"algorithm": "ECDSA", "size": 384, "rotationPolicy": "Never"}, spec.KeySpec("ECDSA", 384, False)),
    ({"algorithm": "Ed25519"}, spec.KeySpec("Ed25519", 0, True)),
])
def test_key_specs(settings, raw, expected) -> None:
    assert spec.parse("ns", "x", {"privateKey": raw}, settings).key == expected


def test_ip_addresses_are_normalised(settings) -> None:
    s = spec.parse("ns", "x", {"ipAddresses": ["10.0.0.1", "2001:DB8::1"]}, settings)
    assert s.ip_addresses == ("10.0.0.1", "2001:db8::1")


@pytest.mark.parametrize("raw, fragment", [
    ("not a map", "spec must be an object"),
    ({"duration": "forever"}, "is not a duration"),
    ({"duration": "0s"}, "must be positive"),
    ({"duration": "5s"}, "outside the operator's bounds"),
    ({"duration": "2400h"}, "outside the operator's bounds"),
    ({"duration": "1h", "renewBefore": "1h"}, "must be shorter than duration"),
    ({"usages": []}, "spec.usages"),
    ({"usages": ["server", "peer"]}, "spec.usages"),
    ({"dnsNames": ["UPPER.case"]}, "not a lower-case DNS name"),
    ({"dnsNames": ["*.wild.card"]}, "not a lower-case DNS name"),
    ({"dnsNames": ["a" * 64 + ".x"]}, "not a lower-case DNS name"),
    ({"dnsNames": [f"n{i}.x" for i in range(33)]}, "at most 32"),
    ({"dnsNames": "a.b"}, "must be a list of strings"),
    ({"usages": ["client"], "dnsNames": ["a.b"]}, "only make sense with the server usage"),
    ({"ipAddresses": ["1.2.3"]}, "not an IP address"),
    ({"ipAddresses": [1]}, "must be a list of strings"),
    ({"privateKey": {"algorithm": "DSA"}}, "is not one of"),
    ({"privateKey": {"algorithm": "RSA", "size": 1024}}, "not valid for RSA"),
    ({"privateKey": {"algorithm": "ECDSA", "size": 521}}, "not valid for ECDSA"),
    ({"privateKey": {"algorithm": "Ed25519", "size": 256}}, "must be omitted for Ed25519"),
    ({"privateKey": {"rotationPolicy": "Sometimes"}}, "rotationPolicy"),
    ({"secretName": "Bad_Name"}, "spec.secretName"),
    ({"serviceAccountName": "a/b"}, "spec.serviceAccountName"),
    ({"secretTemplate": {"labels": {"mtls-operator.io/x": "y"}}}, "reserved"),
    ({"secretTemplate": {"labels": {"app.kubernetes.io/managed-by": "me"}}}, "reserved"),
    ({"secretTemplate": {"annotations": {"k": 5}}}, "short string pair"),
    ({"secretTemplate": {"labels": {f"k{i}": "v" for i in range(33)}}}, "more than 32"),
    ({"secretTemplate": []}, "secretTemplate must be an object"),
])
def test_invalid_specs_are_rejected_with_the_field_named(settings, raw, fragment) -> None:
    with pytest.raises(spec.InvalidSpec) as err:
        spec.parse("ns", "x", raw, settings)
    assert fragment in str(err.value)


def test_shape_hash_ignores_what_does_not_shape_the_certificate(settings) -> None:
    base = spec.parse("ns", "x", {}, settings).shape_hash
    assert spec.parse("ns", "x", {"renewBefore": "1h"}, settings).shape_hash == base
    assert spec.parse("ns", "x", {"secretTemplate": {"labels": {"a": "b"}}}, settings).shape_hash == base
    assert spec.parse("ns", "x", {"duration": "25h"}, settings).shape_hash != base
    assert spec.parse("ns", "x", {"dnsNames": ["x.ns"]}, settings).shape_hash != base


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400),
                                           ("500ms", 0.5), ("2h0m0s", 7200)])
def test_go_durations(text, seconds) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "h", "1d", "-1h", "1h-", "1 h", "1h" * 20, None, 5])
def test_bad_go_durations(text) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_format_duration_round_trips() -> None:
    for text in ("24h", "1h30m", "45s", "2160h"):
        assert format_duration(parse_duration(text)) == text
