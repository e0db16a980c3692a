"""The operator console, driven with Textual's Pilot against a real engine on a temp data root.

Every app here is built by ``build_app`` (what the command line runs) over a real
:class:`Engine` whose stages are the real subprocesses, on sample exports written by
``pipeline_core.sample``. Waits poll a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from processes import processes_naming
from rich.console import Console
from textual.app import App
from textual.widgets import DataTable, Input, Select, Static

from pipeline_core import catalog, clock, history, results
from pipeline_core.engine import Engine
from pipeline_core.events import STAGES, TERMINAL, Event
from pipeline_core.results import Period, ResultFilter
from pipeline_core.runstate import STAGE_NAMES, OutputMessage
from pipeline_core.sample import write_export_signal, write_samples
from pipeline_core.settings import CHICAGO, Settings, load_settings
from qtsw_tui.app import QtswApp, build_app
from qtsw_tui.resultscmd import money
from qtsw_tui.screens.confirm import ConfirmScreen
from qtsw_tui.screens.help import HelpScreen
from qtsw_tui.screens.history import HistoryScreen
from qtsw_tui.screens.results import ResultsScreen
from qtsw_tui.screens.run_detail import RunDetailScreen, read_tail
from qtsw_tui.widgets.counters import counters_text, read_counters
from qtsw_tui.widgets.event_table import (
    EVENT,
    KEY,
    RUN,
    STAGE,
    TEXT,
    EventFilter,
    EventsPanel,
    EventStore,
    event_row,
    newest_matching,
    record,
)
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import countdown, duration, event_clock, size
from qtsw_tui.widgets.header import StatusHeader
from qtsw_tui.widgets.progress import InstrumentProgressList
from qtsw_tui.widgets.stage_pane import StagePane

pytestmark = pytest.mark.anyio

SAMPLE_END = date(2025, 11, 26)
SIZE = (80, 24)
DEADLINE = 60.0


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


def make_settings(root: Path, **overrides) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    s = load_settings(root=root, env=env, overrides=overrides or None)
    s.ensure_dirs()
    return s


def sample_root(root: Path, days: int = 3, instruments: list[str] | None = None, **overrides) -> Settings:
    s = make_settings(root, **overrides)
    write_samples(s, days=days, instruments=instruments or ["ES", "NQ", "CL"], end=SAMPLE_END)
    return s


async def wait_for(pilot, cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Let the app run until ``cond()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            app = pilot.app
            snap = app.engine.snapshot()
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; busy={app.engine.busy} "
                f"last_run={snap.last_run} notified={getattr(app, 'notified', None)}"
            )
        await pilot.pause(0.05)


def header_text(app: QtswApp) -> str:
    return str(app.query_one("#header", StatusHeader).render())


def shown_text(widget, width: int = 100) -> str:
    """What a Static shows, as plain text (Rich renderables rendered at ``width``)."""
    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(content)
    return console.export_text()


def table_rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def run_and_wait(pilot, key: str, n_runs_before: int, what: str) -> dict:
    """Press ``key`` and wait until a new run is recorded and the console shows it ended."""
    app: QtswApp = pilot.app
    await pilot.press(key)
    await wait_for(
        pilot,
        lambda: len(history.read_runs(app.settings)) > n_runs_before and not app.engine.busy,
        what,
    )
    run = history.read_runs(app.settings)[-1]
    # the terminal pipeline event has reached the event table through the batched feed
    await wait_for(
        pilot,
        lambda: any(
            r[RUN] == run["run_id"] and r[STAGE] == "pipeline" and r[EVENT] in TERMINAL
            for r in app.query_one("#events", EventsPanel).store.records()
        ),
        f"the end of run {run['run_id'][:8]} in the event table",
    )
    return run


def ev(seq: int, stage: str = "analyzer", event: str = "log", msg: str = "", run_id: str = "r1", **data) -> Event:
    return Event(run_id, stage, event, msg, data, f"2025-12-01T10:00:{seq % 60:02d}-06:00", seq)


def rec(*args, **kwargs):
    return record(ev(*args, **kwargs))


# --- plain functions ----------------------------------------------------------------------------


def test_formats_read_as_an_operator_expects():
    assert duration(None) == "-"
    assert duration(42.9) == "42s"
    assert duration(187) == "3:07"
    assert duration(3723) == "1:02:03"
    assert countdown(775) == "12:55"
    assert countdown(-5) == "00:00"
    assert size(0) == "0 B"
    assert size(12_900_000) == "12.9 MB"  # decimal units, as `qtsw status`
    assert size(999) == "999 B" and size(1500) == "1.5 kB" and size(2_500_000_000) == "2.5 GB"
    # event times: Chicago wall clock, whatever the offset written, with or without a fraction
    assert event_clock("2025-12-01T10:00:05.123456-06:00") == "10:00:05"
    assert event_clock("2025-07-01T10:00:05-05:00") == "10:00:05"
    assert event_clock("2025-07-01T15:00:05.5+00:00") == "10:00:05"
    assert event_clock("2025-12-01T16:00:05.123456Z") == "10:00:05"
    assert event_clock("not a time") == "-"


def test_filter_query_parses_stages_types_and_words():
    f = EventFilter.parse("analyzer event:failure,cancelled ES timeout")
    assert f.stages == {"analyzer"}
    assert f.events == {"failure", "cancelled"}
    assert f.words == ("es", "timeout")
    assert f.matches(rec(1, "analyzer", "failure", "ES timeout after 6 h"))
    assert not f.matches(rec(2, "analyzer", "failure", "NQ exit code 1"))
    assert not f.matches(rec(3, "merger", "failure", "ES timeout"))
    # verbose off hides progress/metric/plain log, but never a warning
    quiet = EventFilter.parse("")
    assert not quiet.matches(rec(4, event="progress"))
    assert not quiet.matches(rec(5, event="log", level="info"))
    assert quiet.matches(rec(6, event="log", level="warning"))
    assert EventFilter.parse("", verbose=True).matches(rec(7, event="progress"))
    # asking for a verbose type by name shows it even with verbose off
    assert EventFilter.parse("progress").matches(rec(8, event="progress"))


events_st = st.lists(
    st.builds(
        lambda i, stage, event, word, level: rec(i, stage, event, f"msg {word}", level=level),
        st.integers(0, 10**6),
        st.sampled_from(STAGES),
        st.sampled_from(("start", "success", "failure", "log", "progress", "metric", "skipped")),
        st.sampled_from(("alpha", "beta", "gamma")),
        st.sampled_from(("info", "warning", "")),
    ),
    max_size=120,
)
filters_st = st.builds(
    EventFilter.parse,
    st.sampled_from(("", "analyzer", "failure", "beta", "stage:merger,translator", "event:log gamma")),
    st.booleans(),
)


@hsettings(max_examples=60, deadline=None)
@given(records=events_st, flt=filters_st, capacity=st.integers(1, 50), limit=st.integers(0, 30),
       cut=st.integers(0, 120))
def test_event_store_window_equals_brute_force(records, flt, capacity, limit, cut):
    """The table window is the newest ``limit`` matching records of the newest ``capacity`` stored."""
    store = EventStore(capacity)
    store.extend(records[:cut])
    store.extend(records[cut:])
    kept = records[-capacity:]
    expected = [r for r in kept if flt.matches(r)][-limit:] if limit else []
    assert store.latest(flt, limit) == expected
    assert len(store) == len(kept) and store.total == len(records)
    assert newest_matching(records, flt, limit) == ([r for r in records if flt.matches(r)][-limit:] if limit else [])


def test_read_tail_reads_only_the_end_of_a_big_log(tmp_path):
    log = tmp_path / "analyzer-ES.log"
    log.write_text("".join(f"line {i}\n" for i in range(200_000)))
    lines = read_tail(log, max_bytes=10_000, max_lines=100)
    assert len(lines) == 100 and lines[-1] == "line 199999"
    head = read_tail(log, max_bytes=10_000, max_lines=10_000)
    assert head[0].startswith("… (") and "earlier bytes" in head[0]


def test_counters_count_raw_files_exports_and_monthly_files(tmp_path):
    s = sample_root(tmp_path / "root", days=2, instruments=["ES", "NQ"])
    # an export in progress: a CSV with a progress signal and no complete signal
    part = s.raw_dir / "DataExport_CL_20251127_020000_UTC.csv"
    part.write_text("Date,Time,Open,High,Low,Close,Volume,Instrument\n")
    write_export_signal(s, part, "CL", 1234, "progress", when=datetime(2025, 11, 27, 2, 0, tzinfo=CHICAGO))
    c = read_counters(s)
    assert c.raw_ready == 2
    assert len(c.exporting) == 1 and c.exporting[0].get("instrument") == "CL"
    assert c.raw_waiting == 1  # the CSV being exported is not ready
    text = str(counters_text(c))
    assert "1 in progress" in text and "CL  1,234 bars" in text
    assert c.store_bytes == 0 and c.monthly == {}
    month = s.analyzer_runs_dir / "ES1" / "2025"
    month.mkdir(parents=True)
    (month / "ES1_an_2025_11.parquet").write_bytes(b"x" * 10)
    assert read_counters(s).monthly == {"ES1": 1}


# --- the event panel under load (real widget, real events) -------------------------------------


class PanelApp(App):
    """A bare app holding one EventsPanel."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def compose(self):
        yield EventsPanel(capacity=500, window=self.window, id="events")


