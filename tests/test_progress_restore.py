"""Progress and the last run (issue: after a restart the panes were empty; progress jumped).

* A console started on a root whose last run was made by a real headless run (``qtsw --run-now
  --no-ui``) shows that run: each stage's state and log tail in its pane (titled ``last run
  HH:MM``), its events in the event table, its instrument bars — hosting the engine, and
  attached to a headless engine that restarted after the run.
* During a real run the stages report progress (the translator in bytes read, the merger in
  files merged, the analyzer every few percent of an instrument's dates); the panes' bars reach
  100 % and a new run clears them; the header says the share done and the time left once there
  are earlier runs to go by.

Real stages on sample exports; waits poll with a deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from test_analyzer_stage import add_bars
from test_control import clean_env, start_engine, stop_engine

from pipeline_core import catalog, history, sample
from pipeline_core.analyzer import runner
from pipeline_core.engine import Engine
from pipeline_core.events import TERMINAL
from pipeline_core.protocol import Reporter, parse
from pipeline_core.remote import RemoteEngine
from pipeline_core.runstate import (
    EventMessage,
    InstrumentProgress,
    RunState,
    StageState,
    StageTypical,
    estimate_run,
)
from pipeline_core.sample import write_samples
from pipeline_core.settings import CHICAGO, Settings, load_settings
from qtsw_tui.app import build_app
from qtsw_tui.widgets.event_table import EVENT, RUN, STAGE, EventsPanel
from qtsw_tui.widgets.header import StatusHeader
from qtsw_tui.widgets.progress import InstrumentProgressList
from qtsw_tui.widgets.stage_pane import StagePane

pytestmark = pytest.mark.anyio
DEADLINE = 60.0
END = date(2025, 11, 26)
STAGES = ("translator", "analyzer", "merger")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sample_settings(root: Path, instruments: list[str], days: int = 3) -> Settings:
    s = load_settings(root=root, env={})
    s.ensure_dirs()
    write_samples(s, days=days, instruments=instruments, end=END)
    return s


async def wait_for(pilot, cond: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; header: {header(pilot.app)!r}")
        await pilot.pause(0.05)


def header(app) -> str:
    return str(app.query_one("#header", StatusHeader).render())


def pane(app, stage: str) -> StagePane:
    return app.query_one(f"#pane-{stage}", StagePane)


def shows_last_run(app, settings: Settings, run: dict) -> bool:
    """The panes hold the run's log tails and say it is the last run; the event table has its
    events from start to end."""
    ended = datetime.fromisoformat(run["ended"]).astimezone(CHICAGO)
    for stage in STAGES:
        p = pane(app, stage)
        if f"last run {ended:%H:%M}" not in str(p.border_title) or "success" not in str(p.border_title):
            return False
        logs = [k for k in history.run_logs(settings, run["run_id"]) if k.split("-")[0] == stage]
        tails = [ln for k in logs for ln in history.run_logs(settings, run["run_id"])[k].read_text().splitlines()]
        if not tails or not any(t.split(" │ ")[-1][:16] in line for t in tails[-3:] for line in p.lines):
            return False
    records = [r for r in app.query_one("#events", EventsPanel).store.records() if r[RUN] == run["run_id"]]
    events = history.run_events(settings, run["run_id"])
    return len(records) == len(events) and records[-1][STAGE] == "pipeline" and records[-1][EVENT] in TERMINAL


async def test_a_console_after_a_restart_shows_the_last_run_hosting_and_attached(tmp_path: Path) -> None:
    root = tmp_path / "root"
    settings = sample_settings(root, ["ES", "NQ"])
    done = subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), "--run-now", "--no-ui"],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = history.read_runs(settings)
    assert run["status"] == "success"

    # a console hosting a new engine: the last run's stages, tails, bars and events
    app = build_app(settings, Engine(settings), {"schedule": False})
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: shows_last_run(app, settings, run), "the last run in panes and events")
        analyzer_lines = list(pane(app, "analyzer").lines)
        assert any(ln.startswith("ES") for ln in analyzer_lines) and any(ln.startswith("NQ") for ln in analyzer_lines)
        bars = app.query_one("#progress", InstrumentProgressList)
        assert sorted(bars.rows) == ["ES", "NQ"]
        assert all(r.bar.percentage == 1.0 and r.progress.state == "success" for r in bars.rows.values())
        assert all(pane(app, s).progress == 1.0 for s in STAGES)
        assert app.notified == []  # the past run's events raise no toasts
        await pilot.press("q")

    # an attached console on a headless engine started after the run: the same
    proc = start_engine(root)
    try:
        remote = RemoteEngine(settings, reconnect_seconds=0.1)
        app = build_app(settings, remote, {})
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: f"attached pid {proc.pid}" in header(app), "the console to attach")
            await wait_for(pilot, lambda: shows_last_run(app, settings, run), "the last run, attached")
            assert sorted(app.query_one("#progress", InstrumentProgressList).rows) == ["ES", "NQ"]
            assert all(pane(app, s).progress == 1.0 for s in STAGES)
            await pilot.press("q")
    finally:
        out = stop_engine(proc)
    assert proc.returncode == 0, out


async def test_progress_bars_fill_clear_and_the_header_estimates_the_time_left(tmp_path: Path) -> None:
    settings = sample_settings(tmp_path / "root", ["ES", "NQ", "CL"])
    engine = Engine(settings)
    progress: list = []
    engine.subscribe(lambda m: progress.append(m.event) if isinstance(m, EventMessage)
                     and m.event.event == "progress" else None)
    app = build_app(settings, engine, {"schedule": False})
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.serve_worker is not None and app.snapshot is not None, "the console")
        assert app.query_one("#progress", InstrumentProgressList).rows == {}
        await pilot.press("r")
        await wait_for(pilot, lambda: len(history.read_runs(settings)) == 1 and not engine.busy, "the first run")
        [first] = history.read_runs(settings)
        assert first["status"] == "success"
        # the translator in bytes of its input read, the merger in files merged: each to its whole
        tr = [e for e in progress if e.stage == "translator"]
        assert tr and {e.data.get("unit") for e in tr} == {"bytes"}
        assert tr[-1].data["done"] == tr[-1].data["total"] > 0
        mg = [e for e in progress if e.stage == "merger"]
        assert mg and mg[-1].data["done"] == mg[-1].data["total"] > 0 and "merged" in mg[-1].msg
        # the panes' bars reached 100 %, and so did the instruments'
        await wait_for(pilot, lambda: all(pane(app, s).progress == 1.0 for s in STAGES), "full bars")
        assert all("100%" in str(pane(app, s).border_title) for s in STAGES)
        assert sorted(app.query_one("#progress", InstrumentProgressList).rows) == ["CL", "ES", "NQ"]
        assert "left" not in header(app)

        # a second run, held in the analyzer (the catalogue's write lock): the header estimates
        # from the first run, and the translator's bar of the first run is gone
        hold = contextlib.ExitStack()
        hold.enter_context(catalog.hold_writes(settings))
        try:
            assert engine.request_run("manual", full=True)
            await wait_for(pilot, lambda: engine.busy and "analyzer" in header(app), "the analyzer at work")
            await wait_for(pilot, lambda: "% ~" in header(app) and " left" in header(app), "the estimate")
            run_line = header(app).splitlines()[1]
            assert len(run_line) <= 78 and "analyzer" in run_line, run_line  # 80 columns, padded
            assert pane(app, "translator").progress is None  # skipped this time: no bar
            est = engine.snapshot().estimate
            assert est is not None and est.runs == 1 and 0.0 <= est.fraction < 1.0
        finally:
            hold.close()
        await wait_for(pilot, lambda: len(history.read_runs(settings)) == 2 and not engine.busy, "the second run")
        # a merger-only run: the analyzer's instrument bars of the earlier run are cleared
        await pilot.press("m")
        await wait_for(pilot, lambda: len(history.read_runs(settings)) == 3 and not engine.busy, "the merger run")
        await wait_for(pilot, lambda: app.query_one("#progress", InstrumentProgressList).rows == {},
                       "the instrument bars cleared")
        assert pane(app, "analyzer").progress is None and pane(app, "translator").progress is None
        await pilot.press("q")


def test_the_analyzer_reports_every_few_percent_of_its_dates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()
    days = sample.trading_days(date(2025, 11, 28), 60)
    add_bars(settings, "ES", days)

    def reported(run_id: str) -> tuple[list[int], int]:
        out = io.StringIO()
        result = runner.analyze_instrument(settings, "ES", full=True, run_id=run_id, reporter=Reporter(out))
        msgs = [m.body for m in map(parse, out.getvalue().splitlines()) if m is not None and m.type == "progress"]
        return [m["done"] for m in msgs], result.dates

    # 60 dates are less than a batch's least (a few milliseconds of work): the start and the end
    done, total = reported("r1")
    assert total >= 50 and runner._MIN_BATCH_DATES > total
    assert done == [0, total]
    # an instrument with as many dates per 4 % as a batch's least: every few percent
    monkeypatch.setattr(runner, "_MIN_BATCH_DATES", 1)
    done, total = reported("r2")
    assert done[0] == 0 and done[-1] == total and done == sorted(done)
    steps = [b - a for a, b in zip(done, done[1:], strict=False)]
    assert len(done) >= 10 and max(steps) <= 0.1 * total, done


def test_the_estimate_goes_by_recent_runs_and_the_stage_in_hand() -> None:
    t0 = datetime(2025, 12, 1, 10, 0, tzinfo=CHICAGO)
    now = t0 + timedelta(seconds=30)
    run = RunState("r", "manual", t0, stages={n: StageState(n) for n in STAGES})
    run.stages["translator"].state = "success"
    an = run.stages["analyzer"]
    an.state, an.started = "running", t0 + timedelta(seconds=10)
    run.instruments = {"ES": InstrumentProgress("ES", state="success", done=10, total=10),
                       "NQ": InstrumentProgress("NQ", state="running", done=0, total=10)}
    typical = {"translator": StageTypical(10.0, 1.0), "analyzer": StageTypical(40.0, 1.0),
               "merger": StageTypical(20.0, 0.5)}
    est = estimate_run(run, typical, 4, now)
    # the analyzer is half done after 20 s: 20 s more; the merger: 20 s half the time
    assert est is not None and est.seconds_left == 30.0 and est.fraction == 0.5 and est.runs == 4
    assert estimate_run(run, {}, 0, now) is None  # nothing to go by


def test_the_run_line_keeps_its_stage_at_80_columns() -> None:
    from pipeline_core.runstate import EngineSnapshot, RunEstimate
    from qtsw_tui.widgets.header import header_lines

    t0 = datetime(2025, 12, 1, 10, 0, tzinfo=CHICAGO)
    now = t0 + timedelta(seconds=125)
    run = RunState("abcd1234-0000", "schedule", t0, stages={n: StageState(n) for n in STAGES}, stage="analyzer")
    run.stages["translator"].state = "success"
    run.stages["analyzer"].state, run.stages["analyzer"].started = "running", t0 + timedelta(seconds=3)
    snap = EngineSnapshot(now=now, scheduler="running", next_mark=None, current=run, last_run=None,
                          estimate=RunEstimate(0.45, 3725, 3))
    wide = header_lines(snap, now, host="hosting")[1].plain
    assert "schedule" in wide and "45% ~1:02:05 left" in wide and "stage analyzer 2:02" in wide
    line = header_lines(snap, now, host="hosting", width=78)[1].plain
    assert "45% ~1:02:05 left" in line and "analyzer 2:02" in line and len(line) <= 78, line
    # attached, the longer host label: the estimate still comes before anything that is cut
    line = header_lines(snap, now, host="attached pid 123456 since 10:00", width=78)[1].plain
    assert line.index("45% ~1:02:05 left") + len("45% ~1:02:05 left") <= 78, line
    # ... and then says only the engine's pid, so the running stage stays in sight too
    assert line.startswith("attached 123456  ") and "analyzer 2:02" in line and len(line) <= 78, line
    wide = header_lines(snap, now, host="attached pid 123456 since 10:00", width=160)[1].plain
    assert wide.startswith("attached pid 123456 since 10:00  ")


def test_typical_stage_times_come_from_recent_good_runs(tmp_path: Path) -> None:
    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()

    def report(i: int, status: str, stages: dict) -> None:
        started = datetime(2025, 12, 1, 10, i, tzinfo=CHICAGO)
        history.write_report(settings, {"run_id": f"{i:08d}-run", "status": status, "stages": stages}, started)

    ran = {"status": "success", "duration_seconds": 2.0}
    report(0, "success", {"translator": ran, "analyzer": {"status": "success", "duration_seconds": 10.0},
                          "merger": {"status": "skipped", "reason": "no analyzer output awaiting merge"}})
    report(1, "success", {"translator": {"status": "skipped", "reason": "not requested (single-stage run of analyzer)"},
                          "analyzer": {"status": "success", "duration_seconds": 20.0},
                          "merger": {"status": "success", "duration_seconds": 4.0}})
    report(2, "failure", {"translator": {"status": "failure", "duration_seconds": 99.0}})  # not a measure
    typical, runs = history.stage_typical(settings)
    assert runs == 2
    assert typical["translator"] == StageTypical(2.0, 1.0)  # the run that did not ask for it does not count
    assert typical["analyzer"] == StageTypical(15.0, 1.0)
    assert typical["merger"] == StageTypical(4.0, 0.5)  # it had work in one run of two


def test_the_snapshot_carries_progress_the_last_run_and_the_estimate_over_the_socket() -> None:
    from pipeline_core.control import snapshot_from_dict, snapshot_to_dict
    from pipeline_core.runstate import EngineSnapshot, RunEstimate

    t0 = datetime(2025, 12, 1, 10, 0, tzinfo=CHICAGO)
    run = RunState("r1", "manual", t0, stages={n: StageState(n) for n in STAGES}, stage="translator")
    tr = run.stages["translator"]
    tr.state, tr.started, tr.done, tr.total, tr.unit = "running", t0, 300, 1000, "bytes"
    last = RunState("r0", "schedule", t0 - timedelta(minutes=15), status="success", ended=t0 - timedelta(minutes=14),
                    stages={n: StageState(n, state="success", done=5, total=5) for n in STAGES},
                    instruments={"ES": InstrumentProgress("ES", state="success", done=3, total=3)})
    snap = EngineSnapshot(now=t0, scheduler="running", next_mark=None, current=run, last_run={"run_id": "r0"},
                          last_state=last, estimate=RunEstimate(0.3, 12.0, 4))
    back = snapshot_from_dict(json.loads(json.dumps(snapshot_to_dict(snap))))
    assert back.current == run and back.last_state == last and back.estimate == snap.estimate
    assert back.current.stages["translator"].fraction == 0.3
