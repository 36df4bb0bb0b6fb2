"""What `kubectl mtls renew` asks for and tells: the annotation value that requests a renewal, the result per
identity, and the warning about the operator's rate limits. Pure.

A renewal is requested exactly as a user would by hand (README: "Renew now"): a new value of the identity's
`mtls-operator.io/renew` annotation (tlssecret.ANN_RENEW_REQUEST). The operator serves each new value once, rate-limited
per identity and per namespace; a request over the limit is deferred (a `RenewalDeferred` Warning Event, and the Ready
message says until when), never lost.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .. import tlssecret
from ..config import Settings

ANNOTATION = tlssecret.ANN_RENEW_REQUEST
RATE_LIMIT_NOTE = ("Renewals are rate-limited by the operator (by default per identity 3 at once, then one a minute; "
                   "per namespace 10 tokens at once, then one every 6 s, RSA keys costing more): a request over the "
                   "limit is deferred, not lost — `kubectl mtls status NAME` shows it (Ready message, RenewalDeferred "
                   "Event).")


def request_value(now: dt.datetime) -> str:
    """A value that differs from every earlier one (microseconds), and says when it was asked for."""
    return "kubectl-mtls@" + now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Outcome:
    namespace: str
    name: str
    requested: bool
    serial_before: str = ""  # the certificate the renewal replaces, as the status named it
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "requested": self.requested,
                "serialBefore": self.serial_before or None, "error": self.error or None}


@dataclasses.dataclass(frozen=True)
class RenewReport:
    value: str
    outcomes: tuple[Outcome, ...]
    scope: str  # "payments/api", "namespace payments", "all namespaces"
    warnings: tuple[str, ...] = ()
    by_name: bool = False  # one identity, named on the command line (not --all)

    @property
    def ok(self) -> bool:
        return all(o.requested for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "RenewRequest", "ok": self.ok, "scope": self.scope, "annotation": ANNOTATION,
                "value": self.value, "identities": [o.to_dict() for o in self.outcomes],
                "rateLimits": RATE_LIMIT_NOTE, "warnings": list(self.warnings)}


def burst_warnings(namespaces: Iterable[str], settings: Settings | None = None) -> tuple[str, ...]:
    """Namespaces where this many requests at once exceed the default namespace budget, and roughly how long the
    last one waits (at least: an RSA key takes more than one token). The operator's flags may set other limits."""
    s = settings or Settings()
    burst, interval = s.renew_namespace_burst, s.renew_namespace_interval.total_seconds()
    if burst <= 0:
        return ()
    out = []
    for namespace, count in sorted(Counter(namespaces).items()):
        if count > burst:
            wait = math.ceil((count - burst) * interval)
            out.append(f"namespace {namespace}: {count} requests exceed the default budget of {burst} at once; the "
                       f"rest are deferred and served over at least {wait}s")
    return tuple(out)