@hsettings(max_examples=12, deadline=None)
@given(batches=st.lists(st.integers(0, 90), min_size=1, max_size=6), query=st.sampled_from(("", "analyzer", "beta")),
       verbose=st.booleans())
def test_event_panel_rows_are_the_newest_matching_window(batches, query, verbose):
    """After any sequence of batches the table holds exactly store.latest(filter, window), in order."""

    async def go() -> None:
        app = PanelApp(window=40)
        async with app.run_test(size=(100, 30)) as pilot:
            panel = app.query_one(EventsPanel)
            panel.set_query(query)
            panel.set_verbose(verbose)
            seq = 0
            stages = ("analyzer", "translator", "pipeline")
            kinds = ("start", "log", "progress", "failure")
            for n in batches:
                batch = []
                for _ in range(n):
                    seq += 1
                    batch.append(ev(seq, stages[seq % 3], kinds[seq % 4], f"m {('alpha', 'beta')[seq % 2]}"))
                panel.add_events(batch)
                await pilot.pause()
                shown = [str(k.value) for k in panel.table.rows]
                assert list(panel._shown) == shown
                expected = [r[KEY] for r in panel.store.latest(panel.flt, panel.window)]
                if panel._stale:  # a flood: rebuilt on a timer; what shows is an older window
                    assert len(shown) <= panel.window
                    await wait_for(pilot, lambda: not panel._stale, "the table to catch up", timeout=5)
                    shown = [str(k.value) for k in panel.table.rows]
                assert shown == expected

    asyncio.run(go())


