"""Names the operator derives from an identity's own name (issue 10, item 9): for every name the API server accepts for
an MtlsIdentity, the Secret name, ServiceAccount name, SPIFFE ID and default DNS names are valid and pass the default
policy — or the spec is refused with a message that names metadata.name and says what to set instead. The CRD refuses
the same names at admission (integration/test_names.py); this is the operator's layer for objects stored before."""

from __future__ import annotations

import re

import pytest

from mtls_operator import policy, spec

# Kubernetes' own rule for Secret and ServiceAccount names (DNS-1123 subdomain): no limit per label, 253 in all.
K8S_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Names the API server accepts for an MtlsIdentity (a DNS-1123 subdomain), at the edges of every derived name's rules.
VALID_NAMES = [
    "a", "0", "9lives", "web-v2", "a" * 58, "a" * 59, "a" * 63, "a" * 64, "web.v2", "a.b.c", "x" * 100,
    "b" * 63 + "." + "c" * 63, "d" * 248, "e" * 249, "f" * 253, "g" * 120 + "." + "h" * 128,
]


def parse(name: str, raw: dict | None = None, settings=None):
    return spec.parse("shop", name, raw or {}, settings)


@pytest.mark.parametrize("name", VALID_NAMES)
@pytest.mark.parametrize("raw", [{}, {"usages": ["client"]}, {"usages": ["server"]}, {"dnsNames": ["web.shop.svc"]},
                                 {"secretName": "explicit"}, {"secretName": "explicit", "usages": ["client"]}])
def test_every_valid_name_gets_valid_derived_names_or_a_clear_refusal(settings, name, raw) -> None:
    try:
        ident = spec.parse("shop", name, raw, settings)
    except spec.InvalidSpec as e:
        # Refused: the message names metadata.name and the field that would make the name work.
        assert "metadata.name" in str(e) and ("spec.dnsNames" in str(e) or "spec.secretName" in str(e)), e
        return
    for derived in (ident.secret_name, ident.service_account):
        assert len(derived) <= 253 and K8S_OBJECT_NAME.match(derived), derived
    assert ident.spiffe_id == f"spiffe://cluster.local/ns/shop/sa/{ident.service_account}"
    # Whatever the operator derived itself, its own default policy allows.
    assert policy.check(ident, [], "cluster.local") is None


@pytest.mark.parametrize("length", [58, 59, 63, 64, 120, 248])
def test_long_names_get_the_default_secret_and_service_account(settings, length) -> None:
    """A 59-character name made a 64-character label in `<name>-mtls`: Kubernetes accepts it (no per-label limit on
    object names), so the operator must too."""
    name = "n" * length
    ident = parse(name, {"usages": ["client"]}, settings)
    assert (ident.secret_name, ident.service_account) == (f"{name}-mtls", name)


def test_names_up_to_63_characters_keep_their_default_dns_names(settings) -> None:
    name = "n" * 63
    assert parse(name, {}, settings).dns_names == (f"{name}.shop", f"{name}.shop.svc", f"{name}.shop.svc.cluster.local")


@pytest.mark.parametrize("name", ["web.v2", "a" * 64, "a.b"])
def test_a_name_that_cannot_be_a_service_needs_dns_names_for_server_use(settings, name) -> None:
    """`web.v2` can never be a Service name: the defaults `web.v2.shop.svc`... named no Service and were denied by the
    operator's own policy. Refused instead, saying what to do; client-only or with explicit names it is fine."""
    with pytest.raises(spec.InvalidSpec) as err:
        parse(name, {}, settings)
    message = str(err.value)
    assert f"metadata.name {name!r}" in message and "spec.dnsNames" in message and "[client]" in message
    assert parse(name, {"usages": ["client"]}, settings).dns_names == ()
    assert parse(name, {"dnsNames": ["web-v2.shop.svc"]}, settings).dns_names == ("web-v2.shop.svc",)


def test_a_name_too_long_for_the_default_secret_needs_a_secret_name(settings) -> None:
    name = "n" * 249  # <name>-mtls would be 254 characters
    with pytest.raises(spec.InvalidSpec) as err:
        parse(name, {"usages": ["client"]}, settings)
    assert "metadata.name" in str(err.value) and "spec.secretName" in str(err.value)
    assert parse(name, {"usages": ["client"], "secretName": "short"}, settings).secret_name == "short"


@pytest.mark.parametrize("raw, fragment", [
    ({"secretName": "a" * 254}, "spec.secretName"),
    ({"secretName": "a..b"}, "spec.secretName"),
    ({"serviceAccountName": "-a"}, "spec.serviceAccountName"),
    ({"restartTargets": [{"kind": "Deployment", "name": "A"}]}, "spec.restartTargets"),
])
def test_object_names_follow_kubernetes_rules(settings, raw, fragment) -> None:
    with pytest.raises(spec.InvalidSpec) as err:
        parse("x", raw, settings)
    assert fragment in str(err.value)
    long_label = "a" * 100
    ok = parse("x", {"secretName": long_label, "serviceAccountName": long_label,
                     "restartTargets": [{"kind": "Deployment", "name": long_label}]}, settings)
    assert (ok.secret_name, ok.service_account, ok.restart_targets) == (long_label, long_label,
                                                                        (("Deployment", long_label),))
