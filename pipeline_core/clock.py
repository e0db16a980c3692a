"""Chicago time. Never the machine's local time zone."""

from __future__ import annotations

from datetime import date, datetime, time

from pipeline_core.settings import CHICAGO


def now() -> datetime:
    """The current time, aware, in America/Chicago."""
    return datetime.now(CHICAGO)


def iso_now() -> str:
    """ISO-8601 with the Chicago offset, e.g. ``2025-12-04T14:32:16.821443-06:00``."""
    return now().isoformat()


def wall(d: date, t: time) -> datetime:
    """The Chicago wall-clock moment ``t`` on date ``d`` (built with zoneinfo, never by adding hours)."""
    return datetime.combine(d, t, tzinfo=CHICAGO)


def stamp(dt: datetime) -> str:
    """``YYYYMMDD_HHMMSS`` in Chicago time, for file names."""
    return dt.astimezone(CHICAGO).strftime("%Y%m%d_%H%M%S")