# --- the console over a real engine ------------------------------------------------------------


def console(settings: Settings, **options) -> QtswApp:
    return build_app(settings, Engine(settings), options)


async def test_run_now_fills_panes_bars_events_then_history_detail_results_and_filter(tmp_path):
    s = sample_root(tmp_path / "root")
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.scheduler == "running",
                       "the scheduler to run")
        assert "schedule running" in header_text(app) and "next " in header_text(app)
        run = await run_and_wait(pilot, "r", 0, "the run started with r to end")
        assert run["status"] == "success", run
        assert run["trigger"] == "manual"
        # panes: each stage's output streamed into its pane, with the run's separator line
        for stage in ("translator", "analyzer", "merger"):
            pane = app.query_one(f"#pane-{stage}", StagePane)
            await wait_for(pilot, lambda pane=pane: pane.line_count > 2, f"{stage} output in its pane")
            assert any(run["run_id"][:8] in line for line in pane.lines), stage
            assert "success" in str(pane.border_title)
        assert any("translated" in line for line in app.query_one("#pane-translator", StagePane).lines)
        # one progress bar per analyzer instrument, full, with its state
        bars = app.query_one("#progress", InstrumentProgressList)
        assert sorted(bars.rows) == ["CL", "ES", "NQ"]
        for row in bars.rows.values():
            assert row.bar.percentage == 1.0 and row.progress.state == "success"
            assert "success" in str(row.state_label.render())
        # the event table got the run's events in batches, not one message per flush
        panel = app.query_one("#events", EventsPanel)
        records = [r for r in panel.store.records() if r[RUN] == run["run_id"]]
        assert [r[EVENT] for r in records if r[STAGE] == "pipeline"] == ["start", "success"]
        assert not panel.display and panel.table.row_count == 0  # hidden at 80x24: no rows built yet
        assert app.flushed["batches"] < app.received["events"] + app.received["lines"]
        assert app.received["lines"] > 0
        # header: idle again, and the last run's result
        await wait_for(pilot, lambda: "last ✓ success" in header_text(app), "the header to show the last run")
        # counters: monthly files appeared (timer + refresh at the end of a run)
        await wait_for(
            pilot,
            lambda: (c := app.query_one("#counters").counters) is not None and len(c.monthly) == 6,
            "the counters to show 6 streams of monthly files",
        )

        # the filter narrows the event table, and Esc clears it
        await pilot.press("e")
        assert app.query_one("#main").has_class("-events")
        rows = table_rows(panel.table)
        assert any(r[2] == "pipeline" and r[3] == "start" and r[1] == run["run_id"][:8] for r in rows)
        assert any(r[2] == "pipeline" and r[3] == "success" for r in rows)
        assert any(r[2] == "scheduler" and r[3] == "start" for r in rows)
        everything = panel.table.row_count
        await pilot.press("slash")
        box = app.query_one("#event-filter", Input)
        assert box.has_focus
        await pilot.press(*"merger")
        narrowed = table_rows(panel.table)
        assert 0 < len(narrowed) < everything
        assert {r[2] for r in narrowed} == {"merger"}
        await pilot.press("escape")
        assert panel.table.row_count == everything and not box.display
        # the stage filter key cycles stages; v shows the verbose events too
        await pilot.press("f")
        assert {r[2] for r in table_rows(panel.table)} == {"pipeline"}
        await pilot.press("f", "f")
        assert {r[2] for r in table_rows(panel.table)} == {"analyzer"}
        quiet = panel.table.row_count
        await pilot.press("v")
        assert panel.table.row_count > quiet
        assert any(r[3] in ("progress", "metric", "log") for r in table_rows(panel.table))
        await pilot.press("e")

        # history shows the run just made; Enter opens its detail
        await pilot.press("h")
        assert isinstance(app.screen, HistoryScreen)
        table = app.screen.query_one("#history-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, "the run in the history table")
        first = table_rows(table)[0]
        assert first[1] == run["run_id"][:8] and "success" in first[3] and first[2] == "manual"
        await pilot.press("enter")
        assert isinstance(app.screen, RunDetailScreen)
        detail = app.screen
        await wait_for(pilot, lambda: detail.report is not None and detail.events, "the run's report and events")
        stages_text = shown_text(detail.query_one("#detail-stages"))
        for stage in ("translator", "analyzer", "merger"):
            assert stage in stages_text
        assert "file(s) translated" in stages_text
        assert [e.run_id for e in detail.events] == [run["run_id"]] * len(detail.events)
        assert detail.query_one("#detail-events", EventsPanel).table.row_count == len(detail.events)
        assert set(detail.logs) >= {"translator", "analyzer-ES", "merger"}
        choice = detail.query_one("#detail-log-choice", Select)
        assert choice.value == "translator"
        await wait_for(pilot, lambda: detail.query_one("#detail-log").line_count > 1, "the translator log")
        await pilot.press("escape", "escape")
        assert not isinstance(app.screen, (HistoryScreen, RunDetailScreen))

        # results: the month of the sample, per stream
        await pilot.press("s")
        assert isinstance(app.screen, ResultsScreen)
        res = app.screen
        await wait_for(pilot, lambda: res.view is not None, "the results")
        assert res.month == Period(2025, 11)
        rtable = [ln.replace("> ", "", 1).split()
                  for ln in str(res.query_one("#results-matrix", Static).content).splitlines()[1:]]
        assert [r[0] for r in rtable] == ["ES1", "ES2", "NQ1", "NQ2", "CL1", "CL2", "Total"]
        sums = {s.stream: s for s in results.summarize_month(app.settings, 2025, 11)}
        for row in rtable[:-1]:  # the November cell: the month's points of Final rows × point value
            st = res.rs.stats(ResultFilter(), Period(2025, 11), row[0])
            assert row[11] == (money(st.profit_dollars) if st.rows else ".")
            assert st.wins + st.losses + st.be + st.time + st.no_trade == sums[row[0]].rows - sums[row[0]].provisional
        await pilot.press("escape")
        await pilot.press("q")
    assert app.return_value == 0
    assert processes_naming(s.root) == []


async def test_single_stage_keys_run_one_stage_each(tmp_path):
    s = sample_root(tmp_path / "root", instruments=["ES", "NQ"])
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        t = await run_and_wait(pilot, "t", 0, "the translator-only run")
        a = await run_and_wait(pilot, "a", 1, "the analyzer-only run")
        m = await run_and_wait(pilot, "m", 2, "the merger-only run")
        await pilot.press("q")
    assert [r["trigger"] for r in (t, a, m)] == ["stage"] * 3
    assert t["stages"] == {"translator": "success", "analyzer": "skipped", "merger": "skipped"}
    assert a["stages"] == {"translator": "skipped", "analyzer": "success", "merger": "skipped"}
    assert m["stages"] == {"translator": "skipped", "analyzer": "skipped", "merger": "success"}
    assert len(list(s.analyzer_runs_dir.glob("*/*/*.parquet"))) == 4


async def test_pause_and_resume_show_in_the_header(tmp_path):
    s = make_settings(tmp_path / "root")
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "schedule running" in header_text(app), "the schedule to run")
        await pilot.press("p")
        assert app.engine.paused
        # nothing runs next while paused; the line keeps the last run in sight at 80 columns
        top = header_text(app).splitlines()[0]
        assert "schedule paused  next -  last " in top and len(top) <= SIZE[0] - 2
        await pilot.press("p")
        assert not app.engine.paused
        assert "schedule running" in header_text(app)
        await pilot.press("q")
    scheduler_log = (s.events_dir / "scheduler.jsonl").read_text()
    assert "Schedule paused" in scheduler_log and "Schedule resumed" in scheduler_log


