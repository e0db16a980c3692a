"""The results screen driven by Pilot on the hand-worked fixture of ``results_fixture``, and its
snapshots (matrix with one stream's statistics, the equity curve) at 80×24 and 160×48, with and
without colour. The engine and the console get a fixed clock: no scheduled run starts.

Regenerate the snapshots after an intended change with
``pytest tests/test_results_screen.py --snapshot-update`` and look at the SVGs first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime

import pytest
from results_fixture import write_fixture, write_year
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from pipeline_core import results
from pipeline_core.engine import Engine
from pipeline_core.results import Period, ResultFilter
from pipeline_core.settings import CHICAGO, Settings, load_settings
from qtsw_tui.app import QtswApp, build_app
from qtsw_tui.resultscmd import csv_text
from qtsw_tui.screens.results import ResultsScreen

FIXED_NOW = datetime(2025, 12, 1, 10, 7, 30, tzinfo=CHICAGO)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


def fixed_now() -> datetime:
    return FIXED_NOW


def console(s: Settings) -> QtswApp:
    return build_app(s, Engine(s, now=fixed_now), {}, clock=fixed_now)


def make_root(tmp_path, fill: Callable[[Settings], None]) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    s = load_settings(root=tmp_path / "root", env=env)
    s.ensure_dirs()
    fill(s)
    results.forget_cache()
    return s


async def settle(pilot, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def text_rows(screen: ResultsScreen, widget_id: str) -> list[list[str]]:
    """The lines of a text block of the screen, split into cells; the ``>`` mark of the chosen
    stream dropped (a row of the matrix or of the statistics starts with its name or period)."""
    text = str(screen.query_one(widget_id, Static).content)
    return [ln.replace("> ", "", 1).split() for ln in text.splitlines()[1:]]


async def open_results(pilot) -> ResultsScreen:
    await pilot.press("s")
    await settle(pilot, lambda: isinstance(pilot.app.screen, ResultsScreen) and pilot.app.screen.view is not None,
                 "the results")
    return pilot.app.screen


async def shown(pilot, screen: ResultsScreen, cond: Callable[[], bool], what: str) -> None:
    await settle(pilot, lambda: screen.view is not None and cond(), what)
    await pilot.pause()


@pytest.mark.anyio
async def test_matrix_statistics_keys_filters_and_export(tmp_path):
    s = make_root(tmp_path, write_fixture)
    app = console(s)
    async with app.run_test(size=(160, 48)) as pilot:
        res = await open_results(pilot)
        got = text_rows(res, "#results-matrix")
        assert [r[0] for r in got] == ["ES1", "ES2", "CL1", "MES1", "Total"]
        assert got[0][10:] == ["+163", "+100", ".", "+263"]  # Oct, Nov, Dec, Total
        assert got[-1][10:] == ["+163", "+780", ".", "+943"]
        # the cursor starts on Total: the stream statistics are all streams'
        assert res.stream is None and res.month == Period(2025, 11)
        assert str(res.query_one("#results-matrix", Static).content).splitlines()[-1].startswith("> Total")

        await pilot.press("n")  # next stream: ES1
        await shown(pilot, res, lambda: res.view.stream == "ES1", "ES1's statistics")
        stats = text_rows(res, "#results-stream")
        assert [r[0] for r in stats] == ["2025-11", "2025", "all"]
        assert stats[2][1:5] == ["5", "2", "2", "1"] and stats[2][7:13] == ["40.0", "1.36", "+52.50", "-413", "+5.25", "+263"]
        assert "ES1" in str(res.query_one("#screen-title", Static).content)

        await pilot.press("left_square_bracket")  # the month before
        await shown(pilot, res, lambda: res.view.month == Period(2025, 10), "October")
        assert text_rows(res, "#results-stream")[0][0] == "2025-10"

        await pilot.press("v")  # provisional rows too, marked
        await shown(pilot, res, lambda: res.view.matrix.provisional == {("ES1", 11)}, "provisional rows")
        assert text_rows(res, "#results-matrix")[0][11] == "+263*"

        await pilot.press("f")  # session S1 only: ES2 goes
        await shown(pilot, res, lambda: res.flt.sessions == frozenset({"S1"}) and "ES2" not in res.view.matrix.streams,
                     "the S1 filter")
        assert [r[0] for r in text_rows(res, "#results-matrix")] == ["ES1", "CL1", "MES1", "Total"]

        await pilot.press("2")  # the statistics tab: every stream, filled when opened
        await shown(pilot, res, lambda: res.view.every_stream, "every stream's statistics")
        table = rows(res.query_one("#results-stats", DataTable))
        assert [r[0] for r in table if r[0]] == ["ES1", "CL1", "MES1", "ALL"]
        await pilot.press("1")

        await pilot.press("x")
        await settle(pilot, lambda: res.exported is not None, "the export")
        assert res.exported.parent == s.exports_dir and res.exported.name.startswith("results_2025_")
        assert res.exported.read_text() == csv_text(res.rs, ResultFilter(sessions=frozenset({"S1"}), provisional=True), 2025)
        assert any(str(res.exported) in n.message for n in app._notifications)

        await pilot.press("3")
        await settle(pilot, lambda: "max drawdown" in str(res.query_one("#results-equity-note", Static).content),
                     "the equity note")
        note = str(res.query_one("#results-equity-note", Static).content)
        assert note.startswith("ES1: +425 over 6 trades from 2025-10-01 to 2025-11-05 · max drawdown -413")
        await pilot.press("escape")
        await pilot.press("q")


@pytest.mark.anyio
async def test_results_are_read_ahead_so_the_screen_opens_with_them(tmp_path):
    """With the results' disk cache present, the console reads them and computes the screen's
    first figures itself, after its first screen is drawn; the screen then shows those very
    figures (nothing recomputed). Without the cache nothing is read ahead."""
    s = make_root(tmp_path, write_fixture)
    app = console(s)
    async with app.run_test(size=(80, 24)) as pilot:
        app._started_at -= 60  # its first screen long drawn
        await app.refresh_counters().wait()  # the counters' refresh, which reads ahead
        assert str(s.root) not in results._built, "read ahead without a disk cache"
        await pilot.press("q")
    results.load_results(s)  # what a first look at the results leaves: the disk cache
    assert s.results_cache_path.exists()
    results.forget_cache()  # a new console process remembers nothing
    app = console(s)
    async with app.run_test(size=(80, 24)) as pilot:
        def read_ahead() -> results.ResultSet | None:
            built = results._built.get(str(s.root))
            return built[2] if built is not None else None

        await settle(pilot, lambda: read_ahead() is not None, "the results read ahead")
        rs = read_ahead()
        assert rs is not None
        month = rs.latest_month()
        assert month is not None and month.year is not None
        await settle(pilot, lambda: ("equity", ResultFilter(), results.ALL_TIME, None) in rs._figures,
                     "the first figures computed ahead")
        matrix = rs._figures[("matrix", ResultFilter(), month.year)]
        frames = first_frames(app)
        screen = await open_results(pilot)
        assert screen.rs is rs and screen.view is not None
        assert screen.view.matrix is matrix  # the figures computed ahead, not again
        # read in the screen's mount, not by a worker: its very first frame holds the figures
        assert frames and frames[0] is True
        await pilot.press("escape", "q")


def first_frames(app: QtswApp) -> list[bool]:
    """Per frame the results screen is painted with (as a terminal would be sent it), whether
    it showed the figures."""
    frames: list[bool] = []
    display = app._display

    def watch(screen, renderable) -> None:
        display(screen, renderable)
        if renderable is not None and isinstance(screen, ResultsScreen) and not app._batch_count:
            frames.append(screen.view is not None)

    app._display = watch
    return frames


@pytest.mark.anyio
async def test_results_opened_again_show_a_changed_file_at_once(tmp_path):
    """The second look at the results: their files' keys are checked as the screen mounts, so
    the first frame shows the figures, and a monthly file removed since is gone from them."""
    s = make_root(tmp_path, write_fixture)
    app = console(s)
    async with app.run_test(size=(160, 48)) as pilot:
        frames = first_frames(app)
        res = await open_results(pilot)
        assert frames[0] is False  # the first look: read by a worker, the frame says so
        assert "CL1" in res.view.matrix.streams
        await pilot.press("escape")
        for path in results.monthly_files(s)["CL1"]:
            path.unlink()
        frames.clear()
        res = await open_results(pilot)
        assert frames[0] is True
        assert "CL1" not in res.view.matrix.streams
        assert [r[0] for r in text_rows(res, "#results-matrix")] == ["ES1", "ES2", "MES1", "Total"]
        await pilot.press("escape", "q")


@pytest.mark.anyio
async def test_a_root_without_results_says_so(tmp_path):
    s = make_root(tmp_path, lambda s: None)
    app = console(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        res = pilot.app.screen
        status = res.query_one("#results-status", Static)
        await settle(pilot, lambda: "no monthly results yet" in str(status.content), "the empty notice")
        await pilot.press("x")
        await pilot.press("escape", "q")


# --- snapshots ------------------------------------------------------------------------------------


@pytest.fixture
def year_root(tmp_path) -> Settings:
    return make_root(tmp_path, write_year)


def opened(*keys: str) -> Callable:
    async def run_before(pilot) -> None:
        res = await open_results(pilot)
        for key in keys:
            before = res.view
            await pilot.press(key)
            await settle(pilot, lambda b=before, k=key: res.view is not b or k in "123", f"the view after {key}")
        if "3" in keys:  # the curve is drawn when its tab opens: wait for its note and the plot
            note = res.query_one("#results-equity-note", Static)
            await settle(pilot, lambda: "max drawdown" in str(note.content), "the equity curve")
            plot = res.query_one("#results-equity", PlotextPlot)
            await settle(pilot, lambda: plot.size.width > 0, "the plot's size")
        await pilot.pause(0.2)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("color", [True, False], ids=["color", "no_color"])
def test_results_matrix_and_stream_statistics_snapshot(year_root, snap_compare, monkeypatch, size, color):
    if not color:
        monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(console(year_root), terminal_size=size, run_before=opened("n"))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("color", [True, False], ids=["color", "no_color"])
def test_results_equity_curve_snapshot(year_root, snap_compare, monkeypatch, size, color):
    if not color:
        monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(console(year_root), terminal_size=size, run_before=opened("3"))
