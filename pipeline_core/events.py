"""The event log (SPEC §6.2): the v1 schema, one writer per file, a tolerant reader, a tailer.

One JSON object per line::

    {"v":1,"seq":N,"run_id":…,"stage":…,"event":…,"timestamp":…,"msg":…,"data":{…}}

A writer owns its file: it numbers events 1, 2, 3 …, writes each line whole and flushes it.
Readers never write; they skip (and report) a corrupt or partial line instead of crashing.
"""

from __future__ import annotations

import json
import os
import threading
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_core import clock
from pipeline_core.osfiles import fail_point
from pipeline_core.safetext import safe, safe_data

SCHEMA_VERSION = 1
STAGES = ("pipeline", "translator", "analyzer", "merger", "scheduler")
# ``alert``: an alert fired, recovered, was acknowledged, or could not be delivered
# (``data.state``: firing | recovered | acknowledged | delivery_failed | error; see pipeline_core.alerts)
EVENT_TYPES = ("start", "success", "failure", "log", "metric", "progress", "skipped", "cancelled", "alert")
TERMINAL = ("success", "failure", "cancelled")
REQUIRED_FIELDS = ("seq", "run_id", "stage", "event", "timestamp")  # the fields every event has
_REQUIRED = frozenset(REQUIRED_FIELDS)


class EventError(ValueError):
    """An event that does not fit the v1 schema."""


@dataclass(frozen=True)
class Event:
    run_id: str
    stage: str
    event: str
    msg: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""
    seq: int = 0
    v: int = SCHEMA_VERSION
    # the JSON line as written to its file (set by the writer): watchers that pass the event on
    # (the control socket) send these bytes rather than encoding the event again
    line: str = field(default="", compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "seq": self.seq,
            "run_id": self.run_id,
            "stage": self.stage,
            "event": self.event,
            "timestamp": self.timestamp,
            "msg": self.msg,
            "data": self.data,
        }

    def to_line(self) -> str:
        if self.line:
            return self.line
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str, separators=(",", ":"))

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL

    @classmethod
    def from_dict(cls, obj: Any) -> Event:
        """Validate a decoded line against the v1 schema."""
        if not isinstance(obj, dict):
            raise EventError("not a JSON object")
        if not obj.keys() >= _REQUIRED:  # one set comparison (a console reads floods of events)
            missing = [k for k in REQUIRED_FIELDS if k not in obj]
            raise EventError(f"missing field(s): {', '.join(missing)}")
        if obj.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise EventError(f"unsupported schema version {obj.get('v')!r}")
        if obj["stage"] not in STAGES:
            raise EventError(f"unknown stage {obj['stage']!r}")
        if obj["event"] not in EVENT_TYPES:
            raise EventError(f"unknown event {obj['event']!r}")
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            raise EventError("data is not an object")
        return cls(
            run_id=str(obj["run_id"]),
            stage=obj["stage"],
            event=obj["event"],
            msg=str(obj.get("msg") or ""),
            data=data,
            timestamp=str(obj["timestamp"]),
            seq=int(obj["seq"]),
        )