async def test_the_bars_placeholder_lays_the_screen_out_only_when_its_words_change(tmp_path):
    """A run without analyzer instruments yet (a flood of translator events) refreshes the bars
    at every batch: the same words must not lay the whole screen out again each time."""
    s = make_settings(tmp_path / "root")
    app = console(s)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "schedule running" in header_text(app), "the schedule to run")
        bars = app.query_one("#progress", InstrumentProgressList)
        now = clock.now()
        bars.show("r1", {}, now, note="analyzer: pending")
        await pilot.pause()
        placeholder = bars.placeholder
        assert str(placeholder.render()) == "analyzer: pending"
        laid_out = placeholder._layout_updates
        for _ in range(5):
            bars.show("r1", {}, now, note="analyzer: pending")
        assert placeholder._layout_updates == laid_out
        bars.show("r1", {}, now, note="analyzer: running")
        await pilot.pause()
        assert str(placeholder.render()) == "analyzer: running" and placeholder._layout_updates == laid_out + 1
        await pilot.press("q")


async def run_held_in_translator(pilot, s: Settings) -> contextlib.ExitStack:
    """Press r with the catalogue held: the run stays in its translator (at its first catalogue
    write) until the returned hold is closed — with warm stage starts a whole run is over
    before a key pressed after it could reach it."""
    hold = held_in_analyzer(s)
    await pilot.press("r")
    await wait_for(pilot, lambda: (cur := pilot.app.engine.snapshot().current) is not None
                   and cur.stage == "translator", "the translator to run")
    return hold


def held_in_analyzer(s: Settings) -> contextlib.ExitStack:
    """Hold the pending-work lock: each analyzer process then waits at its end (where it
    clears its changed range), so the run cannot leave the analyzer until this is closed —
    a cancel or quit pressed meanwhile cannot lose a race with the run's end."""
    stack = contextlib.ExitStack()
    stack.enter_context(catalog.hold_writes(s))
    return stack


async def test_cancel_asks_first_then_cancels_and_leaves_no_process(tmp_path):
    s = sample_root(tmp_path / "root", days=5, instruments=["ES", "NQ", "CL", "GC"], **{"engine.workers": 1})
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")  # nothing to cancel: says so, asks nothing
        assert not isinstance(app.screen, ConfirmScreen)
        hold = await run_held_in_translator(pilot, s)  # until the cancel lands
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("r", "t", "c", "q")  # a question on screen takes only its answer
        assert isinstance(app.screen, ConfirmScreen) and len(app.screen_stack) == 2
        assert "skipped" not in (s.events_dir / "scheduler.jsonl").read_text()
        await pilot.press("n")  # keep running
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.engine.busy
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.engine.busy, "the cancelled run to end")
        hold.close()
        run = history.read_runs(s)[-1]
        assert run["status"] == "cancelled"
        assert run["stages"]["translator"] == "cancelled"
        assert app.farewell == ""  # the console goes on: nothing to say on the way out
        await wait_for(pilot, lambda: "last ■ cancelled" in header_text(app), "the header to show it")
        # no stage left; the engine still serves, and with it its warm launcher
        launcher = app.engine.launcher.pid if app.engine.launcher is not None else None
        assert [p for p in processes_naming(s.root) if p != launcher] == []
        assert not app.notified  # a cancel asked for is not a failure
        await pilot.press("q")
    report = history.find_report(s, run["run_id"])
    assert report is not None and report["status"] == "cancelled"


