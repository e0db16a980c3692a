"""What the engine tells its watchers: messages as things happen, and a snapshot of its state.

The console (and the headless printer) subscribe to :class:`EventMessage` and
:class:`OutputMessage`, and read :class:`EngineSnapshot` for everything else (header, progress
bars). These are plain data: no Textual, no Rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline_core.events import Event

STAGE_NAMES = ("translator", "analyzer", "merger")
# stage / instrument states
WAITING, RUNNING, SUCCESS, PARTIAL, FAILURE, SKIPPED, CANCELLED = (
    "waiting",
    "running",
    "success",
    "partial",
    "failure",
    "skipped",
    "cancelled",
)
RUN_STATUSES = (SUCCESS, PARTIAL, FAILURE, CANCELLED)


def seconds_between(start: datetime, end: datetime) -> float:
    """Real seconds from ``start`` to ``end``.

    Two aware datetimes sharing a tzinfo subtract by wall-clock time, which is an hour off
    across a DST change; converting to UTC first gives the true duration.
    """
    return (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()


@dataclass(frozen=True)
class EventMessage:
    """An event just written to the run's (or the scheduler's) event file."""

    event: Event


@dataclass(frozen=True)
class OutputMessage:
    """A free-text line a stage printed. ``instrument`` is set for the analyzer's processes."""

    run_id: str
    stage: str
    instrument: str | None
    line: str


@dataclass
class InstrumentProgress:
    instrument: str
    state: str = WAITING
    done: int = 0
    total: int = 0
    started: datetime | None = None
    ended: datetime | None = None
    error: str | None = None

    def elapsed(self, now: datetime) -> float:
        if self.started is None:
            return 0.0
        return seconds_between(self.started, self.ended or now)


@dataclass
class StageState:
    name: str
    state: str = WAITING
    started: datetime | None = None
    ended: datetime | None = None
    reason: str = ""  # why skipped
    error: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)

    def elapsed(self, now: datetime) -> float:
        if self.started is None:
            return 0.0
        return seconds_between(self.started, self.ended or now)


@dataclass
class RunState:
    run_id: str
    trigger: str  # schedule | manual | stage
    started: datetime
    status: str = RUNNING
    ended: datetime | None = None
    stage: str | None = None  # the stage running now
    stages: dict[str, StageState] = field(default_factory=dict)
    instruments: dict[str, InstrumentProgress] = field(default_factory=dict)
    # set when a record of the run (an event, the report, the runs.jsonl line) could not be
    # written: which file, and the OS's reason
    record_error: str | None = None


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine as the header and the progress bars show it."""

    now: datetime
    scheduler: str  # "running" | "paused" | "off"
    next_mark: datetime | None
    current: RunState | None
    last_run: dict[str, Any] | None  # the last line of logs/runs.jsonl
