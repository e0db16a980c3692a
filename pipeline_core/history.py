"""The record of past runs, read side (and the two appends the engine makes).

* ``logs/runs.jsonl`` — one summary line per run:
  ``{"run_id", "trigger", "started", "ended", "status", "stages": {name: status}}``;
* ``logs/reports/pipeline_report_<YYYYMMDD_HHMMSS>_<run8>.json`` — the audit report of a run;
* ``logs/events/pipeline_<run_id>.jsonl`` — its events;
* ``logs/runs/<run_id>/<stage>[-<INST>].log`` — the free-text output of its stage processes.

Readers tolerate a partial or corrupt line (a crash mid-append) and skip it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

from pipeline_core import clock
from pipeline_core.events import Event, read_events, run_event_path
from pipeline_core.fsutil import append_jsonl, write_json_atomic
from pipeline_core.runstate import STAGE_NAMES, StageTypical
from pipeline_core.settings import Settings

_TAIL_BLOCK = 64 * 1024


def _parse_run_line(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict) or "run_id" not in obj:
        return None
    return obj


def read_runs(settings: Settings, limit: int | None = None) -> list[dict[str, Any]]:
    """The runs.jsonl lines, oldest first / newest last; only the last ``limit`` if given.

    A partial last line (a crash mid-append) or a corrupt line is skipped.
    """
    path = settings.runs_index
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return []
    with fh:
        if limit is None:
            chunks = fh.read().split(b"\n")
        else:
            if limit <= 0:
                return []
            # read blocks from the end until enough whole lines are in hand
            size = fh.seek(0, os.SEEK_END)
            data = b""
            pos = size
            while pos > 0 and data.count(b"\n") <= limit + 1:
                step = min(_TAIL_BLOCK, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
            chunks = data.split(b"\n")
            if pos > 0:
                chunks = chunks[1:]  # the first piece may be the tail of an earlier line
    runs = [r for r in (_parse_run_line(c) for c in chunks if c.strip()) if r is not None]
    return runs if limit is None else runs[-limit:]


def last_run(settings: Settings) -> dict[str, Any] | None:
    """The newest runs.jsonl line, or None."""
    runs = read_runs(settings, limit=1)
    return runs[-1] if runs else None


def run_ids(settings: Settings) -> set[str]:
    """The ids of every run with a runs.jsonl line."""
    return {str(r["run_id"]) for r in read_runs(settings)}


def append_run(settings: Settings, line: dict[str, Any]) -> None:
    """Append one summary line to runs.jsonl, whole (one write), flushed and synced."""
    append_jsonl(settings.runs_index, line)


def report_path(settings: Settings, run_id: str, started: datetime) -> Path:
    """``logs/reports/pipeline_report_<YYYYMMDD_HHMMSS>_<run8>.json`` (start time, Chicago)."""
    return settings.reports_dir / f"pipeline_report_{clock.stamp(started)}_{run_id[:8]}.json"


def write_report(settings: Settings, report: dict[str, Any], started: datetime) -> Path:
    path = report_path(settings, str(report["run_id"]), started)
    write_json_atomic(path, report)
    return path


def find_report(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The audit report of ``run_id``, or None."""
    d = settings.reports_dir
    if not d.is_dir():
        return None
    for p in sorted(d.glob(f"pipeline_report_*_{run_id[:8]}.json"), reverse=True):
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("run_id") == run_id:
            obj.setdefault("path", str(p))
            return obj
    return None


