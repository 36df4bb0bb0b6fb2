"""An MtlsIdentity's spec, parsed, defaulted and validated into the exact certificate the operator owes it.

The CRD schema and its CEL rules reject most bad input at admission; this is the second layer, for objects stored
before a schema tightened, for clusters where the CRD was edited, and for the operator's own min/max. Nothing here
talks to the API: a spec either becomes an IdentitySpec or an InvalidSpec with a message fit to show the user.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from .config import Settings
from .durations import format_duration, parse_duration

GROUP = "mtls-operator.io"
VERSION = "v1alpha1"
PLURAL = "mtlsidentities"
KIND = "MtlsIdentity"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
# A DNS-1123 label: what a Service name can be (at most 63 characters, no dot), and so the first label of the names a
# Service answers to.
DNS_LABEL = re.compile(rf"^{_DNS_LABEL}$")
# Kubernetes' own rule for object names (DNS-1123 subdomain): unlike a DNS name, no limit per label, 253 in all.
# Secrets, ServiceAccounts, Deployments and MtlsIdentities are all named by it.
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_OBJECT_NAME = 253
SECRET_SUFFIX = "-mtls"
# The longest identity name whose default Secret name, <name>-mtls, is still an object name.
MAX_NAME_FOR_DEFAULT_SECRET = MAX_OBJECT_NAME - len(SECRET_SUFFIX)
_RESERVED_PREFIX = GROUP + "/"
KEY_SIZES = {"ECDSA": (256, 384), "RSA": (2048, 3072, 4096), "Ed25519": ()}
DEFAULT_KEY_SIZE = {"ECDSA": 256, "RSA": 2048}
MAX_DNS_NAMES = 32
MAX_IPS = 16
MAX_TEMPLATE_ENTRIES = 32


class InvalidSpec(ValueError):
    """The spec can never be issued as it stands; the message names the field."""


@dataclasses.dataclass(frozen=True)
class KeySpec:
    algorithm: str  # ECDSA | RSA | Ed25519
    size: int  # 0 for Ed25519
    rotate: bool  # a new key at every issuance (rotationPolicy Always)

    @property
    def label(self) -> str:
        return self.algorithm if self.algorithm == "Ed25519" else f"{self.algorithm}-{self.size}"


@dataclasses.dataclass(frozen=True)
class IdentitySpec:
    namespace: str
    name: str
    secret_name: str
    service_account: str
    spiffe_id: str
    server: bool
    client: bool
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    duration: dt.timedelta
    renew_before: dt.timedelta
    key: KeySpec
    secret_labels: Mapping[str, str]
    secret_annotations: Mapping[str, str]
    # Workloads of the same namespace to roll (pod-template annotation) after each new certificate: for applications
    # that cannot reload their files.
    restart_targets: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def shape_hash(self) -> str:
        """A digest of everything that shapes the certificate: a change here means the current one is wrong.

        renewBefore, rotationPolicy and the Secret template are left out on purpose: changing them reschedules, or
        rewrites metadata, but does not make the certificate in the Secret wrong.
        """
        shape = {
            "spiffe": self.spiffe_id, "server": self.server, "client": self.client,
            "dns": sorted(self.dns_names), "ip": sorted(self.ip_addresses),
            "duration": self.duration.total_seconds(), "key": self.key.label,
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:32]


def _get(spec: Mapping[str, Any], field: str, default: Any) -> Any:
    """The field, or the default when it is absent or null; an empty or wrong-typed value is the caller's to judge."""
    value = spec.get(field)
    return default if value is None else value


