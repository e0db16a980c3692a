"""The schedule (SPEC §6.3): runs at the quarter-hour marks of Chicago wall-clock time.

:func:`next_mark` is the ground truth: the first moment strictly after a given one whose Chicago
wall-clock minute is one of the configured minutes (second 0), worked out in wall time with
``zoneinfo``. It is right across midnight (23:45 → 00:00 of the next day), the spring-forward
gap (01:45 CST → 03:00 CDT, fifteen real minutes later) and the fall-back repeat (01:00–01:45
happen twice, CDT then CST; both are marks, so runs stay fifteen real minutes apart).

:class:`MarkSchedule` is built on the ``schedule`` library: a ``schedule.Scheduler`` holding one
job, driven by ``run_pending()`` from the engine's async loop. The library's own time keeping is
replaced, for reasons that matter here: it reads the machine's local clock (naive
``datetime.now()``), which is neither Chicago time (on a host in Asia/Kolkata a mark set for
:05 would fire at Chicago :35, and every hour-based time would be off) nor injectable for tests; its ``.at(..., tz)`` needs ``pytz``; and its
naive wall-clock arithmetic skips the repeated hour at fall-back. So the job's next run comes
from :func:`next_mark` on the injected Chicago clock, and ``should_run`` compares against that
clock.

Policy: a run when a mark passes; if several marks passed since the last look (the machine
slept, the clock jumped), one run for the latest and each earlier one reported as missed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import schedule as schedule_lib

from pipeline_core.settings import CHICAGO


def _exists(wall: datetime) -> bool:
    """False for a wall time inside the spring-forward gap (it has no instant)."""
    back = wall.astimezone(UTC).astimezone(CHICAGO)
    return back.replace(tzinfo=None) == wall.replace(tzinfo=None)


def _instants(day: date, hour: int, minute: int) -> list[datetime]:
    """The instants with Chicago wall time ``day hour:minute`` (0, 1 or — at fall-back — 2)."""
    out = []
    for fold in (0, 1):
        wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=CHICAGO, fold=fold)
        if not _exists(wall):
            continue
        inst = wall.astimezone(UTC)
        if inst not in out:
            out.append(inst)
    return out


def next_mark(after: datetime, minutes: Sequence[int]) -> datetime:
    """The first schedule mark strictly after ``after`` (aware), as an aware Chicago datetime.

    A mark is a moment whose Chicago wall-clock time is ``HH:MM:00`` with ``MM`` in ``minutes``.
    """
    if after.tzinfo is None:
        raise ValueError("next_mark needs an aware datetime (Chicago time)")
    mins = sorted({int(m) for m in minutes})
    if not mins or mins[0] < 0 or mins[-1] > 59:
        raise ValueError(f"schedule minutes must be 0 to 59, got {list(minutes)}")
    after_utc = after.astimezone(UTC)
    local = after.astimezone(CHICAGO)
    # Walk wall-clock hours from the hour before ``after`` (so that a repeated hour at fall-back
    # is seen in full) until a mark is found; three hours always suffice.
    start = datetime(local.year, local.month, local.day, local.hour) - timedelta(hours=1)
    best: datetime | None = None
    for h in range(4):
        wall_hour = start + timedelta(hours=h)
        for m in mins:
            for inst in _instants(wall_hour.date(), wall_hour.hour, m):
                if inst > after_utc and (best is None or inst < best):
                    best = inst
        if best is not None and h >= 2:
            break
    assert best is not None
    return best.astimezone(CHICAGO)


def _utc(dt: datetime) -> datetime:
    # Aware datetimes sharing a tzinfo compare and subtract by wall time, ignoring the fold:
    # in the repeated hour 01:15 CDT would "equal" 01:15 CST. Compare in UTC, always.
    return dt.astimezone(UTC)


def marks_between(start: datetime, end: datetime, minutes: Sequence[int]) -> list[datetime]:
    """All marks ``m`` with ``start < m <= end``, in order."""
    out: list[datetime] = []
    m = next_mark(start, minutes)
    while _utc(m) <= _utc(end):
        out.append(m)
        m = next_mark(m, minutes)
    return out


_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(text: str) -> time:
    """``HH:MM`` (24 h) as a time; ValueError naming the value otherwise."""
    m = _HHMM.match(text.strip())
    if not m:
        raise ValueError(f"--schedule {text!r}: expected a Chicago wall-clock time HH:MM, e.g. 07:30")
    return time(int(m.group(1)), int(m.group(2)))


def not_before_from(hhmm: time, now: datetime) -> datetime:
    """The next Chicago moment at wall time ``hhmm``: today if still ahead, else tomorrow.

    A wall time that does not exist that day (inside the spring-forward gap) moves to the first
    moment after the gap.
    """
    local = now.astimezone(CHICAGO)
    for add in (0, 1, 2):
        d = local.date() + timedelta(days=add)
        wall = datetime.combine(d, hhmm, tzinfo=CHICAGO)
        if not _exists(wall):
            wall = wall.astimezone(UTC).astimezone(CHICAGO)
        if _utc(wall) >= _utc(local):
            return wall
    raise AssertionError("unreachable")


@dataclass
class Due:
    """What a look at the clock found: the mark to run for (None: nothing due), marks missed."""

    mark: datetime | None = None
    missed: list[datetime] = field(default_factory=list)


class _MarkJob(schedule_lib.Job):
    """A ``schedule`` job whose next run is the next Chicago mark on the injected clock."""

    def __init__(self, owner: MarkSchedule) -> None:
        super().__init__(interval=1, scheduler=owner.scheduler)
        self.unit = "minutes"
        self.owner = owner

    def _schedule_next_run(self) -> None:
        self.next_run = self.owner.first_after(self.owner.cursor)

    @property
    def should_run(self) -> bool:
        assert self.next_run is not None
        return _utc(self.owner.clock()) >= _utc(self.next_run)

    def run(self) -> object:
        ret = self.job_func()
        self.last_run = self.owner.clock()
        self._schedule_next_run()
        return ret


class _Scheduler(schedule_lib.Scheduler):
    def __init__(self, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.clock = clock

    @property
    def idle_seconds(self) -> float | None:  # the library's version uses the local clock
        if not self.next_run:
            return None
        return (_utc(self.next_run) - _utc(self.clock())).total_seconds()


class MarkSchedule:
    """The quarter-hour schedule on an injectable Chicago clock.

    Call :meth:`poll` whenever convenient (the engine's loop does, at least every second); it
    returns what is due. ``not_before`` delays the first mark to one at or after that moment.
    """

    def __init__(
        self,
        minutes: Sequence[int],
        clock: Callable[[], datetime],
        not_before: datetime | None = None,
    ) -> None:
        self.minutes = tuple(sorted({int(m) for m in minutes}))
        self.clock = clock
        self.not_before = not_before
        now = _utc(clock())
        self.cursor = now  # marks up to here have been dealt with (UTC)
        if not_before is not None and _utc(not_before) > now:
            # a mark exactly at not_before counts ("not before", inclusive)
            self.cursor = _utc(not_before) - timedelta(microseconds=1)
        self.scheduler = _Scheduler(clock)
        self._due = Due()
        self.job = _MarkJob(self).do(self._collect)

    def first_after(self, moment: datetime) -> datetime:
        return next_mark(moment, self.minutes)

    @property
    def next_mark(self) -> datetime:
        """The next mark not yet dealt with."""
        nxt = self.scheduler.next_run
        assert nxt is not None
        return nxt.astimezone(CHICAGO)

    def seconds_to_next(self) -> float:
        idle = self.scheduler.idle_seconds
        return max(0.0, idle if idle is not None else 0.0)

    def _collect(self) -> None:
        now = _utc(self.clock())
        marks = marks_between(self.cursor, now, self.minutes)
        self.cursor = max(self.cursor, now)
        if marks:
            self._due = Due(mark=marks[-1], missed=marks[:-1])

    def poll(self) -> Due:
        """Marks that passed since the last poll: the one to run for, and the missed ones."""
        now = _utc(self.clock())
        if now < self.cursor - timedelta(minutes=1) and (
            self.not_before is None or now >= _utc(self.not_before)
        ):
            # The clock moved back (not a DST change: instants are aware). Start afresh from
            # now rather than waiting for the old cursor to come round again.
            self.cursor = now
            self.job._schedule_next_run()
        self._due = Due()
        self.scheduler.run_pending()
        return self._due