def validate(stage: str, event: str) -> None:
    if stage not in STAGES:
        raise EventError(f"unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
    if event not in EVENT_TYPES:
        raise EventError(f"unknown event {event!r}; allowed: {', '.join(EVENT_TYPES)}")


class EventWriter:
    """The single writer of one event file. Thread-safe; each line written whole and flushed."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.error: OSError | None = None  # the first write that failed
        self._cut = False
        self._seq = _last_seq(self.path)
        fail_point(self.path)
        self._fh = open(self.path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - closed in close()
        if self._fh.tell() and not _ends_with_newline(self.path):
            # a crash cut the last line short: end it, so the next event is a line of its own
            self._fh.write("\n")
            self._fh.flush()

    def emit(self, stage: str, event: str, msg: str = "", data: dict[str, Any] | None = None) -> Event:
        """Append one event and return it (with its seq and Chicago timestamp)."""
        validate(stage, event)
        with self._lock:
            ev = Event(
                run_id=self.run_id,
                stage=stage,
                event=event,
                msg=safe(msg),  # names and text from files: no control characters, no bad bytes
                data=safe_data(dict(data or {})),
                timestamp=clock.iso_now(),
                seq=self._seq + 1,
            )
            line = ev.to_line()
            object.__setattr__(ev, "line", line)  # frozen: set once, here, before anyone sees it
            self._seq += 1
            try:
                fail_point(self.path)
                self._fh.write(("\n" if self._cut else "") + line + "\n")
                self._fh.flush()
                self._cut = False
            except OSError as exc:
                # a full disk: the event still reaches the subscribers; the first error is kept
                # for the run's record, and a line the failed write may have cut is ended first
                # by the next write that succeeds
                if self.error is None:
                    self.error = exc
                self._cut = True
        return ev

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                try:
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                except OSError as exc:
                    if self.error is None:
                        self.error = exc
                finally:
                    try:
                        self._fh.close()
                    except OSError:
                        pass

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _last_seq(path: Path) -> int:
    """The last seq in an existing file, so a reopened writer continues the numbering."""
    if not path.exists():
        return 0
    events, _ = read_events(path)
    return events[-1].seq if events else 0


@dataclass(frozen=True)
class BadLine:
    """A line the reader skipped: where, and why."""

    path: Path
    line_no: int
    reason: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_no}: {self.reason}"


def parse_line(line: str, path: Path | None = None, line_no: int = 0) -> Event | BadLine:
    try:
        return Event.from_dict(json.loads(line))
    except (json.JSONDecodeError, EventError, TypeError, ValueError) as exc:
        return BadLine(path or Path("-"), line_no, str(exc), line[:200])


def read_events(path: Path) -> tuple[list[Event], list[BadLine]]:
    """All well-formed events of a file, and the lines it skipped (corrupt, or a partial last line)."""
    events: list[Event] = []
    bad: list[BadLine] = []
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return events, bad
    lines = raw.split(b"\n")
    for i, chunk in enumerate(lines, start=1):
        if not chunk.strip():
            continue
        text = chunk.decode("utf-8", errors="replace")
        partial = i == len(lines)  # no newline after it: still being written, or cut by a crash
        got = parse_line(text, path, i)
        if isinstance(got, Event):
            events.append(got)
        else:
            reason = "partial last line" if partial else got.reason
            bad.append(BadLine(path, i, reason, got.text))
    return events, bad


class EventTailer:
    """Yields events as they are appended to a file. Holds back an incomplete last line.

    Call :meth:`poll` whenever convenient (the console calls it from a worker); it returns the
    new complete events since the last call. The file may not exist yet.
    """

    def __init__(self, path: Path, from_start: bool = True) -> None:
        self.path = Path(path)
        self._offset = 0
        self._buf = b""
        self._line_no = 0
        self.bad: list[BadLine] = []
        if not from_start and self.path.exists():
            self._offset = self.path.stat().st_size

    def poll(self) -> list[Event]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self._offset += len(chunk)
        self._buf += chunk
        *complete, self._buf = self._buf.split(b"\n")
        out: list[Event] = []
        for raw in complete:
            self._line_no += 1
            if not raw.strip():
                continue
            got = parse_line(raw.decode("utf-8", errors="replace"), self.path, self._line_no)
            if isinstance(got, Event):
                out.append(got)
            else:
                self.bad.append(got)
        return out

    def follow(self, interval: float = 0.2, stop: threading.Event | None = None) -> Iterator[Event]:
        """Blocking generator over new events until ``stop`` is set."""
        while stop is None or not stop.is_set():
            got = self.poll()
            yield from got
            if not got:
                _time.sleep(interval)


def run_event_path(events_dir: Path, run_id: str) -> Path:
    return Path(events_dir) / f"pipeline_{run_id}.jsonl"


def scheduler_event_path(events_dir: Path) -> Path:
    return Path(events_dir) / "scheduler.jsonl"