def _str_list(spec: Mapping[str, Any], field: str, limit: int) -> list[str]:
    value = _get(spec, field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidSpec(f"spec.{field} must be a list of strings")
    if len(value) > limit:
        raise InvalidSpec(f"spec.{field} has {len(value)} entries; at most {limit} are allowed")
    return value


def is_object_name(value: Any) -> bool:
    """Kubernetes' rule, not a DNS name's: a 64-character label is a valid Secret or ServiceAccount name."""
    return isinstance(value, str) and len(value) <= MAX_OBJECT_NAME and OBJECT_NAME.match(value) is not None


def _name_field(spec: Mapping[str, Any], field: str, default: str) -> str:
    value = spec.get(field) or default
    if not is_object_name(value):
        raise InvalidSpec(f"spec.{field} {str(value)[:64]!r} is not a valid Kubernetes object name")
    return value


def derived_name_problem(name: str, secret_name_given: bool, default_dns: bool) -> str | None:
    """Why a valid identity name cannot give a name the operator would derive from it, or None.

    Two derived names depend on the name's shape: the Secret `<name>-mtls` (too long past 248 characters) and the
    default DNS names `<name>.<ns>...` (a Service name must be a DNS label: `web.v2` never is, and its "defaults" named
    no Service and were denied by the operator's own policy). Neither is derived differently behind the user's back:
    the spec must say what it wants. The same rules are CEL rules at the CRD's root, refusing new objects at
    admission with these words; this layer is for objects stored before. The other derived names always work: the
    ServiceAccount name is the name itself (same rule) and a SPIFFE path segment accepts any object name.
    """
    if not secret_name_given and len(name) > MAX_NAME_FOR_DEFAULT_SECRET:
        return (f"metadata.name is longer than {MAX_NAME_FOR_DEFAULT_SECRET} characters ({len(name)}), so the default "
                f"Secret name <name>{SECRET_SUFFIX} would be longer than {MAX_OBJECT_NAME}: set spec.secretName, or "
                f"use a name of at most {MAX_NAME_FOR_DEFAULT_SECRET} characters")
    if default_dns and not DNS_LABEL.match(name):
        return (f"metadata.name {name[:64]!r} has a dot or more than 63 characters, so it can never be a Service "
                f"name and no default DNS names (<name>.<namespace>.svc, ...) can be derived from it: list "
                f"spec.dnsNames, or set spec.usages to [client], or use a name without dots of at most 63 characters")
    return None


def _string_map(spec: Mapping[str, Any], field: str, max_value: int) -> dict[str, str]:
    value = _get(spec, field, {})
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"spec.secretTemplate.{field} must be a map of strings")
    if len(value) > MAX_TEMPLATE_ENTRIES:
        raise InvalidSpec(f"spec.secretTemplate.{field} has more than {MAX_TEMPLATE_ENTRIES} entries")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 316 or len(v) > max_value:
            raise InvalidSpec(f"spec.secretTemplate.{field} entry {str(k)[:64]!r} is not a short string pair")
        if k.startswith(_RESERVED_PREFIX) or k == "app.kubernetes.io/managed-by":
            raise InvalidSpec(f"spec.secretTemplate.{field} key {k!r} is reserved for the operator")
        out[k] = v
    return out


def _key_spec(raw: Any) -> KeySpec:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.privateKey must be an object")
    algorithm = raw.get("algorithm") or "ECDSA"
    if algorithm not in KEY_SIZES:
        raise InvalidSpec(f"spec.privateKey.algorithm {algorithm!r} is not one of ECDSA, RSA, Ed25519")
    size = raw.get("size")
    if algorithm == "Ed25519":
        if size not in (None, 0):
            raise InvalidSpec("spec.privateKey.size must be omitted for Ed25519")
        size = 0
    elif size is None:
        size = DEFAULT_KEY_SIZE[algorithm]
    elif size not in KEY_SIZES[algorithm] or isinstance(size, bool):
        allowed = ", ".join(map(str, KEY_SIZES[algorithm]))
        raise InvalidSpec(f"spec.privateKey.size {size!r} is not valid for {algorithm} (allowed: {allowed})")
    policy = raw.get("rotationPolicy") or "Always"
    if policy not in ("Always", "Never"):
        raise InvalidSpec(f"spec.privateKey.rotationPolicy {policy!r} is not Always or Never")
    return KeySpec(algorithm=algorithm, size=int(size), rotate=policy == "Always")


RESTART_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
MAX_RESTART_TARGETS = 8