async def test_the_cancel_question_names_the_stage_running_now(tmp_path):
    """The dialog stays open while the run moves on: it names the current stage, not the one
    it was opened on."""
    s = sample_root(tmp_path / "root", days=2, instruments=["ES", "NQ"])
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        hold = await run_held_in_translator(pilot, s)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        question = lambda: str(app.screen.query_one("#confirm-question").render())  # noqa: E731
        assert "(translator running)" in question()
        hold.close()
        # held again as soon as the analyzer runs (its processes wait at their end), since the
        # question follows the run at the console's status refresh, once a second
        deadline = time.monotonic() + DEADLINE
        while (cur := app.engine.snapshot().current) is not None and cur.stage == "translator":
            assert time.monotonic() < deadline, "the run never left the translator"
            await asyncio.sleep(0.002)
        hold = held_in_analyzer(s)
        await wait_for(pilot, lambda: "(analyzer running)" in question() or "(merger running)" in question(),
                       "the question to follow the run")
        hold.close()
        await pilot.press("n")
        await wait_for(pilot, lambda: not app.engine.busy, "the run to end")
        assert history.read_runs(s)[-1]["status"] == "success"
        await pilot.press("q")


async def test_quit_during_a_run_asks_then_stops_the_engine_cleanly(tmp_path):
    s = sample_root(tmp_path / "root", days=5, instruments=["ES", "NQ", "CL", "GC"], **{"engine.workers": 1})
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        hold = await run_held_in_translator(pilot, s)  # taken after the run began, it could end first
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.is_running and app.engine.busy
        await pilot.press("q")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.is_running, "the console to exit", timeout=DEADLINE)
        hold.close()
    assert app.return_value == 3
    runs = history.read_runs(s)
    assert len(runs) == 1 and runs[0]["status"] == "cancelled"
    # what the command line prints once the terminal is back
    assert app.farewell.startswith(f"run {runs[0]['run_id'][:8]} cancelled and recorded (report ")
    assert app.farewell.endswith("; the engine has stopped")
    events = history.run_events(s, runs[0]["run_id"])
    assert events[-1].stage == "pipeline" and events[-1].event == "cancelled"
    assert processes_naming(s.root) == []


async def test_stage_failures_notify_naming_the_stage_and_the_error(tmp_path):
    root = tmp_path / "root"
    s = make_settings(root)
    # a raw file whose name names no instrument: the translator quarantines it (stage partial)
    (s.raw_dir / "notes.csv").write_text("Date,Time,Open,High,Low,Close,Volume,Instrument\n")
    os.utime(s.raw_dir / "notes.csv", (time.time() - 3600, time.time() - 3600))
    write_samples(s, days=2, instruments=["ES"], end=SAMPLE_END)
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        first = await run_and_wait(pilot, "r", 0, "the run with a bad file")
        await pilot.press("q")
    assert first["stages"]["translator"] == "partial" and first["status"] == "partial"
    severity, title, text = next(n for n in app.notified if n[1].startswith("Translator"))
    assert severity == "warning" and title == "Translator partial"
    assert "translator partial" in text and "quarantined" in text
    assert any(n[1] == f"Run {first['run_id'][:8]} partial" for n in app.notified)

    # a store file is damaged and ES is due for a full re-analysis: the analyzer fails, named
    [store_file] = sorted((s.processed_dir / "ES").glob("ES_*.parquet"))
    data = bytearray(store_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store_file.write_bytes(bytes(data))
    catalog.open_catalog(s).request_full("ES", "asked for by the operator")
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        second = await run_and_wait(pilot, "r", 1, "the run with a damaged store file")
        await pilot.press("q")
    assert second["stages"]["analyzer"] == "failure"
    severity, title, text = next(n for n in app.notified if n[1].startswith("Analyzer"))
    assert severity == "error" and title == "Analyzer failed"
    assert "ES" in text and "rebuild --instrument ES" in text
    assert any(n[0] == "error" and n[1] == f"Run {second['run_id'][:8]} failure" for n in app.notified)


async def test_file_names_reach_the_console_as_plain_escaped_text(tmp_path):
    s = make_settings(tmp_path / "root")
    write_samples(s, days=2, instruments=["ES"], end=SAMPLE_END)
    names = ["ES_[bold red]x[reverse].csv", "ES_\x1b[31mred.csv"]
    for name in names:
        (s.raw_dir / name).write_text("Date,Time,Open,High,Low,Close,Volume,Instrument\n")
        os.utime(s.raw_dir / name, (time.time() - 3600, time.time() - 3600))
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        run = await run_and_wait(pilot, "r", 0, "the run with hostile names")
        records = [r for r in app.query_one("#events", EventsPanel).store.records() if r[RUN] == run["run_id"]]
        pane_lines = list(app.query_one("#pane-translator", StagePane).lines)
        await pilot.press("q")
    texts = [r[TEXT] for r in records]
    # markup is shown as the characters it is, never applied
    [markup] = [r for r in records if "quarantined ES_[bold red]x[reverse].csv" in r[TEXT]]
    assert event_row(markup)[4].plain == markup[TEXT] and not event_row(markup)[4].spans
    # an escape sequence arrives as visible text, in the events and in the stage pane
    assert any("ES_\\x1b[31mred.csv" in t for t in texts)
    assert not any("\x1b" in t for t in texts + pane_lines)
    severity, _, text = next(n for n in app.notified if n[1].startswith("Translator"))
    assert "\x1b" not in text


async def test_results_from_other_settings_are_said_until_the_next_run_merged(tmp_path):
    s = make_settings(tmp_path / "root")
    write_samples(s, days=2, instruments=["ES"], end=SAMPLE_END)
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await run_and_wait(pilot, "r", 0, "the first run")
        await pilot.press("q")
    # the operator moves the S1 range start: every ES result was computed with other settings
    (s.root / "qtsw.toml").write_text(
        '[sessions]\nS1 = {range_start = "03:00", slots = ["07:30", "08:00", "09:00"]}\n'
        'S2 = {range_start = "08:00", slots = ["09:30", "10:00", "10:30", "11:00"]}\n')
    s = make_settings(s.root)
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "results from other settings" in header_text(app), "the header's notice")
        assert "(ES1, ES2): the next run re-analyses" in header_text(app)
        await pilot.press("s")
        res = app.screen
        assert isinstance(res, ResultsScreen)
        status = res.query_one("#results-status")
        await wait_for(pilot, lambda: "results from other settings" in shown_text(status), "the results notice")
        await pilot.press("escape")
        await run_and_wait(pilot, "r", 1, "the run that re-analyses")
        await wait_for(pilot, lambda: "results from other settings" not in header_text(app), "the notice to go")
        await pilot.press("q")


