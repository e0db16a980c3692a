"""Snapshots of the console's screens (pytest-textual-snapshot), on fixed data and a fixed clock.

The data root holds sample exports (fixed seed and end date), two recorded runs written in the
formats of SPEC §6.1/§6.2 (runs.jsonl line, audit report, event file, stage logs) and monthly
result files with fixed rows. The engine and the console both get the same fixed Chicago clock,
so the header, the next mark and its countdown are the same on every machine and in every zone.

Regenerate after an intended change with ``pytest tests/test_console_snapshots.py --snapshot-update``
and look at the SVGs before committing them.
"""

from __future__ import annotations

import json
import os
import time
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline_core import history
from pipeline_core.analyzer.strategy import RESULT_SCHEMA
from pipeline_core.engine import Engine
from pipeline_core.events import Event
from pipeline_core.fsutil import write_parquet_atomic
from pipeline_core.results import monthly_path
from pipeline_core.sample import write_export_signal, write_samples
from pipeline_core.settings import CHICAGO, Settings, load_settings
from qtsw_tui.app import QtswApp, build_app
from qtsw_tui.screens.history import HistoryScreen
from qtsw_tui.screens.results import ResultsScreen
from qtsw_tui.screens.run_detail import RunDetailScreen
from qtsw_tui.widgets.counters import CountersPanel
from qtsw_tui.widgets.event_table import EventsPanel

FIXED_NOW = datetime(2025, 12, 1, 10, 7, 30, tzinfo=CHICAGO)
RUN_A = "4b1f0c2e-9d3a-4c1b-8e2f-0a1b2c3d4e5f"
RUN_B = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"


def fixed_now() -> datetime:
    return FIXED_NOW


def at(hh: int, mm: int, ss: float = 0.0) -> str:
    sec = int(ss)
    return datetime(2025, 12, 1, hh, mm, sec, int((ss - sec) * 1e6), tzinfo=CHICAGO).isoformat()


def _stage(status: str, start: str, end: str, secs: float, msg: str, counts: dict, error: str | None = None,
           **extra) -> dict:
    return {"status": status, "started": start, "ended": end, "duration_seconds": secs, "msg": msg,
            "counts": counts, "error": error, **extra}


