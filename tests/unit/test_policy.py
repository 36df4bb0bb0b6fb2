"""Who may hold which names: the default (own namespace only) and MtlsIdentityPolicy grants."""

from __future__ import annotations

import pytest

from mtls_operator import policy, spec


def ident(settings, dns=(), ips=(), namespace="shop"):
    return spec.parse(namespace, "api", {"dnsNames": list(dns), "ipAddresses": list(ips)}, settings)


def rule(namespaces=("shop",), dns=(), ips=(), name="p"):
    return policy.parse_rule({"metadata": {"name": name}, "spec": {
        "namespaces": list(namespaces), "dnsNames": list(dns), "ipAddresses": list(ips)}})


@pytest.mark.parametrize("dns", ["api.shop", "api.shop.svc", "api.shop.svc.cluster.local", "cart.shop.svc",
                                 "cart.shop.svc.cluster.local", "9lives.shop.svc"])
def test_own_service_names_need_no_policy(settings, dns) -> None:
    assert policy.check(ident(settings, [dns]), [], "cluster.local") is None


@pytest.mark.parametrize("dns", ["api", "vault", "postgres", "kubernetes", "localhost"])
def test_single_label_names_need_a_policy(settings, dns) -> None:
    """A one-word name means "that Service in MY namespace" to every client in every namespace (and `localhost` means
    the client's own host): granting it by default let a client elsewhere that dials `vault` accept this namespace's
    certificate. The denial names the entry and the policy that would allow it."""
    message = policy.check(ident(settings, [dns]), [], "cluster.local")
    assert message and repr(dns) in message and "single-label" in message
    assert f"MtlsIdentityPolicy with namespaces: [shop] and dnsNames: [{dns}]" in message
    assert policy.check(ident(settings, [dns]), [rule(namespaces=["bank"], dns=[dns])], "cluster.local")
    assert policy.check(ident(settings, [dns]), [rule(dns=[dns])], "cluster.local") is None


def test_defaults_pass(settings) -> None:
    assert policy.check(spec.parse("shop", "api", {}, settings), [], "cluster.local") is None


@pytest.mark.parametrize("dns", ["api.bank", "api.bank.svc", "api.bank.svc.cluster.local", "api.shop.svc.other.domain",
                                 "shop.example.com", "a.b.shop.svc", "kubernetes.default.svc"])
def test_other_names_are_denied_by_default_and_named(settings, dns) -> None:
    message = policy.check(ident(settings, [dns]), [], "cluster.local")
    assert message and repr(dns) in message
    assert f"MtlsIdentityPolicy with namespaces: [shop] and dnsNames: [{dns}]" in message


def test_ip_addresses_are_denied_by_default(settings) -> None:
    message = policy.check(ident(settings, ips=["10.0.0.7"]), [], "cluster.local")
    assert message and "'10.0.0.7'" in message


def test_policy_grants_exact_and_wildcard_names_and_ip_ranges(settings) -> None:
    grant = rule(dns=["shop.example.com", "*.internal.example.com"], ips=["10.0.0.0/24", "fd00::1"])
    ok = ident(settings, ["shop.example.com", "a.internal.example.com", "b.c.internal.example.com"],
               ["10.0.0.7", "fd00::1"])
    assert policy.check(ok, [grant], "cluster.local") is None
    assert policy.check(ident(settings, ["internal.example.com"]), [grant], "cluster.local")  # not under *.
    assert policy.check(ident(settings, ["evil-shop.example.com"]), [grant], "cluster.local")
    assert policy.check(ident(settings, ips=["10.0.1.7"]), [grant], "cluster.local")
    assert policy.check(ident(settings, ips=["fd00::2"]), [grant], "cluster.local")


def test_policy_applies_only_to_its_namespaces(settings) -> None:
    grant = rule(namespaces=["bank"], dns=["shop.example.com"])
    assert policy.check(ident(settings, ["shop.example.com"]), [grant], "cluster.local")
    assert policy.check(ident(settings, ["shop.example.com"], namespace="bank"), [grant], "cluster.local") is None


def test_grants_add_up_across_policies(settings) -> None:
    rules = [rule(dns=["a.example.com"], name="one"), rule(dns=["b.example.com"], name="two")]
    assert policy.check(ident(settings, ["a.example.com", "b.example.com"]), rules, "cluster.local") is None


@pytest.mark.parametrize("raw, fragment", [
    ({}, "spec must be an object"),
    ({"spec": {"namespaces": []}}, "at least one namespace"),
    ({"spec": {"namespaces": "shop"}}, "list of strings"),
    ({"spec": {"namespaces": ["shop"], "dnsNames": ["*"]}}, "not a DNS name"),
    ({"spec": {"namespaces": ["shop"], "dnsNames": ["*.com"]}}, "not a DNS name"),
    ({"spec": {"namespaces": ["shop"], "dnsNames": ["a.*.com"]}}, "not a DNS name"),
    ({"spec": {"namespaces": ["shop"], "ipAddresses": ["10.0.0.0/33"]}}, "ipAddresses"),
])
def test_broken_policies_are_refused(raw, fragment) -> None:
    with pytest.raises(policy.InvalidPolicy) as err:
        policy.parse_rule({"metadata": {"name": "bad"}, **raw})
    assert fragment in str(err.value)