async def test_stage_pane_stops_following_when_scrolled_up(tmp_path):
    s = make_settings(tmp_path / "root")
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one("#pane-translator", StagePane)
        # a stage's output, through the same subscriber the engine calls
        for i in range(100):
            app.receive(OutputMessage("run-1", "translator", None, f"line {i}"))
        await wait_for(pilot, lambda: pane.line_count == 100, "the lines in the pane")
        assert pane.following and pane.scroll_y == pane.max_scroll_y > 0
        pane.focus()
        await pilot.press("pageup")
        assert not pane.following and "paused" in str(pane.border_subtitle)
        held = pane.scroll_y
        for i in range(100, 150):
            app.receive(OutputMessage("run-1", "translator", None, f"line {i}"))
        await wait_for(pilot, lambda: pane.line_count == 150, "more lines")
        assert pane.scroll_y == held  # the operator's view stays put
        await pilot.press("end")
        assert pane.following and pane.scroll_y == pane.max_scroll_y
        app.receive(OutputMessage("run-1", "translator", None, "line 150"))
        await wait_for(pilot, lambda: pane.line_count == 151, "one more line")
        assert pane.scroll_y == pane.max_scroll_y
        await pilot.press("q")


async def test_keys_are_remapped_from_settings_and_help_lists_them(tmp_path):
    s = make_settings(tmp_path / "root")
    s = Settings(**{**s.__dict__, "keys": {"toggle_pause": "z", "events.verbose": "x"}})
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.engine.scheduler_state == "running", "the schedule")
        await pilot.press("p")
        assert not app.engine.paused
        await pilot.press("z")
        assert app.engine.paused
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = dict((desc, key) for key, desc in app.screen.keys)
        assert keys["pause / resume the schedule (a running run continues)"] == "z"
        assert keys["run the whole pipeline now"] == "r"
        await pilot.press("escape")
        # a panel's binding is remapped too: x toggles the event table's verbose mode
        await pilot.press("e")
        panel = app.query_one("#events", EventsPanel)
        verbose = panel.verbose
        await pilot.press("x")
        assert panel.verbose is not verbose
        # and the hints say so: the event table's status line and the help screen
        assert "x verbose" in str(app.query_one("#event-status").render())
        await pilot.press("question_mark")
        assert ("x", "Events: verbose: show log, progress and metric events") in app.screen.panel_rows
        await pilot.press("escape")
        await pilot.press("q")


async def test_no_color_console_keeps_states_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    s = sample_root(tmp_path / "root", days=2, instruments=["ES"])
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        assert app.no_color
        run = await run_and_wait(pilot, "r", 0, "a run without colour")
        await wait_for(pilot, lambda: "last ✓ success" in header_text(app), "the header")
        svg = app.export_screenshot()
        await pilot.press("q")
    assert run["status"] == "success"
    # glyphs and words carry the states, so nothing depends on colour
    assert "✓" in svg and "success" in svg


async def test_start_options_run_a_stage_at_start_without_the_schedule(tmp_path):
    """What ``qtsw --stage translator`` passes: the stage runs at start; no schedule asked for."""
    s = sample_root(tmp_path / "root", days=2, instruments=["ES"])
    app = console(s, schedule=False, stage="translator")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(history.read_runs(s)) == 1 and not app.engine.busy, "the start-up run")
        await wait_for(pilot, lambda: "schedule off" in header_text(app), "the header to say the schedule is off")
        await pilot.press("q")
    run = history.read_runs(s)[0]
    assert run["trigger"] == "stage"
    assert run["stages"] == {"translator": "success", "analyzer": "skipped", "merger": "skipped"}


