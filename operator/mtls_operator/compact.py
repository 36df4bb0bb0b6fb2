"""API objects as the caches hold them: without managedFields, and with their repeated strings shared. Pure.

A body decoded on its own carries its own copy of every key ("metadata", "ownerReferences", "lastTransitionTime"...)
and of every value it shares with thousands of others (the group's apiVersion, the kind, the namespace, "True",
the issuer's fingerprint): about 3 KB of a cached identity and its Secret, 30 MB at 10,000 identities. Interned, each
such string is held once. Values that are unique to one object (uids, versions, times, serial numbers, messages) are
left alone: interning those would cost a table slot and share nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

_intern = sys.intern

# Longer strings are certificates, keys and bundles: unique, or shared by other means (reconciler.Shared).
SHORT = 96
UNIQUE = frozenset({
    "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "time", "lastTransitionTime", "message",
    "serialNumber", "notBefore", "notAfter", "renewalTime", "generateName",
})


def compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `body` for a cache: managedFields dropped from its metadata, keys and short common values interned."""
    return {_intern(k): _metadata(v) if k == "metadata" and isinstance(v, dict) else _value(v, k)
            for k, v in body.items()}


def _metadata(meta: dict[str, Any]) -> dict[str, Any]:
    # managedFields is often the largest part of an object, and nothing reads it.
    return {_intern(k): _value(v, k) for k, v in meta.items() if k != "managedFields"}


def _value(value: Any, key: str) -> Any:
    # Exact types, not the ABCs: decoded JSON holds only these, and isinstance against an ABC costs several times more.
    kind = type(value)
    if kind is str:
        return _intern(value) if len(value) <= SHORT and key not in UNIQUE else value
    if kind is dict:
        return {_intern(k): _value(v, k) for k, v in value.items()}
    if kind is list:
        return [_value(v, key) for v in value]
    return value
