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


def _name_field(spec: Mapping[str, Any], field: str, default: str) -> str:
    value = spec.get(field) or default
    if not isinstance(value, str) or len(value) > 253 or not DNS_NAME.match(value):
        raise InvalidSpec(f"spec.{field} {value!r} is not a valid Kubernetes object name")
    return value


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
        if not isinstance(name, str) or len(name) > 253 or not DNS_NAME.match(name):
            raise InvalidSpec(f"spec.restartTargets name {str(name)[:64]!r} is not a valid object name")
        out.append((target["kind"], name))
    return tuple(dict.fromkeys(out))


def default_dns_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    """The names a Service of that name answers to. The bare single-label `<service>` is left out: RFC 5280 linters
    (pkilint) reject single-label dNSNames, and a client in another namespace cannot use it anyway; add it to
    spec.dnsNames explicitly where a same-namespace client dials the short name."""
    return [f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.{cluster_domain}"]


def parse(namespace: str, name: str, spec: Mapping[str, Any] | None, settings: Settings) -> IdentitySpec:
    """Turns a raw spec into the certificate it asks for, or raises InvalidSpec naming the first wrong field."""
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec must be an object")
    secret_name = _name_field(spec, "secretName", f"{name}-mtls")
    service_account = _name_field(spec, "serviceAccountName", name)

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
    if not dns_names and server and len(name) <= 63:
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
        spiffe_id=f"spiffe://{settings.trust_domain}/ns/{namespace}/sa/{service_account}",
        server=server, client=client, dns_names=tuple(dns_names), ip_addresses=tuple(ips),
        duration=duration, renew_before=renew_before, key=_key_spec(spec.get("privateKey")),
        secret_labels=_string_map(template, "labels", 63),
        secret_annotations=_string_map(template, "annotations", 4096),
        restart_targets=_restart_targets(spec),
    )