def write_history(s: Settings) -> None:
    """Two recorded runs: a manual success at 09:45 and a scheduled partial run at 10:00."""
    a_stages = {
        "translator": _stage("success", at(9, 45, 0.2), at(9, 45, 1.9), 1.7,
                             "2 file(s) translated, 5508 bars kept", {"files": 2, "rows_kept": 5508}),
        "analyzer": _stage("success", at(9, 45, 1.9), at(9, 45, 5.6), 3.7, "2/2 instrument(s) analysed",
                           {"instruments": 2, "rows": 70},
                           instruments={"ES": {"status": "success", "duration_seconds": 2.1,
                                               "msg": "ES: full analysis of 3 date(s): 35 rows"},
                                        "NQ": {"status": "success", "duration_seconds": 2.3,
                                               "msg": "NQ: full analysis of 3 date(s): 35 rows"}}),
        "merger": _stage("success", at(9, 45, 5.6), at(9, 45, 7.4), 1.8,
                         "merged 2 run file(s) into 4 monthly file(s)", {"files": 4}),
    }
    b_stages = {
        "translator": _stage("partial", at(10, 0, 0.1), at(10, 0, 1.2), 1.1,
                             "1 file(s) translated, 1380 bars kept, 1 quarantined",
                             {"files": 2, "quarantined": 1},
                             "ZZ.csv: instrument 'ZZ' is not configured (moved to data/raw/quarantine)"),
        "analyzer": _stage("success", at(10, 0, 1.2), at(10, 0, 3.0), 1.8, "1/1 instrument(s) analysed",
                           {"instruments": 1, "rows": 7},
                           instruments={"ES": {"status": "success", "duration_seconds": 1.6,
                                               "msg": "ES: incremental analysis of 1 date(s): 7 rows"}}),
        "merger": _stage("success", at(10, 0, 3.0), at(10, 0, 4.2), 1.2,
                         "merged 1 run file(s) into 2 monthly file(s)", {"files": 2}),
    }
    for run_id, trigger, start, end, status, stages in (
        (RUN_A, "manual", at(9, 45, 0.1), at(9, 45, 7.5), "success", a_stages),
        (RUN_B, "schedule", at(10, 0, 0.05), at(10, 0, 4.3), "partial", b_stages),
    ):
        history.append_run(s, {"run_id": run_id, "trigger": trigger, "started": start, "ended": end,
                               "status": status, "stages": {n: st["status"] for n, st in stages.items()}})
        report = {"run_id": run_id, "trigger": trigger, "started": start, "ended": end, "status": status,
                  "stages": stages, "error": None, "engine_version": "0.1.0"}
        history.write_report(s, report, datetime.fromisoformat(start))

    events = [
        ("pipeline", "start", "Run 9e8d7c6b started (schedule)", {"trigger": "schedule"}, (0, 0.05)),
        ("translator", "start", "translator started: 2 raw file(s) ready", {"count": 2}, (0, 0.1)),
        ("translator", "log", "ZZ.csv quarantined: instrument 'ZZ' is not configured",
         {"level": "warning", "file": "ZZ.csv"}, (0, 0.9)),
        ("translator", "failure", "translator partial: 1 file(s) translated, 1380 bars kept, 1 quarantined",
         {"status": "partial", "error": "ZZ.csv: instrument 'ZZ' is not configured"}, (0, 1.2)),
        ("analyzer", "start", "analyzer started: 1 instrument(s) to analyse: ES", {"instruments": ["ES"]}, (0, 1.2)),
        ("analyzer", "progress", "ES: 1/1", {"instrument": "ES", "done": 1, "total": 1}, (0, 2.8)),
        ("analyzer", "success", "analyzer succeeded in 1.8 s: 1/1 instrument(s) analysed", {"status": "success"},
         (0, 3.0)),
        ("merger", "start", "merger started: 1 analyzer run folder(s) awaiting merge", {"count": 1}, (0, 3.0)),
        ("merger", "metric", "ES1_an_2025_11.parquet: 3 added, 0 replaced", {"added": 3}, (0, 4.1)),
        ("merger", "success", "merger succeeded in 1.2 s: merged 1 run file(s) into 2 monthly file(s)",
         {"status": "success"}, (0, 4.2)),
        ("pipeline", "failure", "Run ended partial: translator partial", {"status": "partial"}, (0, 4.3)),
    ]
    lines = []
    for seq, (stage, event, msg, data, (mm, ss)) in enumerate(events, start=1):
        lines.append(Event(RUN_B, stage, event, msg, data, at(10, mm, ss), seq).to_line())
    (s.events_dir / f"pipeline_{RUN_B}.jsonl").write_text("\n".join(lines) + "\n")
    logs = s.runs_dir / RUN_B
    logs.mkdir(parents=True)
    (logs / "translator.log").write_text(
        "translating 2 raw file(s) into data/processed\n"
        "ZZ.csv: rejected: instrument 'ZZ' is not configured; moved to data/raw/quarantine\n"
        "DataExport_ES_20251201_155900_UTC.csv: ES 1380 bars kept of 1380 rows\n"
        "1 file(s) translated, 1380 bars kept, 1 quarantined\n"
    )
    (logs / "analyzer-ES.log").write_text("ES: incremental analysis of 1 date(s): 7 rows\n")
    (logs / "merger.log").write_text("merged 1 run file(s) into 2 monthly file(s)\n")