def footer_keys(app: QtswApp) -> dict[str, str]:
    """The keys the footer offers now: {key as shown: what it does}."""
    return {app.get_key_display(b.binding): b.binding.description
            for b in app.active_bindings.values() if b.binding.show}


async def test_navigation_escape_palette_and_footer(tmp_path):
    """Esc closes the events view (after clearing a filter first); ctrl+p lists every action
    with its key and runs it; the footer offers s, and f and v where they work."""
    s = make_settings(tmp_path / "root")
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.engine.scheduler_state == "running", "the schedule")
        main = app.query_one("#main")
        assert "s" in footer_keys(app) and "f" not in footer_keys(app)
        await pilot.press("e")
        assert main.has_class("-events")
        keys = footer_keys(app)
        assert keys.get("f") == "stage" and keys.get("v") == "verbose"
        await pilot.press("slash", "x", "enter")  # a filter kept
        panel = app.query_one("#events", EventsPanel)
        assert panel.query_text == "x"
        await pilot.press("escape")  # first the filter goes ...
        assert panel.query_text == "" and main.has_class("-events")
        await pilot.press("escape")  # ... then the view
        assert not main.has_class("-events")
        assert "f" not in footer_keys(app)

        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert commands["Run the whole pipeline now"] == "key: r"
        assert commands["Pause / resume the schedule (a running run continues)"] == "key: p"
        assert commands["Results: matrix in dollars, statistics, equity curve"] == "key: s"
        assert len([t for t in commands if t[0].isupper()]) >= 12
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CommandPalette", "the command palette")
        await pilot.press(*"pause")
        await pilot.pause(0.5)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.engine.paused, "the palette's command to run", timeout=10)
        await pilot.press("q")


def footer_shown(app: QtswApp) -> dict[str, tuple[int, int]]:
    """The footer keys drawn on the screen now: {key: (left column, right column)}."""
    footer = app.screen.query_one(KeyFooter)
    assert footer.region.width == app.size.width
    line = footer.render().plain
    out = {}
    for k in footer.shown:
        assert line[k.start:k.end].startswith(k.display)
        out[k.display] = (k.start, k.end)
    return out


async def test_every_footer_keeps_help_and_quit_in_sight(tmp_path):
    """At 80 columns the console-wide keys give way on screens with many keys of their own;
    they still work there. At 160 columns nothing is left out."""
    s = sample_root(tmp_path / "root", days=2, instruments=["ES"])
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        await run_and_wait(pilot, "r", 0, "a run for the screens to show")
        views = {"main": (), "events": ("e",), "history": ("escape", "h"), "run detail": ("enter",),
                 "quarantine": ("escape", "escape", "u"), "alerts": ("escape", "exclamation_mark"),
                 "results": ("escape", "s")}
        for view, keys in views.items():
            await pilot.press(*keys)
            await pilot.pause()
            shown = footer_shown(app)
            assert "?" in shown and "q" in shown, (view, shown)
            assert all(right <= SIZE[0] for _, right in shown.values()), (view, shown)
        # on the results screen the pipeline's stage keys gave way at 80 columns, yet they work
        assert {"esc", "x", "?", "q"} <= set(footer_shown(app)) and "t" not in footer_shown(app)
        await run_and_wait(pilot, "t", 1, "a translator run started from the results screen")
        await pilot.resize_terminal(160, 48)
        await wait_for(pilot, lambda: "t" in footer_shown(app), "t back in a wide footer")
        assert {"esc", "x", "r", "t", "p", "c", "?", "q"} <= set(footer_shown(app))
        await pilot.press("escape", "q")


async def test_long_lines_and_skip_reasons_wrap_in_their_pane_at_80_columns(tmp_path):
    """A stage's long output line and a skipped stage's reason are read whole in the pane, not
    cut at its edge: wrapped, the continuation indented."""
    s = sample_root(tmp_path / "root", days=1, instruments=["ES"])
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        first = await run_and_wait(pilot, "r", 0, "a run translating the export")
        await run_and_wait(pilot, "r", 1, "a run with nothing to do")
        panes = {stage: app.query_one(f"#pane-{stage}", StagePane) for stage in STAGE_NAMES}
        width = panes["translator"].scrollable_content_region.width
        lines = {stage: list(pane.lines) for stage, pane in panes.items()}
        await pilot.press("q")
    assert 30 < width < 60
    for stage, shown in lines.items():
        assert all(len(ln) <= width for ln in shown), stage
    # the translator's line about the file, as its log has it, is on screen whole
    log = (s.runs_dir / first["run_id"] / "translator.log").read_text().splitlines()
    [long_line] = [ln for ln in log if " bars kept of " in ln]
    assert len(long_line) > width
    shown = lines["translator"]
    at = next(i for i, ln in enumerate(shown) if long_line.startswith(ln))
    parts = [shown[at]]
    for ln in shown[at + 1:]:
        if not ln.startswith("  "):
            break
        parts.append(ln.strip())
    assert len(parts) > 1 and " ".join(parts) == long_line
    # each stage's skip reason, whole
    run_id = history.read_runs(s)[-1]["run_id"]
    for e in history.run_events(s, run_id):
        if e.event == "skipped" and e.stage in lines:
            shown = lines[e.stage]
            at = max(i for i, ln in enumerate(shown) if ln.startswith("skipped: "))
            reason = " ".join(ln.strip() for ln in shown[at:])
            assert reason == f"skipped: {e.data.get('reason') or e.msg}", e.stage


