"""Pending-work state shared by the stages (``data/state/``).

* ``changes.json`` — per instrument, the range of bar times the translator changed since the
  analyzer last consumed it: ``{"ES": {"first": iso, "last": iso}}``. The translator widens it;
  the analyzer clears an instrument's entry once its output for those bars is written.
* ``analyzer/<INST>.json`` — the analyzer's own state for an instrument: the analysis-settings
  hash it ran with, the dates that hold ``Final = false`` rows, the last run.
* ``manifest.jsonl`` — one line per ingested raw file (written by the translator).

Only one engine runs at a time (the lock). The analyzer's instruments run as concurrent
processes, each clearing its own entry of ``changes.json``; a read-modify-write of that file is
therefore serialised by an ``flock`` on ``data/state/.changes.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_core.fsutil import read_json, read_jsonl, write_json_atomic
from pipeline_core.settings import CHICAGO, Settings


@contextlib.contextmanager
def changes_lock(settings: Settings) -> Iterator[None]:
    """Serialise read-modify-write of ``changes.json`` between processes (and threads)."""
    path = settings.state_dir / ".changes.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def changes_path(settings: Settings) -> Path:
    return settings.state_dir / "changes.json"


def analyzer_state_path(settings: Settings, instrument: str) -> Path:
    return settings.state_dir / "analyzer" / f"{instrument}.json"


def manifest_path(settings: Settings) -> Path:
    return settings.state_dir / "manifest.jsonl"


def read_manifest(settings: Settings) -> list[dict[str, Any]]:
    """The manifest's records of ingested raw files, oldest first."""
    return read_jsonl(manifest_path(settings))


def read_changes(settings: Settings) -> dict[str, tuple[datetime, datetime]]:
    """Per instrument, the (first, last) bar time changed and not yet analysed (Chicago time)."""
    raw = read_json(changes_path(settings), {}) or {}
    return {
        inst: (
            datetime.fromisoformat(v["first"]).astimezone(CHICAGO),
            datetime.fromisoformat(v["last"]).astimezone(CHICAGO),
        )
        for inst, v in raw.items()
    }


def record_changes(settings: Settings, instrument: str, first: datetime, last: datetime) -> None:
    """Widen the instrument's changed range to include [first, last]."""
    with changes_lock(settings):
        raw = read_json(changes_path(settings), {}) or {}
        cur = raw.get(instrument)
        if cur:
            first = min(first, datetime.fromisoformat(cur["first"]))
            last = max(last, datetime.fromisoformat(cur["last"]))
        raw[instrument] = {
            "first": first.astimezone(CHICAGO).isoformat(),
            "last": last.astimezone(CHICAGO).isoformat(),
        }
        write_json_atomic(changes_path(settings), raw)


def clear_changes(settings: Settings, instrument: str, consumed: tuple[datetime, datetime]) -> None:
    """Remove the instrument's entry if it is still the range the analyzer consumed."""
    with changes_lock(settings):
        raw = read_json(changes_path(settings), {}) or {}
        cur = raw.get(instrument)
        if not cur:
            return
        now_range = (datetime.fromisoformat(cur["first"]), datetime.fromisoformat(cur["last"]))
        if now_range[0] >= consumed[0] and now_range[1] <= consumed[1]:
            del raw[instrument]
            write_json_atomic(changes_path(settings), raw)


def read_analyzer_state(settings: Settings, instrument: str) -> dict[str, Any] | None:
    return read_json(analyzer_state_path(settings, instrument), None)


def write_analyzer_state(settings: Settings, instrument: str, state: dict[str, Any]) -> None:
    write_json_atomic(analyzer_state_path(settings, instrument), state)


def store_instruments(settings: Settings) -> list[str]:
    """Instruments that have bars in the store."""
    d = settings.processed_dir
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and any(p.glob(f"{p.name}_*.parquet")))


def pending_analysis(settings: Settings, full: bool = False) -> dict[str, str]:
    """Instruments with analysis to do, each with the reason (empty: nothing to analyse).

    Pending: bars changed since the last analysis, or an instrument in the store never analysed.
    With ``full``, every instrument in the store.
    """
    changes = read_changes(settings)
    out: dict[str, str] = {}
    for inst in store_instruments(settings):
        if full:
            out[inst] = "full re-analysis requested"
        elif inst in changes:
            first, last = changes[inst]
            out[inst] = f"bars changed {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}"
        elif read_analyzer_state(settings, inst) is None:
            out[inst] = "never analysed"
    return out


def pending_merges(settings: Settings) -> list[Path]:
    """Analyzer run folders awaiting the merger."""
    d = settings.analyzer_temp_dir
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and any(p.glob("*.parquet")))