def _rows(stream: str, inst: str, session: str, day: date, results: list[tuple[str, str, float]]) -> pa.Table:
    """Monthly-file rows with the §4.6 columns; ``results`` are (Time, Result, Profit)."""
    n = len(results)
    trade = [r != "NoTrade" for _, r, _ in results]

    def ts(hhmm: str) -> datetime:
        h, m = map(int, hhmm.split(":"))
        return datetime(day.year, day.month, day.day, h, m, tzinfo=CHICAGO)

    cols = {
        "Date": [day] * n,
        "Time": [t for t, _, _ in results],
        "EntryTime": [ts(t) if ok else None for (t, _, _), ok in zip(results, trade, strict=True)],
        "ExitTime": [ts("11:30") if ok else None for ok in trade],
        "Target": [10.0] * n,
        "Peak": [max(p, 0.0) for _, _, p in results],
        "Direction": ["Long" if ok else "NA" for ok in trade],
        "Result": [r for _, r, _ in results],
        "Range": [12.5] * n,
        "Stream": [stream] * n,
        "Instrument": [inst] * n,
        "Session": [session] * n,
        "Profit": [p for _, _, p in results],
        "RangeHigh": [5010.0] * n,
        "RangeLow": [4997.5] * n,
        "EntryPrice": [5010.25 if ok else None for ok in trade],
        "ExitPrice": [5010.25 + p if ok else None for (_, _, p), ok in zip(results, trade, strict=True)],
        "StopPrice": [4997.5 if ok else None for ok in trade],
        "TargetPrice": [5020.25 if ok else None for ok in trade],
        "Final": [r != "TIME" for _, r, _ in results],
    }
    return pa.table(cols, schema=RESULT_SCHEMA)


def write_monthly(s: Settings) -> None:
    files = {
        ("ES1", "ES", "S1", date(2025, 11, 26)): [("07:30", "Win", 10.0), ("08:00", "BE", -0.25),
                                                   ("09:00", "Loss", -12.5)],
        ("ES2", "ES", "S2", date(2025, 11, 26)): [("09:30", "Win", 10.0), ("10:00", "Win", 10.0),
                                                   ("10:30", "NoTrade", 0.0), ("11:00", "TIME", 3.75)],
        ("NQ1", "NQ", "S1", date(2025, 11, 26)): [("07:30", "Loss", -50.0), ("08:00", "Win", 50.0),
                                                   ("09:00", "NoTrade", 0.0)],
        ("ES1", "ES", "S1", date(2025, 10, 30)): [("07:30", "Win", 10.0)],
    }
    for (stream, inst, session, day), results in files.items():
        write_parquet_atomic(monthly_path(s, stream, day.year, day.month),
                             _rows(stream, inst, session, day, results))


@pytest.fixture
def snap_settings(tmp_path: Path) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    s = load_settings(root=tmp_path / "root", env=env)
    s.ensure_dirs()
    write_samples(s, days=3, instruments=["ES", "NQ"], seed=11, end=date(2025, 11, 26))
    part = s.raw_dir / "DataExport_GC_20251201_160000_UTC.csv"
    part.write_text("Date,Time,Open,High,Low,Close,Volume,Instrument\n")
    write_export_signal(s, part, "GC", 48211, "progress", when=datetime(2025, 12, 1, 16, 7, tzinfo=CHICAGO),
                        last_bar=datetime(2025, 12, 1, 10, 6))
    write_history(s)
    write_monthly(s)
    return s


def console(s: Settings) -> QtswApp:
    return build_app(s, Engine(s, now=fixed_now), {}, clock=fixed_now)


async def settle(pilot, cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def main_ready(pilot) -> None:
    app: QtswApp = pilot.app
    await settle(pilot, lambda: app.snapshot is not None and app.snapshot.scheduler == "running",
                 "the scheduler")
    app.refresh_status()
    await settle(pilot, lambda: app.query_one("#counters", CountersPanel).counters is not None, "the counters")
    await pilot.pause()


def test_main_screen_80x24(snap_settings, snap_compare):
    assert snap_compare(console(snap_settings), terminal_size=(80, 24), run_before=main_ready)


def test_main_screen_no_color_80x24(snap_settings, snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(console(snap_settings), terminal_size=(80, 24), run_before=main_ready)


def test_main_screen_160x48_with_events(snap_settings, snap_compare):
    async def run_before(pilot) -> None:
        await main_ready(pilot)
        app: QtswApp = pilot.app
        # run B, the last run, is shown as the console starts: its events in the table (the
        # scheduler's own start event carries the real time of day, so the view leaves the
        # scheduler stage out), its stages' log tails in the panes, no toasts for its failures
        panel = app.query_one("#events", EventsPanel)
        panel.set_query("stage:pipeline,translator,analyzer,merger")
        await settle(pilot, lambda: panel.store.total >= 11 and panel.table.row_count == 9, "the run's events")
        await pilot.pause()

    assert snap_compare(console(snap_settings), terminal_size=(160, 48), run_before=run_before)


async def open_history(pilot) -> None:
    await pilot.press("h")
    await settle(pilot, lambda: isinstance(pilot.app.screen, HistoryScreen) and len(pilot.app.screen.runs) == 2,
                 "the two runs")


def test_history_screen(snap_settings, snap_compare):
    async def run_before(pilot) -> None:
        await main_ready(pilot)
        await open_history(pilot)

    assert snap_compare(console(snap_settings), terminal_size=(80, 24), run_before=run_before)


def test_run_detail_screen(snap_settings, snap_compare):
    async def run_before(pilot) -> None:
        await main_ready(pilot)
        await open_history(pilot)
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(pilot.app.screen, RunDetailScreen)
                     and pilot.app.screen.report is not None, "the report")

    assert snap_compare(console(snap_settings), terminal_size=(80, 24), run_before=run_before)


def test_results_screen(snap_settings, snap_compare):
    async def run_before(pilot) -> None:
        await main_ready(pilot)
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(pilot.app.screen, ResultsScreen)
                     and pilot.app.screen.view is not None, "the results")
        await pilot.pause()

    assert snap_compare(console(snap_settings), terminal_size=(80, 24), run_before=run_before)


