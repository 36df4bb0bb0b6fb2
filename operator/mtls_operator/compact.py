"""API objects as the caches hold them: without managedFields, and with their repeated strings shared. Pure.

A body decoded on its own carries its own copy of every key ("metadata", "ownerReferences", "lastTransitionTime"...)
and of every value it shares with thousands of others (the group's apiVersion, the kind, the namespace, "True",
the issuer's fingerprint): about 3 KB of a cached identity and its Secret, 30 MB at 10,000 identities. Kept through
one table, each such string is held once. Values under keys whose values are unique by nature (uids, versions, times,
messages) are left alone: they would only take table slots.

The table is ours, not `sys.intern`: the strings come from tenants (names, labels, annotations), and interned strings
are immortal on some Python versions. It is bounded, and starts afresh when full: a tenant churning unique values costs
the sharing, never memory that is not given back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Longer strings are certificates, keys and bundles: unique, or shared by other means (reconciler.Shared).
SHORT = 96
UNIQUE = frozenset({
    "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "time", "lastTransitionTime", "message",
    "serialNumber", "notBefore", "notAfter", "renewalTime", "generateName",
})
TABLE_SIZE = 1 << 16  # strings; a 10,000-identity operator shares about 25,000


class Shared:
    """Hands back one object for equal values, keeping at most `size` of them; when full, it starts afresh. Besides
    the strings here, every identity Secret's `ca.crt` is the same trust bundle: 10,000 copies of it (base64 in the
    cached body, bytes in the parsed view) were megabytes of the operator's memory (reconciler.py keeps a few: the
    bundle of a root rotation, the one before and after it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: dict[Any, Any] = {}

    def __call__(self, value: Any) -> Any:
        kept = self.values.get(value)
        if kept is not None:
            return kept
        if len(self.values) >= self.size:
            self.values = {}
        self.values[value] = value
        return value


_share = Shared(TABLE_SIZE)


def compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `body` for a cache: managedFields dropped from its metadata, keys and short common values shared.

    Written for speed (three bodies per identity issued): the table's own setdefault does the sharing (a C call where
    Shared.__call__ is a Python one), and a dict's string values are handled in its own loop. The table starts afresh
    when full, before a body: it holds at most its size plus one body's strings."""
    if len(_share.values) >= _share.size:
        _share.values = {}
    keep = _share.values.setdefault
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k == "metadata" and type(v) is dict:
            # managedFields is often the largest part of an object, and nothing reads it.
            out[keep(k, k)] = _dict({mk: mv for mk, mv in v.items() if mk != "managedFields"}, keep)
        else:
            out[keep(k, k)] = _value(v, k, keep)
    return out


def _dict(value: dict[str, Any], keep: Callable[[Any, Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        # Exact types, not the ABCs: decoded JSON holds only these, and isinstance against an ABC costs several
        # times more.
        kind = type(v)
        if kind is str:
            out[keep(k, k)] = keep(v, v) if len(v) <= SHORT and k not in UNIQUE else v
        elif kind is dict:
            out[keep(k, k)] = _dict(v, keep)
        elif kind is list:
            out[keep(k, k)] = [_value(item, k, keep) for item in v]
        else:
            out[keep(k, k)] = v
    return out


def _value(value: Any, key: str, keep: Callable[[Any, Any], Any]) -> Any:
    kind = type(value)
    if kind is str:
        return keep(value, value) if len(value) <= SHORT and key not in UNIQUE else value
    if kind is dict:
        return _dict(value, keep)
    if kind is list:
        return [_value(item, key, keep) for item in value]
    return value
