"""Run and stage durations are real seconds, also across a DST change."""

from __future__ import annotations

from datetime import datetime

from pipeline_core.runstate import InstrumentProgress, StageState, seconds_between
from pipeline_core.settings import CHICAGO


def test_durations_across_the_november_change_are_real_seconds() -> None:
    # 01:30 CDT to 01:10 CST: the wall clock goes back 20 minutes, 40 real minutes pass.
    start = datetime(2025, 11, 2, 1, 30, tzinfo=CHICAGO)
    end = datetime(2025, 11, 2, 1, 10, fold=1, tzinfo=CHICAGO)
    assert seconds_between(start, end) == 40 * 60
    stage = StageState("analyzer", started=start, ended=end)
    assert stage.elapsed(end) == 40 * 60
    inst = InstrumentProgress("ES", started=start)
    assert inst.elapsed(end) == 40 * 60


def test_duration_across_the_march_change() -> None:
    start = datetime(2025, 3, 9, 1, 50, tzinfo=CHICAGO)
    end = datetime(2025, 3, 9, 3, 5, tzinfo=CHICAGO)  # 02:00 CST became 03:00 CDT
    assert seconds_between(start, end) == 15 * 60