def test_help_screen(snap_settings, snap_compare):
    async def run_before(pilot) -> None:
        await main_ready(pilot)
        await pilot.press("question_mark")

    assert snap_compare(console(snap_settings), terminal_size=(80, 24), run_before=run_before)


def test_history_fixture_is_what_the_engine_reads(snap_settings):
    """The recorded runs above are read back by the engine's own history functions."""
    runs = history.read_runs(snap_settings)
    assert [r["run_id"] for r in runs] == [RUN_A, RUN_B]
    assert history.find_report(snap_settings, RUN_B)["status"] == "partial"
    assert [e.seq for e in history.run_events(snap_settings, RUN_B)] == list(range(1, 12))
    assert list(history.run_logs(snap_settings, RUN_B)) == ["translator", "analyzer-ES", "merger"]
    assert Engine(snap_settings, now=fixed_now).snapshot().last_run["run_id"] == RUN_B
    assert json.loads(snap_settings.runs_index.read_text().splitlines()[-1])["status"] == "partial"


# --- NO_COLOR: readable without colour ----------------------------------------------------------

MIN_READABLE = 0.4  # brightness difference between a character and its background


def faint_text(app: QtswApp) -> list[str]:
    """Characters on screen drawn too close to their background (or dim) to read without colour."""
    from textual.color import Color

    faint = []
    for y, strip in enumerate(app.screen._compositor.render_strips()):
        for seg in strip:
            style = seg.style
            if not seg.text.strip() or style is None:
                continue
            if style.dim:
                faint.append(f"line {y}: {seg.text!r} dim")
                continue
            if style.color is None or style.bgcolor is None:
                continue
            diff = abs(Color.from_rich_color(style.color).brightness - Color.from_rich_color(style.bgcolor).brightness)
            if diff < MIN_READABLE:
                faint.append(f"line {y}: {seg.text!r} {style.color.name} on {style.bgcolor.name}")
    return faint


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


@pytest.mark.anyio
async def test_no_color_every_state_stays_readable(snap_settings, monkeypatch):
    """With NO_COLOR every state and text is drawn in greys far enough from its background:
    a cancelled last run, failed and partial stages, dim hints, the history's marks."""
    monkeypatch.setenv("NO_COLOR", "1")
    run_c = "c0ffee00-1111-4222-8333-444455556666"
    history.append_run(snap_settings, {"run_id": run_c, "trigger": "manual", "started": at(10, 15, 0.1),
                                       "ended": at(10, 15, 2.0), "status": "cancelled",
                                       "stages": {"translator": "failure", "analyzer": "cancelled",
                                                  "merger": "skipped"}})
    app = console(snap_settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await main_ready(pilot)
        assert "cancelled" in str(app.query_one("#header").render())
        assert faint_text(app) == []
        await pilot.press("h")
        await settle(pilot, lambda: isinstance(app.screen, HistoryScreen) and len(app.screen.runs) == 3, "the runs")
        await pilot.pause()
        assert faint_text(app) == []
        await pilot.press("escape")
        await pilot.press("q")
