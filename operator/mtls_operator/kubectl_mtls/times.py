"""Timestamps as the API writes them (RFC 3339, with or without fractions), and durations as people read them."""

from __future__ import annotations

import datetime as dt


def parse(value: object) -> dt.datetime | None:
    """An API timestamp (`2026-11-27T17:00:01Z`, a MicroTime with fractions, or an offset), or None when absent or
    unreadable: a status written by another version must not crash a report."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    """The one format of the plugin's output (JSON and text): UTC, whole seconds."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def span(seconds: float) -> str:
    """3d4h, 5h12m, 4m10s, 12s: two units at most."""
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def relative(when: dt.datetime | None, now: dt.datetime) -> str:
    """'in 5h12m' or '3m ago'."""
    if when is None:
        return ""
    delta = (when - now).total_seconds()
    return f"in {span(delta)}" if delta >= 0 else f"{span(delta)} ago"