async def test_enter_opens_an_event_with_all_its_fields(tmp_path):
    from qtsw_tui.screens.event_detail import EventDetailScreen

    s = make_settings(tmp_path / "root")
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one("#events", EventsPanel)
        await wait_for(pilot, lambda: panel.store.total >= 1, "the scheduler's start event")
        await pilot.press("e")
        await wait_for(pilot, lambda: panel.table.row_count >= 1, "the event in the table")
        await pilot.press("enter")
        assert isinstance(app.screen, EventDetailScreen)
        await wait_for(pilot, lambda: app.screen.event is not None
                       and app.screen.event.msg[:16] in shown_text(app.screen.query_one("#event-fields")),
                       "the event read from its file and shown")
        shown = shown_text(app.screen.query_one("#event-fields"), width=400)  # a long path: one line
        ev = app.screen.event
        # the scheduler's start, or an event of the scheduler's log that came after it (an alert)
        assert ev.stage == "scheduler"
        for field in ("time", "run", "stage", "event", "seq", "message", "file", "data"):
            assert field in shown
        for key in ev.data:  # every data field, with its value
            assert f"{key}: " in shown
        assert ev.msg[:16] in shown and str(s.events_dir / "scheduler.jsonl") in shown
        await pilot.press("escape")
        assert not isinstance(app.screen, EventDetailScreen)
        await pilot.press("q")


async def test_quarantine_is_counted_shown_and_a_fixed_file_requeued(tmp_path):
    """A rejected export: the counters count it, the toast points to the quarantine, the screen
    says when, which rule at which line and why; after the file is fixed, r puts it back and the
    next run translates it."""
    from qtsw_tui.screens.quarantine import QuarantineScreen
    from qtsw_tui.widgets.counters import CountersPanel

    s = sample_root(tmp_path / "root", days=1, instruments=["ES"])
    [raw] = s.raw_dir.glob("*.csv")
    good = raw.read_text()
    lines = good.splitlines()
    bad = [ln.replace(",", ",abc,", 1) if i % 5 == 0 and i else ln for i, ln in enumerate(lines)]
    raw.write_text("\n".join(bad) + "\n")  # one row in five broken: far over the bad-row limit
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        run = await run_and_wait(pilot, "t", 0, "the translator run")
        assert run["stages"]["translator"] == "partial"
        assert (s.quarantine_dir / raw.name).exists()
        [toast] = [text for _, title, text in app.notified if title.startswith("Translator")]
        assert "u: the quarantine" in toast
        app.refresh_counters()
        await wait_for(pilot, lambda: "1 quarantined" in str(app.query_one("#counters", CountersPanel).render()),
                       "the counters to count it")
        await pilot.press("u")
        assert isinstance(app.screen, QuarantineScreen)
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.files) == 1, "the quarantined file")
        [q] = screen.files
        assert q.name == raw.name and q.rule and q.line not in ("", "-") and q.rejected_at is not None
        detail = shown_text(screen.query_one("#quarantine-detail"), width=1000)
        assert raw.name in detail and f"line {q.line}" in detail and "r re-queues it" in detail

        await pilot.press("escape", "h", "enter")  # the run's detail names the file, rule and line
        assert isinstance(app.screen, RunDetailScreen)
        detail_screen = app.screen
        await wait_for(pilot, lambda: detail_screen.report is not None, "the run's report")
        stages = shown_text(detail_screen.query_one("#detail-stages"), width=1000)
        assert f"quarantined {raw.name}: {q.rule} at line {q.line} — " in stages
        assert f"1 quarantined ({raw.name})" in stages  # the stage's summary names it too
        await pilot.press("escape", "escape", "u")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.files) == 1, "the quarantine again")

        (s.quarantine_dir / raw.name).write_text(good)  # the operator fixes the file
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.files == [], "the quarantine to empty")
        assert (s.raw_dir / raw.name).read_text() == good
        assert not (s.quarantine_dir / f"{raw.name}.error.txt").exists()
        await pilot.press("escape")
        again = await run_and_wait(pilot, "t", 1, "the translator again")
        assert again["stages"]["translator"] == "success"
        assert not (s.raw_dir / raw.name).exists()  # translated and archived
        await pilot.press("q")


async def test_history_and_results_keep_the_header(tmp_path):
    """An active run stays in sight on the history and results screens."""
    s = sample_root(tmp_path / "root", days=5, instruments=["ES", "NQ", "CL", "GC"], **{"engine.workers": 1})
    app = console(s)
    async with app.run_test(size=SIZE) as pilot:
        hold = await run_held_in_translator(pilot, s)
        for key, screen_type in (("h", HistoryScreen), ("s", ResultsScreen)):
            await pilot.press(key)
            assert isinstance(app.screen, screen_type)
            header = app.screen.query_one(".screen-header", StatusHeader)
            await wait_for(pilot, lambda h=header: " translator" in str(h.render()), "the header on the screen")
            assert "▶ run" in str(header.render())
            await pilot.press("escape")
        hold.close()
        await wait_for(pilot, lambda: not app.engine.busy, "the run to end")
        await pilot.press("h")
        header = app.screen.query_one(".screen-header", StatusHeader)
        await wait_for(pilot, lambda: "last ✓ success" in str(header.render()), "the run's end in the header")
        await pilot.press("escape", "q")
