"""Raw input files in ``data/raw``: which instrument a file holds, and whether it is ready.

SPEC §2.1/§2.2. The instrument comes from the file name by one explicit parser
(:func:`parse_instrument`); the CSV ``Instrument`` column never overrides it.

A file is *ready* (:func:`scan_raw`) when a matching ``raw/logs/export_complete_<stem>.json``
exists, or when no signal file names it and it has not been modified for ``stable_seconds``.
A file with an ``export_progress_<stem>.json`` and no complete file is being exported and is
left alone, unless that progress file is older than ``export_stale_seconds``: then the export
is taken as abandoned, the file is treated as ready and the scan lists it as ``stale`` so the
translator can warn. Only the top level of ``data/raw`` counts: subfolders (archive,
quarantine, logs), hidden files and temporary files are ignored.

Symbolic links are never followed: a link at the top of ``data/raw`` is ready at once, for the
translator to quarantine it (the link itself, never its target); a link in ``raw/logs`` is no
signal, and the scan lists it in ``ignored`` with the reason, for the translator's warning,
``qtsw status`` and the console.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_core import catalog
from pipeline_core.settings import Settings

# One pattern per accepted name form (SPEC §2.1); the group is the symbol.
NAME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("exporter", re.compile(r"^(?:Minute)?DataExport_([A-Z0-9]+)_\d{8}_\d{6}_UTC\.csv$")),
    ("plain", re.compile(r"^([A-Z0-9]+)\.csv$")),
    ("ninjatrader", re.compile(r"^([A-Z0-9]+) \d{2}-\d{2}\.Last\.txt$")),
)
ACCEPTED_FORMS = (
    "DataExport_<SYM>_<yyyyMMdd>_<HHmmss>_UTC.csv, MinuteDataExport_<SYM>_…_UTC.csv, "
    "<SYM>.csv or '<SYM> MM-YY.Last.txt'"
)
# Names a writer uses while a file is still being produced: never touched.
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp", "~")

COMPLETE_PREFIX = "export_complete_"
PROGRESS_PREFIX = "export_progress_"


class RawFileError(ValueError):
    """A raw file the translator cannot accept: ``reason`` says why, ``name`` which file."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


def name_form(name: str) -> tuple[str, str] | None:
    """``(form, symbol)`` for a raw file name matching one of the accepted patterns, else None."""
    for form, pattern in NAME_PATTERNS:
        m = pattern.match(name)
        if m:
            return form, m.group(1)
    return None


def parse_instrument(name: str, settings: Settings) -> str:
    """The instrument symbol of raw file ``name`` (a bare file name).

    Raises :class:`RawFileError` when the name matches no accepted form, or its symbol is not in
    the configured instrument table.
    """
    found = name_form(name)
    if found is None:
        raise RawFileError(name, f"file name matches no accepted form ({ACCEPTED_FORMS})")
    symbol = found[1]
    if symbol not in settings.instruments:
        raise RawFileError(
            name,
            f"instrument {symbol!r} is not in the configured instrument table "
            f"({', '.join(sorted(settings.instruments))})",
        )
    return symbol


def signal_stem(name: str) -> str:
    """The stem the exporter uses in its signal file names: the file name without its last suffix."""
    return name.rsplit(".", 1)[0] if "." in name else name


def complete_signal(settings: Settings, name: str) -> Path:
    return settings.raw_logs_dir / f"{COMPLETE_PREFIX}{signal_stem(name)}.json"


def progress_signal(settings: Settings, name: str) -> Path:
    return settings.raw_logs_dir / f"{PROGRESS_PREFIX}{signal_stem(name)}.json"


def signal_files(settings: Settings, name: str) -> list[Path]:
    """The export signal files that exist for raw file ``name`` (complete, progress)."""
    return [p for p in (complete_signal(settings, name), progress_signal(settings, name)) if _plain_file(p)]


def _plain_file(p: Path) -> bool:
    """A regular file, not a link (a name too long for a signal of its own has none)."""
    try:
        return p.is_file() and not p.is_symlink()
    except OSError:
        return False


def is_candidate_name(name: str) -> bool:
    """True for a name the scan considers: not hidden, not a temporary file of a writer."""
    if name.startswith((".", "~")):
        return False
    lower = name.lower()
    return not lower.endswith(_TEMP_SUFFIXES)


@dataclass
class RawScan:
    """What is in ``data/raw`` right now.

    * ``ready``: files the translator should take now (includes the ``stale`` ones), oldest first;
    * ``waiting``: files still being written (progress signal, or modified too recently);
    * ``exporting``: one dict per export in progress (the progress file's JSON, plus
      ``signal_path``, ``path`` (the raw file, or None if not there yet), ``stale`` and
      ``age_seconds``), for the console;
    * ``stale``: ready files whose export never completed (progress file older than
      ``export_stale_seconds``): translate, and warn;
    * ``unrecognised``: ``(path, reason)`` for files whose name no parser accepts or whose
      symbol is not configured, and symbolic links — they are in ``ready`` (or ``waiting``)
      too, because the translator quarantines them once they are stable;
    * ``ignored``: ``(path, reason)`` for entries never read: symbolic links in ``raw/logs``.
    """

    ready: list[Path] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)
    exporting: list[dict[str, Any]] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    unrecognised: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)


