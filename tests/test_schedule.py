"""The quarter-hour schedule: marks in Chicago wall time, DST, midnight, missed marks, not-before.

(Overlap with an active run and the engine's use of the schedule are in test_engine.py.)
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime, time, timedelta

import pytest
import schedule as schedule_lib
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline_core import clock
from pipeline_core.schedule import (
    MarkSchedule,
    marks_between,
    next_mark,
    not_before_from,
    parse_hhmm,
)
from pipeline_core.settings import CHICAGO

Q = (0, 15, 30, 45)


def ct(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=CHICAGO, fold=fold)


def brute_next(after: datetime, minutes) -> datetime:
    """Oracle: step through UTC minutes; Chicago's offsets are whole hours, so a Chicago wall
    minute is a UTC minute."""
    t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    while t.astimezone(CHICAGO).minute not in minutes:
        t += timedelta(minutes=1)
    return t


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def fire_times(start: datetime, end: datetime, step: timedelta = timedelta(minutes=1)) -> list[datetime]:
    """Poll a schedule every ``step`` of real time from start to end; the moments it fired."""
    fc = FakeClock(start)
    sched = MarkSchedule(Q, fc)
    fired = []
    while fc.t.astimezone(UTC) <= end.astimezone(UTC):
        due = sched.poll()
        assert due.missed == []
        if due.mark is not None:
            assert due.mark.astimezone(UTC) <= fc.t.astimezone(UTC) < due.mark.astimezone(UTC) + step
            fired.append(due.mark)
        fc.t = (fc.t.astimezone(UTC) + step).astimezone(CHICAGO)
    return fired


def test_marks_are_the_quarter_hours() -> None:
    assert next_mark(ct(2025, 6, 3, 10, 1), Q) == ct(2025, 6, 3, 10, 15)
    assert next_mark(ct(2025, 6, 3, 10, 14, 59, 999999), Q) == ct(2025, 6, 3, 10, 15)
    assert next_mark(ct(2025, 6, 3, 10, 15), Q) == ct(2025, 6, 3, 10, 30)  # strictly after
    assert next_mark(ct(2025, 6, 3, 10, 45, 0, 1), Q) == ct(2025, 6, 3, 11, 0)


def test_midnight_and_year_end() -> None:
    assert next_mark(ct(2025, 12, 31, 23, 45), Q) == ct(2026, 1, 1, 0, 0)
    assert next_mark(ct(2025, 2, 28, 23, 50), Q) == ct(2025, 3, 1, 0, 0)
    fired = fire_times(ct(2025, 12, 31, 23, 40), ct(2026, 1, 1, 0, 20))
    assert fired == [ct(2025, 12, 31, 23, 45), ct(2026, 1, 1, 0, 0), ct(2026, 1, 1, 0, 15)]


def test_spring_forward_2025_03_09() -> None:
    fired = fire_times(ct(2025, 3, 9, 0, 50), ct(2025, 3, 9, 3, 40))
    assert [f.strftime("%H:%M %Z") for f in fired] == [
        "01:00 CST", "01:15 CST", "01:30 CST", "01:45 CST", "03:00 CDT", "03:15 CDT", "03:30 CDT",
    ]
    gaps = {(b.astimezone(UTC) - a.astimezone(UTC)).total_seconds() for a, b in zip(fired, fired[1:], strict=False)}
    assert gaps == {900.0}  # fifteen real minutes apart, also across the gap
    assert next_mark(ct(2025, 3, 9, 1, 45), Q).strftime("%H:%M %Z") == "03:00 CDT"


def test_fall_back_2025_11_02() -> None:
    fired = fire_times(ct(2025, 11, 2, 0, 50), ct(2025, 11, 2, 2, 10, fold=0))
    assert [f.strftime("%H:%M %Z") for f in fired] == [
        "01:00 CDT", "01:15 CDT", "01:30 CDT", "01:45 CDT",
        "01:00 CST", "01:15 CST", "01:30 CST", "01:45 CST", "02:00 CST",
    ]
    gaps = {(b.astimezone(UTC) - a.astimezone(UTC)).total_seconds() for a, b in zip(fired, fired[1:], strict=False)}
    assert gaps == {900.0}
    # the repeated hour: after 01:45 CDT comes 01:00 CST
    assert next_mark(ct(2025, 11, 2, 1, 45, fold=0), Q) == ct(2025, 11, 2, 1, 0, fold=1)


@hsettings(max_examples=300, deadline=None)
@given(
    after=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=6),
)
def test_next_mark_matches_the_oracle(after: datetime, minutes: set[int]) -> None:
    got = next_mark(after, sorted(minutes))
    # Compare instants: a datetime in the repeated autumn hour never equals one in another zone
    # (PEP 495), even when both name the same moment.
    assert got.astimezone(UTC) == brute_next(after, minutes).astimezone(UTC)
    local = got.astimezone(CHICAGO)
    assert local.minute in minutes and local.second == 0 and local.microsecond == 0
    assert after < got <= after + timedelta(hours=1)
    assert got.tzinfo is CHICAGO


@hsettings(max_examples=60, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(2025, 3, 7), max_value=datetime(2025, 11, 4), timezones=st.just(UTC)),
    hours=st.integers(0, 30),
)
def test_marks_between_is_every_quarter_hour(start: datetime, hours: int) -> None:
    end = start + timedelta(hours=hours)
    marks = marks_between(start, end, Q)
    assert all(start < m.astimezone(UTC) <= end for m in marks)
    assert len(marks) == len({m.astimezone(UTC) for m in marks})
    expected = 0
    t = brute_next(start, Q)
    while t <= end:
        expected += 1
        t += timedelta(minutes=15)
    assert len(marks) == expected


def test_two_hour_sleep_gives_one_run_and_the_missed_marks() -> None:
    fc = FakeClock(ct(2025, 6, 3, 10, 1))
    sched = MarkSchedule(Q, fc)
    assert sched.poll().mark is None
    assert sched.next_mark == ct(2025, 6, 3, 10, 15)
    fc.t = ct(2025, 6, 3, 12, 5)  # the machine slept through 10:15 … 12:00
    due = sched.poll()
    assert due.mark == ct(2025, 6, 3, 12, 0)
    assert due.missed == [ct(2025, 6, 3, 10, 15) + timedelta(minutes=15 * i) for i in range(7)]
    assert sched.poll().mark is None  # nothing twice
    assert sched.next_mark == ct(2025, 6, 3, 12, 15)


def test_not_before_delays_the_first_mark() -> None:
    fc = FakeClock(ct(2025, 6, 3, 6, 0))
    sched = MarkSchedule(Q, fc, not_before=ct(2025, 6, 3, 7, 30))
    assert sched.next_mark == ct(2025, 6, 3, 7, 30)  # "not before" includes the moment itself
    fired = []
    while fc.t < ct(2025, 6, 3, 8, 1):
        due = sched.poll()
        assert due.missed == []
        if due.mark:
            fired.append(due.mark)
        fc.t += timedelta(minutes=1)
    assert fired == [ct(2025, 6, 3, 7, 30), ct(2025, 6, 3, 7, 45), ct(2025, 6, 3, 8, 0)]
    off_mark = MarkSchedule(Q, FakeClock(ct(2025, 6, 3, 6, 0)), not_before=ct(2025, 6, 3, 7, 37))
    assert off_mark.next_mark == ct(2025, 6, 3, 7, 45)


def test_not_before_from_hhmm() -> None:
    assert parse_hhmm("07:30") == time(7, 30)
    assert not_before_from(time(7, 30), ct(2025, 6, 3, 6, 0)) == ct(2025, 6, 3, 7, 30)
    assert not_before_from(time(7, 30), ct(2025, 6, 3, 14, 0)) == ct(2025, 6, 4, 7, 30)
    # 02:30 does not exist on 2025-03-09: the first moment after the gap
    assert not_before_from(time(2, 30), ct(2025, 3, 9, 0, 0)).strftime("%H:%M %Z") == "03:30 CDT"
    for bad in ("7.30", "24:00", "07:60", "x"):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_hhmm(bad)


def test_clock_moved_back_starts_afresh() -> None:
    fc = FakeClock(ct(2025, 6, 3, 10, 20))
    sched = MarkSchedule(Q, fc)
    fc.t = ct(2025, 6, 3, 9, 0)
    assert sched.poll().mark is None
    assert sched.next_mark == ct(2025, 6, 3, 9, 15)


def test_built_on_the_schedule_library() -> None:
    fc = FakeClock(ct(2025, 6, 3, 10, 1))
    sched = MarkSchedule(Q, fc)
    assert isinstance(sched.scheduler, schedule_lib.Scheduler)
    assert isinstance(sched.job, schedule_lib.Job) and sched.scheduler.jobs == [sched.job]
    assert sched.scheduler.next_run == ct(2025, 6, 3, 10, 15)
    assert sched.scheduler.idle_seconds == 14 * 60
    assert sched.seconds_to_next() == 14 * 60


def test_local_time_zone_of_the_machine_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host in Asia/Kolkata (+05:30) the marks are still Chicago's.

    Quarter-hour minutes would not show a local-time mistake (every zone's offset is a multiple
    of 15 minutes), so the marks here are at minute 5: read in Kolkata time they would be :35.
    """
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    _time.tzset()
    try:
        before = datetime.now(UTC)
        sched = MarkSchedule((5,), clock.now)
        nxt = sched.next_mark
        assert nxt.tzinfo is CHICAGO and nxt.minute == 5 and nxt.second == 0
        assert nxt.astimezone(UTC) == brute_next(before, {5}).astimezone(UTC)
        # --schedule 08:00 is 08:00 in Chicago, not on the machine's clock
        nb = not_before_from(time(8, 0), clock.now())
        assert (nb.astimezone(CHICAGO).hour, nb.astimezone(CHICAGO).minute) == (8, 0)
        assert timedelta(seconds=-1) <= nb.astimezone(UTC) - datetime.now(UTC) <= timedelta(days=1)
    finally:
        monkeypatch.undo()
        _time.tzset()


def test_next_mark_rejects_naive_and_bad_minutes() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_mark(datetime(2025, 1, 1), Q)
    with pytest.raises(ValueError, match="0 to 59"):
        next_mark(ct(2025, 1, 1), [60])