def _restart_targets(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = _get(spec, "restartTargets", [])
    if not isinstance(raw, list) or len(raw) > MAX_RESTART_TARGETS:
        raise InvalidSpec(f"spec.restartTargets must be a list of at most {MAX_RESTART_TARGETS} workloads")
    out = []
    for target in raw:
        if not isinstance(target, Mapping) or target.get("kind") not in RESTART_KINDS:
            raise InvalidSpec(f"spec.restartTargets entries need kind {', '.join(RESTART_KINDS)} and a name")
        name = target.get("name")
        if not is_object_name(name):
            raise InvalidSpec(f"spec.restartTargets name {str(name)[:64]!r} is not a valid object name")
        out.append((target["kind"], name))
    return tuple(dict.fromkeys(out))


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The one SPIFFE ID rule, for an MtlsIdentity and a pod certificate alike: the workload is its ServiceAccount."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def default_dns_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    """The names a Service of that name answers to in every namespace of the cluster. The bare single-label
    `<service>` is left out: it means "that Service in MY namespace" to each client, so the default policy does not
    grant it (policy.py); RFC 5280 linters (pkilint) reject single-label dNSNames too."""
    return [f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.{cluster_domain}"]


def parse(namespace: str, name: str, spec: Mapping[str, Any] | None, settings: Settings) -> IdentitySpec:
    """Turns a raw spec into the certificate it asks for, or raises InvalidSpec naming the first wrong field."""
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec must be an object")
    usages = _get(spec, "usages", ["server", "client"])
    if not isinstance(usages, list) or not usages or any(u not in ("server", "client") for u in usages):
        raise InvalidSpec(f"spec.usages {usages!r} must list server and/or client")
    server, client = "server" in usages, "client" in usages

    dns_names = _str_list(spec, "dnsNames", MAX_DNS_NAMES)
    for dns in dns_names:
        if len(dns) > 253 or not DNS_NAME.match(dns):
            raise InvalidSpec(f"spec.dnsNames entry {dns[:64]!r} is not a lower-case DNS name")
    if dns_names and not server:
        raise InvalidSpec("spec.dnsNames only make sense with the server usage")
    problem = derived_name_problem(name, bool(spec.get("secretName")), server and not dns_names)
    if problem:
        raise InvalidSpec(problem)
    secret_name = _name_field(spec, "secretName", f"{name}{SECRET_SUFFIX}")
    service_account = _name_field(spec, "serviceAccountName", name)
    if not dns_names and server:
        # The name is a DNS label (derived_name_problem): these name a Service of this namespace wherever they are
        # dialled, which the default policy allows.
        dns_names = default_dns_names(name, namespace, settings.cluster_domain)
    ips: list[str] = []
    for ip in _str_list(spec, "ipAddresses", MAX_IPS):
        try:
            ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            raise InvalidSpec(f"spec.ipAddresses entry {ip[:64]!r} is not an IP address") from None

    try:
        duration = parse_duration(spec.get("duration") or "24h")
        renew_raw = spec.get("renewBefore")
        renew_before = parse_duration(renew_raw) if renew_raw else duration / 3
    except ValueError as e:
        raise InvalidSpec(f"spec: {e}") from None
    if not settings.min_duration <= duration <= settings.max_duration:
        raise InvalidSpec(
            f"spec.duration {format_duration(duration)} is outside the operator's bounds "
            f"[{format_duration(settings.min_duration)}, {format_duration(settings.max_duration)}]")
    if renew_before >= duration:
        raise InvalidSpec(
            f"spec.renewBefore {format_duration(renew_before)} must be shorter than duration "
            f"{format_duration(duration)}")

    template = _get(spec, "secretTemplate", {})
    if not isinstance(template, Mapping):
        raise InvalidSpec("spec.secretTemplate must be an object")
    return IdentitySpec(
        namespace=namespace, name=name, secret_name=secret_name, service_account=service_account,
        spiffe_id=spiffe_id(settings.trust_domain, namespace, service_account),
        server=server, client=client, dns_names=tuple(dns_names), ip_addresses=tuple(ips),
        duration=duration, renew_before=renew_before, key=_key_spec(spec.get("privateKey")),
        secret_labels=_string_map(template, "labels", 63),
        secret_annotations=_string_map(template, "annotations", 4096),
        restart_targets=_restart_targets(spec),
    )