def recent_reports(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """The audit reports of the last ``limit`` runs (by start time), oldest first; unreadable
    ones skipped."""
    d = settings.reports_dir
    if not d.is_dir() or limit <= 0:
        return []
    out = []
    for p in sorted(d.glob("pipeline_report_*.json"))[-limit:]:
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def run_events(settings: Settings, run_id: str) -> list[Event]:
    """The events of ``run_id`` in order (corrupt lines skipped)."""
    events, _ = read_events(run_event_path(settings.events_dir, run_id))
    return events


def run_logs(settings: Settings, run_id: str) -> dict[str, Path]:
    """The stage log files of ``run_id``: ``{"translator": path, "analyzer-ES": path, ...}``."""
    d = settings.runs_dir / run_id
    if not d.is_dir():
        return {}
    order = {"translator": 0, "analyzer": 1, "merger": 2}
    files = sorted(d.glob("*.log"), key=lambda p: (order.get(p.stem.split("-")[0], 9), p.stem))
    return {p.stem: p for p in files}


def log_name(stage: str, instrument: str | None = None) -> str:
    """``translator``, ``analyzer-ES``, ``merger``: the stem of a stage's log file."""
    return f"{stage}-{instrument}" if instrument else stage


def count_files(folder: Path, pattern: str = "*") -> tuple[int, int]:
    """(files, bytes) under ``folder`` matching ``pattern``, recursively; hidden files (such as
    the temporary file of a write in progress) ignored."""
    n = size = 0
    if folder.is_dir():
        for p in folder.rglob(pattern):
            if p.name.startswith("."):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # removed between listing and stat
                continue
            if p.is_file():
                n += 1
                size += st.st_size
    return n, size


def collect_status(settings: Settings, runs: int = 5) -> dict[str, Any]:
    """What is where (``qtsw status``): files per folder, pending work, last runs, the lock holder,
    the active alerts (channels masked)."""
    from pipeline_core import alerts, catalog
    from pipeline_core.lock import lock_holder
    from pipeline_core.rawfiles import scan_raw

    scan = scan_raw(settings)
    quarantined = [
        p.name
        for p in (sorted(settings.quarantine_dir.iterdir()) if settings.quarantine_dir.is_dir() else [])
        if p.is_file() and not p.name.endswith(".error.txt")
    ]
    processed: dict[str, dict[str, int]] = {}
    if settings.processed_dir.is_dir():
        for d in sorted(settings.processed_dir.iterdir()):
            if d.is_dir():
                n, size = count_files(d, "*.parquet")
                if n:
                    processed[d.name] = {"files": n, "bytes": size}
    from pipeline_core import results  # pyarrow: only for status, not for every console start

    monthly = results.monthly_counts(settings)
    archived, _ = count_files(settings.archive_dir)
    return {
        "root": str(settings.root),
        "lock": lock_holder(settings.lock_file),
        "raw": {
            "ready": [p.name for p in scan.ready],
            "waiting": [p.name for p in scan.waiting],
            "exporting": [str(e.get("fileName")) for e in scan.exporting],
            "stale": [p.name for p in scan.stale],
            "ignored": [{"path": f"{p.parent.name}/{p.name}", "reason": why} for p, why in scan.ignored],
            "quarantined": quarantined,
            "archived": archived,
        },
        "processed": processed,
        "pending": {
            "analysis": catalog.pending_analysis(settings),
            "merges": [p.name for p in catalog.pending_merges(settings)],
        },
        "monthly": monthly,
        "results_settings": {
            "current": {
                inst: settings.analysis_hash_for(inst)
                for inst in sorted({results.stream_instrument(k) for k in monthly})
                if inst in settings.instruments
            },
            "stale": catalog.stale_results(settings),
        },
        "runs": read_runs(settings, limit=runs),
        "alerts": alerts.status_view(settings),
    }


def stage_typical(settings: Settings, limit: int = 10) -> tuple[dict[str, StageTypical], int]:
    """What recent runs say about each stage's duration, for the active run's estimate:
    ``({stage: StageTypical}, runs)`` from the audit reports of the last ``limit`` runs that
    ended ``success`` or ``partial``. A stage skipped because the run did not ask for it does
    not count; one skipped for lack of work counts as a run where it had none."""
    reports = [r for r in recent_reports(settings, limit * 3)
               if r.get("status") in ("success", "partial") and isinstance(r.get("stages"), dict)]
    reports = reports[-limit:]
    out: dict[str, StageTypical] = {}
    for name in STAGE_NAMES:
        ran: list[float] = []
        asked = 0
        for rep in reports:
            st = rep["stages"].get(name)
            if not isinstance(st, dict):
                continue
            if st.get("status") == "skipped":
                if str(st.get("reason") or "").startswith("not requested"):
                    continue
                asked += 1
                continue
            asked += 1
            dur = st.get("duration_seconds")
            if isinstance(dur, int | float) and st.get("status") in ("success", "partial"):
                ran.append(float(dur))
        if ran and asked:
            out[name] = StageTypical(seconds=float(median(ran)), share=len(ran) / asked)
    return out, len(reports)


def tail_lines(path: Path, n: int, max_bytes: int = 1 << 20) -> list[str]:
    """The last ``n`` lines of a text file (reading at most its last ``max_bytes``); [] when it
    cannot be read."""
    if n <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is cut
    return lines[-n:]