SYMLINK_REASON = "a symbolic link; links are never followed"


def _read_signal(path: Path) -> dict[str, Any]:
    """A signal file's JSON; a file half-written by the exporter yields a minimal record."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a link put there since the scan: refused
        with os.fdopen(fd, "rb") as fh:
            obj = json.loads(fh.read(1 << 20).decode("utf-8-sig"))
        if isinstance(obj, dict):
            return obj
    except (OSError, ValueError):
        pass
    return {"status": "unreadable"}


def scan_raw(settings: Settings, now: float | None = None) -> RawScan:
    """Classify the files at the top level of ``data/raw`` (SPEC §2.1).

    ``now`` is the current time as a POSIX timestamp (default: the real clock). Only stat calls
    and reads of the small signal JSON files; no raw file is opened.
    """
    now = time.time() if now is None else now
    scan = RawScan()
    raw_dir, logs_dir = settings.raw_dir, settings.raw_logs_dir
    signals: dict[str, os.DirEntry[str]] = {}
    try:
        for e in os.scandir(logs_dir):
            if e.is_symlink():
                scan.ignored.append((Path(e.path), f"{SYMLINK_REASON}: not taken as an export signal"))
            elif e.is_file(follow_symlinks=False):
                signals[e.name] = e
    except FileNotFoundError:
        pass
    try:
        entries = [e for e in os.scandir(raw_dir) if is_candidate_name(e.name)]
    except FileNotFoundError:
        entries = []
    keep_ingested = _ingested_keys(settings) if settings.raw_policy == "keep" else set()
    ready: list[tuple[float, str, Path]] = []
    raw_names: set[str] = set()
    for entry in entries:
        try:
            if entry.is_symlink():  # the translator quarantines the link itself
                ready.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, Path(entry.path)))
                scan.unrecognised.append((Path(entry.path), SYMLINK_REASON))
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # moved away while we looked
            continue
        path = Path(entry.path)
        raw_names.add(entry.name)
        if (entry.name, st.st_size, st.st_mtime_ns) in keep_ingested:
            continue  # raw_policy keep: already in the catalogue, nothing to do
        stem = signal_stem(entry.name)
        complete = signals.get(f"{COMPLETE_PREFIX}{stem}.json")
        progress = signals.get(f"{PROGRESS_PREFIX}{stem}.json")
        if complete is not None:
            state = "ready"
        elif progress is not None:
            try:
                age = now - progress.stat().st_mtime
            except FileNotFoundError:  # the exporter just finished and removed it
                age = 0.0
            state = "stale" if age > settings.export_stale_seconds else "waiting"
        else:
            state = "ready" if now - st.st_mtime >= settings.stable_seconds else "waiting"
        if state == "waiting":
            scan.waiting.append(path)
        else:
            ready.append((st.st_mtime, entry.name, path))
            if state == "stale":
                scan.stale.append(path)
        found = name_form(entry.name)
        if found is None:
            scan.unrecognised.append((path, "file name matches no accepted form"))
        elif found[1] not in settings.instruments:
            scan.unrecognised.append((path, f"instrument {found[1]!r} is not configured"))
    ready.sort()
    scan.ignored.sort()
    scan.ready = [p for _, _, p in ready]
    scan.waiting.sort()
    scan.stale.sort()
    for name, entry in sorted(signals.items()):
        if not name.startswith(PROGRESS_PREFIX) or not name.endswith(".json"):
            continue
        stem = name[len(PROGRESS_PREFIX) : -len(".json")]
        if f"{COMPLETE_PREFIX}{stem}.json" in signals:
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        info = _read_signal(Path(entry.path))
        raw_name = next((n for n in raw_names if signal_stem(n) == stem), None)
        info.setdefault("fileName", raw_name or stem)
        info["signal_path"] = Path(entry.path)
        info["path"] = raw_dir / raw_name if raw_name else None
        info["stale"] = age > settings.export_stale_seconds
        info["age_seconds"] = round(age, 1)
        scan.exporting.append(info)
    return scan


def _ingested_keys(settings: Settings) -> set[tuple[str, int, int]]:
    """(name, size, mtime_ns) of every raw file in the catalogue (raw_policy ``keep``)."""
    cat = catalog.open_readonly(settings)
    if cat is None:
        return set()
    try:
        return cat.ingested_keys()
    finally:
        cat.close()
