"""timestamps.py: one way the operator writes a moment, and reads it back."""

from __future__ import annotations

import datetime as dt

import pytest

from mtls_operator import timestamps


def test_a_moment_is_written_in_utc_to_the_second_whatever_zone_it_came_in() -> None:
    moment = dt.datetime(2026, 12, 7, 23, 59, 59, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert timestamps.text(moment) == "2026-12-08T04:59:59Z"
    assert timestamps.text(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"  # naive: taken as UTC
    assert timestamps.text(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T03:04:05Z"
    assert timestamps.text(dt.datetime(987, 6, 5, 4, 3, 2)) == "0987-06-05T04:03:02Z"  # RFC 3339: four-digit years


def test_what_is_written_reads_back_and_nothing_else_does() -> None:
    moment = dt.datetime(2026, 12, 7, 12, 0, 1, tzinfo=dt.UTC)
    assert timestamps.parse(timestamps.text(moment)) == moment
    for other in ("2026-12-07T12:00:01.5Z", "2026-12-07T12:00:01+00:00", "2026-12-07 12:00:01Z", ""):
        with pytest.raises(ValueError):
            timestamps.parse(other)
