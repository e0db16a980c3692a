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
    # the stage's progress as its process reports it (the analyzer: summed over instruments);
    # ``unit`` is "bytes" for the translator's input read, empty for counted items
    done: int = 0
    total: int = 0
    unit: str = ""

    @property
    def fraction(self) -> float | None:
        """Done / total in 0…1, or None while the stage has not said how much there is."""
        if self.total <= 0:
            return None
        return min(1.0, max(0.0, self.done / self.total))

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
class RunEstimate:
    """How far the active run is and how long it should still take, from recent runs' stage
    durations and the running stage's own progress."""

    fraction: float  # 0…1 of the run's expected time
    seconds_left: float
    runs: int  # how many recent runs the estimate rests on


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine as the header and the progress bars show it."""

    now: datetime
    scheduler: str  # "running" | "paused" | "off"
    next_mark: datetime | None
    current: RunState | None
    last_run: dict[str, Any] | None  # the last line of logs/runs.jsonl
    # the last run's stages and instruments as it ended (rebuilt from its event file after a
    # restart), shown while no run is active
    last_state: RunState | None = None
    estimate: RunEstimate | None = None  # the active run's progress and time left


@dataclass(frozen=True)
class StageTypical:
    """A stage's duration in recent runs: the median of the runs where it did work, and the
    share of runs (that asked for it) where it did."""

    seconds: float
    share: float


def stage_fraction(st: StageState, instruments: dict[str, InstrumentProgress] | None = None) -> float | None:
    """How far a running stage is (0…1), None when it has not said. The analyzer counts each
    instrument alike (one not started yet is at 0), whatever its number of dates."""
    if st.name == "analyzer" and instruments:
        parts = []
        for ip in instruments.values():
            if ip.state in (SUCCESS, PARTIAL, FAILURE, SKIPPED, CANCELLED):
                parts.append(1.0)
            elif ip.total > 0:
                parts.append(min(1.0, ip.done / ip.total))
            else:
                parts.append(0.0)
        return sum(parts) / len(parts)
    return st.fraction


def estimate_run(
    run: RunState, typical: dict[str, StageTypical], runs: int, now: datetime
) -> RunEstimate | None:
    """The active run's share done and seconds left: stages ended take no more time; the
    running stage takes what its own progress says (or its typical time, when it has not said
    enough yet); a stage still waiting takes its typical time weighted by how often it had work.
    None without recent runs to go by."""
    if runs <= 0 or not typical:
        return None
    elapsed = max(0.0, seconds_between(run.started, now))
    left = 0.0
    for name in STAGE_NAMES:
        st = run.stages.get(name)
        typ = typical.get(name)
        if st is None or st.state not in (WAITING, RUNNING):
            continue
        if st.state == WAITING:
            if typ is not None:
                left += typ.seconds * typ.share
            continue
        spent = st.elapsed(now)
        frac = stage_fraction(st, run.instruments if name == "analyzer" else None)
        if frac is not None and frac >= 0.05 and spent >= 1.0:
            left += spent * (1.0 - frac) / frac
        elif typ is not None:
            left += max(typ.seconds - spent, 0.0)
    total = elapsed + left
    fraction = elapsed / total if total > 0 else 0.0
    return RunEstimate(fraction=round(min(fraction, 0.99), 2), seconds_left=float(round(left)), runs=runs)
