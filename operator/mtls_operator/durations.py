"""Go-style durations ("24h", "1h30m", "90s"), the notation Kubernetes users already write in cert-manager and kubelet
flags. The CRD's pattern admits the same grammar; this is the operator's own check for anything that got past it."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {
    "ns": dt.timedelta(microseconds=0.001),
    "us": dt.timedelta(microseconds=1),
    "µs": dt.timedelta(microseconds=1),
    "ms": dt.timedelta(milliseconds=1),
    "s": dt.timedelta(seconds=1),
    "m": dt.timedelta(minutes=1),
    "h": dt.timedelta(hours=1),
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_MAX_LEN = 32


def parse_duration(text: str) -> dt.timedelta:
    """Parses a positive Go duration; raises ValueError with a message fit for a user."""
    if not isinstance(text, str) or not text or len(text) > _MAX_LEN:
        raise ValueError(f"{text!r} is not a duration like 24h, 90m or 1h30m")
    total = dt.timedelta()
    pos = 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration like 24h, 90m or 1h30m")
    if total <= dt.timedelta():
        raise ValueError(f"duration {text!r} must be positive")
    return total


def format_duration(value: dt.timedelta) -> str:
    """The shortest Go-style spelling of a whole number of seconds (for messages and defaults)."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "")
    return out or "0s"
