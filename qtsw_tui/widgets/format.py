"""Small text formats shared by the console's widgets and screens (plain functions, no Textual)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from pipeline_core.runstate import seconds_between
from pipeline_core.settings import CHICAGO


def duration(seconds: float | None) -> str:
    """``42s``, ``3:07``, ``1:02:03`` — elapsed time as an operator reads it; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def countdown(seconds: float) -> str:
    """``12:55`` (or ``1:02:03``) until a moment; never negative."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def size(n_bytes: float) -> str:
    """``0 B``, ``12.3 kB``, ``4.5 MB``, ``1.2 GB``: decimal units (1 MB = 1,000,000 bytes), the
    one convention of the console and ``qtsw status``."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - the loop always returns


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time from a record (event, runs.jsonl line, report) in Chicago; None if absent."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CHICAGO)
    return dt.astimezone(CHICAGO)


@lru_cache(maxsize=4096)
def _second_clock(stamp: str) -> str:
    return clock_time(stamp)


def event_clock(timestamp: str) -> str:
    """``HH:MM:SS`` (Chicago) of an event timestamp; events of one second share one parse."""
    # ISO-8601 "YYYY-MM-DDTHH:MM:SS[.ffffff](±HH:MM|Z)": drop the fraction, keep the offset
    if len(timestamp) > 20 and timestamp[19] == ".":
        if timestamp.endswith("Z"):
            return _second_clock(timestamp[:19] + "Z")
        if timestamp[-6] in "+-" and timestamp[-3] == ":":
            return _second_clock(timestamp[:19] + timestamp[-6:])
    return _second_clock(timestamp)


def clock_time(value: Any, fmt: str = "%H:%M:%S") -> str:
    """The Chicago wall-clock time of an ISO timestamp, ``-`` if it is missing or unreadable."""
    dt = parse_time(value)
    return dt.strftime(fmt) if dt else "-"


def short_id(run_id: str | None) -> str:
    """The first 8 characters of a run id (what the header and the tables show)."""
    return (run_id or "")[:8]


def run_seconds(record: dict[str, Any]) -> float | None:
    """Seconds between a run record's ``started`` and ``ended``; None if either is missing."""
    start, end = parse_time(record.get("started")), parse_time(record.get("ended"))
    if start is None or end is None:
        return None
    return seconds_between(start, end)


# One glyph and one style per state, so the state reads the same with or without colour.
STATE_STYLE: dict[str, tuple[str, str]] = {
    "waiting": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "success": ("✓", "green"),
    "partial": ("!", "bold yellow"),
    "failure": ("✗", "bold red"),
    "skipped": ("-", "dim"),
    "cancelled": ("■", "magenta"),
}


def state_mark(state: str | None) -> tuple[str, str]:
    """The glyph and style of a run, stage or instrument state."""
    return STATE_STYLE.get(state or "", ("?", ""))


def key_label(app: Any, binding_id: str, default: str) -> str:
    """How the key of binding ``binding_id`` reads in hints: ``default`` unless ``[keys]`` in the
    settings remapped it, then the new key(s) as Textual displays them."""
    keys = getattr(app, "_keymap", {}).get(binding_id)
    if not keys:
        return default
    from textual.binding import Binding  # this module is otherwise free of Textual

    return "/".join(app.get_key_display(Binding(k.strip(), "")) for k in keys.split(","))
