"""Who may hold which names. Pure: given an identity's spec and the cluster's MtlsIdentityPolicy objects, allow or deny
with a message that names the offending entry.

The default is zero trust bound to the namespace: the SPIFFE ID is always derived from the namespace and service
account (spec.py), and DNS names must be names that mean a Service of the identity's own namespace to every client in
the cluster (`<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.<clusterDomain>`). Anything else needs a cluster-scoped
MtlsIdentityPolicy, which only cluster admins can write, naming the namespace: another namespace's Service name, an
external name, any IP address, and single-label names (`vault`, `kubernetes`, `localhost`). A one-word name is resolved
by each client in its own namespace (search path) or on its own host, so it means something different to every client:
granted by default, a client in another namespace dialling `vault` would accept this namespace's certificate.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from .spec import DNS_LABEL, DNS_NAME, IdentitySpec

POLICY_PLURAL = "mtlsidentitypolicies"


class InvalidPolicy(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Rule:
    """One MtlsIdentityPolicy: extra names the listed namespaces may put in their certificates."""

    name: str
    namespaces: frozenset[str]
    dns_names: tuple[str, ...]  # exact names, or "*.suffix" for any name under suffix
    ip_ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows_dns(self, dns: str) -> bool:
        for pattern in self.dns_names:
            if pattern.startswith("*."):
                if dns.endswith(pattern[1:]) and len(dns) > len(pattern) - 1:
                    return True
            elif dns == pattern:
                return True
        return False

    def allows_ip(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self.ip_ranges)


def parse_rule(body: Mapping[str, Any]) -> Rule:
    name = body.get("metadata", {}).get("name", "?")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidPolicy(f"MtlsIdentityPolicy {name}: spec must be an object")

    def strings(field: str) -> list[str]:
        value = spec.get(field) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidPolicy(f"MtlsIdentityPolicy {name}: spec.{field} must be a list of strings")
        return value

    namespaces = strings("namespaces")
    if not namespaces:
        raise InvalidPolicy(f"MtlsIdentityPolicy {name}: spec.namespaces must name at least one namespace")
    for pattern in strings("dnsNames"):
        bare = pattern[2:] if pattern.startswith("*.") else pattern
        if not DNS_NAME.match(bare) or (pattern.startswith("*.") and "." not in bare):
            raise InvalidPolicy(f"MtlsIdentityPolicy {name}: dnsNames entry {pattern!r} is not a DNS name or *.suffix")
    try:
        ranges = tuple(ipaddress.ip_network(r, strict=False) for r in strings("ipAddresses"))
    except ValueError as e:
        raise InvalidPolicy(f"MtlsIdentityPolicy {name}: ipAddresses: {e}") from None
    return Rule(name=name, namespaces=frozenset(namespaces), dns_names=tuple(strings("dnsNames")), ip_ranges=ranges)


def own_service_name(dns: str, namespace: str, cluster_domain: str) -> bool:
    """True for `<svc>.<ns>`, `<svc>.<ns>.svc` and `<svc>.<ns>.svc.<clusterDomain>`: names that reach a Service of
    this namespace from every namespace. Not the bare `<svc>`: that one means a Service of the client's namespace."""
    service, _, rest = dns.partition(".")
    if not DNS_LABEL.match(service):
        return False
    return rest in (namespace, f"{namespace}.svc", f"{namespace}.svc.{cluster_domain}")


def dns_denial(dns: str, namespace: str, cluster_domain: str) -> str:
    """Why the default refuses a DNS name, naming it, and the grant a cluster admin would write to allow it."""
    grant = (f"an MtlsIdentityPolicy with namespaces: [{namespace}] and dnsNames: [{dns}] would allow it "
             f"(cluster admins write those)")
    if "." not in dns:
        return (f"dnsNames entry {dns!r} is a single-label name, which each client resolves in its own namespace (or "
                f"on its own host): a client in any namespace dialling it would accept this certificate, so it is not "
                f"allowed by default; use {dns}.{namespace}.svc, or {grant}")
    return (f"dnsNames entry {dns!r} is not a Service name of namespace {namespace} (<svc>.{namespace}, "
            f"<svc>.{namespace}.svc or <svc>.{namespace}.svc.{cluster_domain}); {grant}")


def check(spec: IdentitySpec, rules: Iterable[Rule], cluster_domain: str) -> str | None:
    """None when every name is allowed; otherwise why the first one that is not, naming it."""
    return check_names(spec.namespace, spec.dns_names, spec.ip_addresses, rules, cluster_domain)


def check_names(namespace: str, dns_names: Iterable[str], ip_addresses: Iterable[str], rules: Iterable[Rule],
                cluster_domain: str) -> str | None:
    """The same rule for every front (an MtlsIdentity's spec, a pod certificate's annotations)."""
    mine = [r for r in rules if namespace in r.namespaces]
    for dns in dns_names:
        if not own_service_name(dns, namespace, cluster_domain) and not any(r.allows_dns(dns) for r in mine):
            return dns_denial(dns, namespace, cluster_domain)
    for ip in ip_addresses:
        if not any(r.allows_ip(ip) for r in mine):
            return f"ipAddresses entry {ip!r} is not allowed for namespace {namespace} by any MtlsIdentityPolicy"
    return None
