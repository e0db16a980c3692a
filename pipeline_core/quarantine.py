"""The quarantine (``data/raw/quarantine``): the files the translator rejected, why, and putting
one back after the operator fixed it.

Each rejected file sits there unchanged with ``<name>.error.txt`` (when, which run, which rule
at which line, the reason) and its exporter signal files under ``quarantine/logs``. Re-queueing
moves the file (and its signals) back into ``data/raw``: the next run checks it again from the
start, every rule, like a new export.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline_core.settings import CHICAGO, Settings

ERROR_SUFFIX = ".error.txt"


@dataclass(frozen=True)
class QuarantinedFile:
    name: str
    path: Path
    rejected_at: datetime | None  # Chicago time
    run_id: str
    rule: str
    line: str
    reason: str


def _read_error(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for raw in text.splitlines():
        key, sep, value = raw.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def quarantined(settings: Settings) -> list[QuarantinedFile]:
    """The quarantined files, newest first."""
    qdir = settings.quarantine_dir
    if not qdir.is_dir():
        return []
    out = []
    for p in qdir.iterdir():
        if not p.is_file() or p.name.endswith(ERROR_SUFFIX) or p.name.startswith("."):
            continue
        info = _read_error(qdir / f"{p.name}{ERROR_SUFFIX}")
        when: datetime | None
        try:
            when = datetime.fromisoformat(info["rejected_at"]).astimezone(CHICAGO)
        except (KeyError, ValueError):
            try:
                when = datetime.fromtimestamp(p.stat().st_mtime, CHICAGO)
            except OSError:
                when = None
        out.append(QuarantinedFile(p.name, p, when, info.get("run_id", "-"), info.get("rule", "?"),
                                   info.get("line", "-"), info.get("reason", "no error file")))
    out.sort(key=lambda q: (q.rejected_at is None, -(q.rejected_at.timestamp() if q.rejected_at else 0), q.name))
    return out


def requeue(settings: Settings, name: str) -> Path:
    """Move a quarantined file (and its signal files) back into ``data/raw``; returns its new
    path. Raises ``FileNotFoundError`` when it is not in the quarantine, ``FileExistsError`` when
    ``data/raw`` already has a file of that name."""
    qdir = settings.quarantine_dir
    src = qdir / name
    if "/" in name or not src.is_file() or name.endswith(ERROR_SUFFIX):
        raise FileNotFoundError(2, "not in the quarantine", str(src))
    dest = settings.raw_dir / name
    if dest.exists():
        raise FileExistsError(17, "a file of that name is waiting in data/raw", str(dest))
    stem = Path(name).stem
    signals = sorted((qdir / "logs").glob(f"*{stem}*")) if (qdir / "logs").is_dir() else []
    settings.raw_logs_dir.mkdir(parents=True, exist_ok=True)
    for sig in signals:  # the signals first: the file is then complete the moment it appears
        target = settings.raw_logs_dir / sig.name
        if not target.exists():
            sig.replace(target)
    src.replace(dest)
    err = qdir / f"{name}{ERROR_SUFFIX}"
    err.unlink(missing_ok=True)
    return dest
