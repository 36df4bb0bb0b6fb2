"""The reports as text for people (`-o json` uses each report's `to_dict` instead). Pure: strings in, strings out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from . import health, renewal, times
from .hints import Hint
from .identity import IdentityReport
from .inspect import SecretReport, Verification

_MARK = {health.Level.OK: "OK", health.Level.WARN: "WARN", health.Level.FAIL: "FAIL", health.Level.UNKNOWN: "??"}


def _field(label: str, value: object, width: int = 13) -> str:
    return f"  {label + ':':<{width}} {value}"


def _when(value: dt.datetime | None, now: dt.datetime) -> str:
    return f"{times.iso(value)} ({times.relative(value, now)})" if value else "-"


def hint(h: Hint, indent: str = "  ") -> list[str]:
    lines = [f"What to do ({h.reason}):", f"{indent}{h.meaning}"]
    lines += [f"{indent}- {a}" for a in h.actions]
    lines.append(f"{indent}See {h.docs}")
    return lines


def identity(r: IdentityReport) -> str:
    ready = f"{r.ready} ({r.reason})" if r.reason else r.ready
    lines = [f"MtlsIdentity {r.namespace}/{r.name}",
             _field("Ready", ready + (f" since {times.iso(r.since)}" if r.since else ""))]
    if r.message:
        lines.append(_field("Message", r.message))
    if r.stale:
        lines.append(_field("Note", f"the operator has seen generation {r.observed_generation}, the spec is at "
                                    f"{r.generation}: not looked at yet"))
    if r.serial or r.spiffe_id:
        lines += [
            _field("SPIFFE ID", r.spiffe_id or "-"),
            _field("Secret", (r.secret_name or "-") + (f" (revision {r.revision})" if r.revision else "")),
            _field("Serial", r.serial or "-"),
            _field("Not before", times.iso(r.not_before) or "-"),
            _field("Not after", _when(r.not_after, r.now)),
            _field("Renews at", _when(r.renewal_time, r.now)),
            _field("Issuer", " ".join(p for p in (r.issuer, f"(sha256 {r.issuer_fingerprint[:16]}…)"
                                                   if r.issuer_fingerprint else "") if p) or "-"),
        ]
    else:
        lines.append(_field("Certificate", "none issued yet"))
    if r.renew_requested:
        lines.append(_field("Renew asked", f"{r.renew_requested}" + (" (deferred by the rate limit)"
                                                                     if r.renewal_deferred else "")))
    lines.append("")
    if r.events_note:
        lines.append(f"Events: {r.events_note}")
    elif r.events:
        lines.append(f"Events (last {len(r.events)}):")
        for e in r.events:
            count = f" (x{e.count})" if e.count > 1 else ""
            lines.append(f"  {times.iso(e.last_seen) or '-':<20}  {e.type:<7}  {e.reason:<18}  {e.message}{count}")
    else:
        lines.append("Events: none (Events expire after an hour by default)")
    if r.hint:
        lines += ["", *hint(r.hint)]
    return "\n".join(lines)


def _verification(label: str, v: Verification) -> list[str]:
    state = "NOT CHECKED" if v.verified is None else "OK" if v.verified else "FAILED"
    out = [f"  {label}: {state}"]
    if v.path:
        out.append(f"    path: {' → '.join(v.path)}")
    out += [f"    problem: {p}" for p in v.problems]
    if v.note:
        out.append(f"    note: {v.note}")
    return out


def secret(r: SecretReport) -> str:
    head = f"Secret {r.namespace}/{r.name}" + (f" ({r.secret_type})" if r.secret_type else "")
    lines = [head + (f", owned by {r.owner}" if r.owner else "")]
    lines.append(f"Certificate chain (tls.crt, {len(r.chain)}):")
    for i, c in enumerate(r.chain):
        role = "leaf" if i == 0 else "CA" if c.is_ca else "certificate"
        lines += [f"  [{i}] {role}",
                  f"      subject:  {c.subject or '(empty)'}",
                  f"      issuer:   {c.issuer}",
                  f"      serial:   {c.serial}",
                  f"      validity: {times.iso(c.not_before)} to {times.iso(c.not_after)} — {c.window(r.now)}, "
                  f"{'expires' if c.window(r.now) != 'expired' else 'expired'} {times.relative(c.not_after, r.now)}",
                  f"      key:      {c.public_key}",
                  f"      sha256:   {c.fingerprint}"]
    if r.chain:
        lines += ["Subject alternative names:",
                  _field("SPIFFE ID", ", ".join(r.spiffe_ids) or "(none)"),
                  _field("DNS", ", ".join(r.dns_names) or "(none)"),
                  _field("IP", ", ".join(r.ip_addresses) or "(none)")]
        if r.uris:
            lines.append(_field("other URIs", ", ".join(r.uris)))
        lines.append(f"Extended key usage: {', '.join(r.extended_key_usage) or '(none)'}")
        lines.append(f"Public key SPKI SHA-256: {r.spki_sha256}")
    key = r.key
    if not key.present:
        lines.append("Private key (tls.key): missing")
    elif key.matches_certificate is None:
        problem = f" — {key.problem}" if key.problem else ""
        lines.append(f"Private key (tls.key): {key.type or 'unreadable'}{problem}")
    else:
        fits = "matches the certificate" if key.matches_certificate else "DOES NOT match the certificate"
        lines.append(f"Private key (tls.key): {key.type}, {fits} (the key itself is never shown)")
    lines.append(f"Trust bundle (ca.crt, {len(r.bundle)}):")
    for i, c in enumerate(r.bundle):
        lines.append(f"  [{i}] {c.subject}  serial {c.serial[:16]}…  until {times.iso(c.not_after)} "
                     f"({c.window(r.now)})  sha256 {c.fingerprint[:16]}…")
    lines.append("Verification:")
    lines += _verification("against its own ca.crt", r.own)
    lines += _verification(f"against the cluster's trust bundle ({r.cluster.against or 'none found'})", r.cluster)
    lines.append("")
    if r.ok:
        lines.append("Verdict: OK")
    else:
        lines.append("Verdict: NOT OK")
        lines += [f"  - {p}" for p in r.problems]
    return "\n".join(lines)


def check(r: health.CheckReport) -> str:
    sections = (("Operator", ("pods", "leader"), f" (namespace {r.operator_namespace})"), ("CA", ("ca",), ""),
                ("Identities", ("identities",), ""))
    lines: list[str] = []
    for title, kinds, extra in sections:
        lines.append(f"{title}{extra}")
        for f in (f for f in r.findings if f.check in kinds):
            label = f"{f.check}" + (f" {f.subject}" if f.subject else "")
            lines.append(f"  {_MARK[f.level]:<5} {label}: {f.summary}")
            lines += [f"        {d}" for d in f.details]
        if "identities" in kinds:
            lines += _not_ready(r.not_ready)
    lines += ["", f"Verdict: {r.level.value.upper()} (exit {r.exit_code})"]
    return "\n".join(lines)


def _not_ready(entries: Sequence[health.NotReady]) -> list[str]:
    out = []
    for entry in entries[:health.SHOWN_NOT_READY]:
        message = entry.message if len(entry.message) <= 160 else entry.message[:159] + "…"
        out.append(f"        {entry.namespace}/{entry.name}  {entry.reason}  {message}")
        out.append(f"          → {entry.hint.actions[0]}")
    if len(entries) > health.SHOWN_NOT_READY:
        out.append(f"        … and {len(entries) - health.SHOWN_NOT_READY} more (-o json lists all)")
    if entries:
        out.append("        details: kubectl mtls status NAME -n NAMESPACE")
    return out


def renew(r: renewal.RenewReport) -> str:
    asked = [o for o in r.outcomes if o.requested]
    failed = [o for o in r.outcomes if not o.requested]
    if not r.outcomes:
        return f"No identities in {r.scope}: nothing to renew."
    if r.by_name:
        lines = [f"Renewal requested for {r.scope} ({renewal.ANNOTATION}={r.value}):"]
    else:
        lines = [f"Renewal requested for {len(asked)} of {len(r.outcomes)} identities in {r.scope} "
                 f"({renewal.ANNOTATION}={r.value}):"]
    for o in asked:
        lines.append(f"  {o.namespace}/{o.name}" + (f"  (replacing serial {o.serial_before})" if o.serial_before
                                                   else ""))
    for o in failed:
        lines.append(f"  FAILED {o.namespace}/{o.name}: {o.error}")
    lines += [f"Warning: {w}" for w in r.warnings]
    lines += ["", renewal.RATE_LIMIT_NOTE]
    if len(asked) == 1:
        o = asked[0]
        lines.append(f"Follow it: kubectl mtls status {o.name} -n {o.namespace}")
    return "\n".join(lines)
