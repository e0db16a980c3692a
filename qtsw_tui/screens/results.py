"""Results for a trader: the stream × month matrix in dollars, statistics per stream for a
month, its year and all time, and an equity curve with its drawdown.

Everything is read and computed in a worker thread (:mod:`pipeline_core.results`, which reads
only the columns it needs and each monthly file once); the screen only fills its tables.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer
from textual.screen import Screen
from textual.widgets import DataTable, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from pipeline_core import catalog, clock, results
from pipeline_core.fsutil import write_bytes_atomic
from pipeline_core.results import (
    ALL,
    ALL_TIME,
    Curve,
    Matrix,
    Period,
    ResultFilter,
    ResultSet,
    Stats,
)
from pipeline_core.settings import Settings
from qtsw_tui.resultscmd import (
    MONTHS,
    NO_ROWS,
    STAT_HEADINGS,
    csv_text,
    describe_filter,
    money,
    stat_cells,
)
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import key_label
from qtsw_tui.widgets.header import StatusHeader, stale_notice

PLOT_POINTS = 400  # an equity curve is drawn from at most this many dates (bucket ends)


def month_label(year: int, month: int) -> str:
    return f"{year}-{month:02d}"


def _sign_style(value: float | None) -> str:
    return "" if not value else "green" if value > 0 else "red"


def matrix_text(m: Matrix, stream: str | None) -> Text:
    """The matrix as one text: a row per stream and the totals, each figure signed and
    coloured; the chosen stream's name (or Total's, for all streams) is marked with ``>``."""
    cells = {s: [money(v) + ("*" if (s, k + 1) in m.provisional else "") if v is not None else NO_ROWS
                 for k, v in enumerate(m.cells[s])] for s in m.streams}
    width = max([7, *(len(c) for row in cells.values() for c in row),
                 *(len(money(v)) for v in m.column_totals if v is not None)]) + 1
    total_width = max([9, *(len(money(v)) + 1 for v in [*m.row_totals.values(), m.total] if v is not None)])
    out = Text(no_wrap=True, overflow="ignore")
    out.append(f"  {'Stream':<6}" + "".join(f"{x:>{width}}" for x in MONTHS) + f"{'Total':>{total_width}}\n",
               style="bold")
    rows = [(s, cells[s], m.cells[s], m.row_totals[s]) for s in m.streams]
    rows.append((ALL, [money(v) if v is not None else NO_ROWS for v in m.column_totals], m.column_totals, m.total))
    for name, texts, values, total in rows:
        chosen = name == (stream or ALL)
        label = "Total" if name == ALL else name
        out.append(("> " if chosen else "  ") + f"{label:<6}", style="bold reverse" if chosen else "bold")
        for text, value in zip(texts, values, strict=True):
            out.append(f"{text:>{width}}", style=_sign_style(value) if value is not None else "dim")
        out.append(f"{money(total) if total is not None else NO_ROWS:>{total_width}}", style="bold " + _sign_style(total))
        out.append("\n")
    out.rstrip()
    return out


def stream_stats_text(name: str, stats: list[tuple[Period, Stats]]) -> Text:
    """One stream's statistics per period, as aligned text with signed, coloured money."""
    heads = ["Period", *STAT_HEADINGS]
    rows = [[p.label, *stat_cells(st)] for p, st in stats]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    money_cols = {STAT_HEADINGS.index(h) + 1 for h in ("Avg trade", "Dollars")}
    dd_col = STAT_HEADINGS.index("Max DD") + 1
    out = Text(no_wrap=True, overflow="ignore")
    out.append(f"{name:<7} " + " ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(heads, widths, strict=True))) + "\n",
               style="bold")
    for (_, st), row in zip(stats, rows, strict=True):
        out.append(" " * 8)
        for i, (c, w) in enumerate(zip(row, widths, strict=True)):
            style = ""
            if i in money_cols:
                style = _sign_style(st.profit_dollars if i == STAT_HEADINGS.index("Dollars") + 1 else st.average_trade)
            elif i == dd_col and st.max_drawdown:
                style = "red"
            out.append((" " if i else "") + (f"{c:>{w}}" if i else f"{c:<{w}}"), style=style)
        out.append("\n")
    out.rstrip()
    return out


@dataclass
class View:
    """What the screen shows, computed off the UI thread."""

    year: int
    month: Period
    stream: str | None
    matrix: Matrix
    stream_stats: list[tuple[Period, Stats]]
    all_stats: list[tuple[str, Period, Stats]]
    curve: Curve
    curve_stats: Stats
    every_stream: bool = True


def compute_view(rs: ResultSet, flt: ResultFilter, year: int, month: Period, stream: str | None,
                 every_stream: bool = True) -> View:
    """The figures of the view; ``every_stream`` False leaves the statistics tab's rows out
    (computed when that tab is opened)."""
    periods = [month, Period(year), ALL_TIME]
    stream_stats = [(p, rs.stats(flt, p, stream)) for p in periods]
    return View(
        year=year,
        month=month,
        stream=stream,
        matrix=rs.matrix(flt, year),
        stream_stats=stream_stats,
        every_stream=every_stream,
        all_stats=[(s or ALL, p, rs.stats(flt, p, s)) for s in [*rs.shown_streams(flt), None] for p in periods]
        if every_stream else [],
        curve=rs.equity(flt, ALL_TIME, stream),
        curve_stats=stream_stats[-1][1],  # all time: the curve's own figures
    )


def thin_curve(curve: Curve, points: int = PLOT_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``points`` dates: per bucket its last equity and its deepest drawdown."""
    n = len(curve.days)
    if n <= points:
        return curve.days, curve.equity, curve.drawdown
    edges = np.linspace(0, n, points + 1).astype(int)
    ends = edges[1:] - 1
    return curve.days[ends], curve.equity[ends], np.minimum.reduceat(curve.drawdown, edges[:-1])


class ResultsScreen(Screen[None]):
    """The matrix of a year, statistics and the equity curve; keys step and filter."""

    BINDINGS = [
        Binding("escape,s", "app.pop_screen", "Back", id="results.back"),
        Binding("left_square_bracket", "step_month(-1)", "Month-", id="results.prev"),
        Binding("right_square_bracket", "step_month(1)", "Month+", id="results.next"),
        Binding("left_curly_bracket", "step_year(-1)", "Year-", show=False, id="results.prev_year"),
        Binding("right_curly_bracket", "step_year(1)", "Year+", show=False, id="results.next_year"),
        Binding("n", "step_stream(1)", "Stream", id="results.stream"),
        Binding("N", "step_stream(-1)", "Stream-", show=False, id="results.prev_stream"),
        Binding("f", "step_session", "Session", show=False, id="results.session"),
        Binding("o", "step_slot", "Slot", show=False, id="results.slot"),
        Binding("v", "toggle_provisional", "Provisional", show=False, id="results.provisional"),
        Binding("x", "export", "Export", id="results.export"),
        Binding("1", "tab('tab-matrix')", "Matrix", show=False, id="results.tab_matrix"),
        Binding("2", "tab('tab-stats')", "Statistics", show=False, id="results.tab_stats"),
        Binding("3", "tab('tab-equity')", "Equity", show=False, id="results.tab_equity"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.rs: ResultSet | None = None
        self.flt = ResultFilter()
        self.year: int | None = None
        self.month: Period | None = None
        self.stream: str | None = None  # None: all streams
        self.view: View | None = None
        self.stale: dict[str, str] = {}
        self.exported: Path | None = None  # the last CSV written by ``x``
        self.delivered = ""  # the last CSV handed to the browser by ``x`` (qtsw web)

    def compose(self) -> ComposeResult:
        yield StatusHeader(classes="screen-header")  # an active run stays in sight
        with Horizontal(id="results-top"):
            yield Static("Results", id="screen-title")
        with TabbedContent(id="results-tabs", initial="tab-matrix"):
            with TabPane("Matrix", id="tab-matrix"):
                # plain text, not tables: one renderable paints far faster than a table's cells
                with ScrollableContainer(id="results-matrix-box"):
                    yield Static("", id="results-matrix")
                with ScrollableContainer(id="results-stream-box"):
                    yield Static("", id="results-stream")
            with TabPane("Statistics", id="tab-stats"):
                yield DataTable(id="results-stats", cursor_type="row", fixed_columns=2)
            with TabPane("Equity", id="tab-equity"):
                yield PlotextPlot(id="results-equity")
                yield Static("", id="results-equity-note")
        yield Static("reading the monthly results …", id="results-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        if results.remembered(self.settings):
            # Read before (ahead, or at an earlier look): checking the files' keys and taking
            # the remembered figures is a few milliseconds, so the figures are there at the
            # screen's first paint, without a worker's round trip and a second layout.
            self._loaded(*self._read(), view=True)
        else:
            self._load()

    # --- reading (worker threads) ---------------------------------------------------------
    def _read(self) -> tuple[ResultSet, dict[str, str]]:
        rs = results.load_results(self.settings)
        try:
            stale = catalog.stale_results(self.settings)
        except Exception:  # the catalogue's own trouble is shown by the counters
            stale = {}
        return rs, stale

    @work(thread=True, exclusive=True, exit_on_error=False, group="results-load")
    def _load(self) -> None:
        rs, stale = self._read()
        latest = rs.latest_month()
        # the first view's figures in the same thread: one hop back to the screen
        flt, stream = self.flt, self.stream
        first = None if latest is None else (flt, compute_view(rs, flt, latest.year, latest, stream, False))
        self.app.call_from_thread(self._loaded, rs, stale, first)

    def _loaded(self, rs: ResultSet, stale: dict[str, str],
                first: tuple[ResultFilter, View] | None = None, *, view: bool = False) -> None:
        """The results read; ``first`` the newest month's figures computed with them, or
        ``view`` to compute those here."""
        self.rs, self.stale = rs, stale
        latest = rs.latest_month()
        if latest is None:
            self._status("no monthly results yet")
            return
        self.year, self.month = latest.year, latest
        if view:
            first = (self.flt, compute_view(rs, self.flt, latest.year, latest, self.stream, False))
        stats_tab = self.query_one("#results-tabs", TabbedContent).active == "tab-stats"
        if first is not None and first[0] == self.flt and first[1].stream == self.stream and not stats_tab:
            self._show(*first)
        else:  # the operator moved on while they were read, or wants every stream's rows
            self._recompute()

    def _recompute(self) -> None:
        if self.rs is None or self.year is None or self.month is None:
            return
        every = self.query_one("#results-tabs", TabbedContent).active == "tab-stats"
        self._compute(self.rs, self.flt, self.year, self.month, self.stream, every)

    @work(thread=True, exclusive=True, exit_on_error=False, group="results-view")
    def _compute(self, rs: ResultSet, flt: ResultFilter, year: int, month: Period, stream: str | None,
                 every_stream: bool) -> None:
        view = compute_view(rs, flt, year, month, stream, every_stream)
        self.app.call_from_thread(self._show, flt, view)

    @on(TabbedContent.TabActivated, "#results-tabs")
    def _tab_shown(self, message: TabbedContent.TabActivated) -> None:
        if self.view is None:
            return
        if message.pane.id == "tab-stats":
            if self.view.every_stream:
                self._fill_stats(self.view)
            else:
                self._recompute()
        elif message.pane.id == "tab-equity":
            self._draw_curve(self.view)

    # --- showing ----------------------------------------------------------------------------
    def _show(self, flt: ResultFilter, view: View) -> None:
        if flt != self.flt or view.year != self.year or view.month != self.month or view.stream != self.stream:
            return  # the operator moved on meanwhile
        self.view = view
        with self.app.batch_update():
            self._fill_matrix(view)
            self._fill_stream(view)
            if view.every_stream:
                self._fill_stats(view)
            self._draw_curve(view)
            self._title(view)
            self._status()

    def _title(self, view: View) -> None:
        who = view.stream or "all streams"
        self.query_one("#screen-title", Static).update(
            f"Results {view.year} · stats {view.month.label} · {who} · $ per contract · {describe_filter(self.flt)}"
        )

    def _fill_matrix(self, view: View) -> None:
        self.query_one("#results-matrix", Static).update(matrix_text(view.matrix, view.stream))

    def _stat_row(self, st: Stats) -> list[Text]:
        cells = stat_cells(st)
        out = [Text(c, justify="right") for c in cells]
        for i, value in ((STAT_HEADINGS.index("Dollars"), st.profit_dollars),
                         (STAT_HEADINGS.index("Avg trade"), st.average_trade)):
            if value:
                out[i].stylize("green" if value > 0 else "red")
        if st.max_drawdown:
            out[STAT_HEADINGS.index("Max DD")].stylize("red")
        return out

    def _fill_stream(self, view: View) -> None:
        self.query_one("#results-stream", Static).update(stream_stats_text(view.stream or ALL, view.stream_stats))

    def _fill_stats(self, view: View) -> None:
        table = self.query_one("#results-stats", DataTable)
        if not table.columns:
            table.add_column("Stream", key="stream", width=6)
            table.add_column("Period", key="period", width=7)
            for h in STAT_HEADINGS:
                table.add_column(h, key=h)
        table.clear()
        for s, p, st in view.all_stats:
            table.add_row(Text(s if p == view.month else "", style="bold"), Text(p.label),
                          *self._stat_row(st), key=f"{s} {p.label}")

    def _draw_curve(self, view: View) -> None:
        plot = self.query_one("#results-equity", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        days, equity, drawdown = thin_curve(view.curve)
        who = view.stream or "all streams"
        st = view.curve_stats
        if not len(days):
            plt.title(f"{who}: no trades")
            plot.refresh()
            self.query_one("#results-equity-note", Static).update("")
            return
        x = list(range(len(days)))
        plt.plot(x, equity.tolist(), label="equity $", marker="braille", color="green")
        plt.plot(x, drawdown.tolist(), label="drawdown $", marker="·", color="red")
        # ticks at the first date of each year (or of each month, for a short history)
        span = days.astype("datetime64[Y]")
        short = len(np.unique(span)) <= 2
        if short:
            span = days.astype("datetime64[M]")
        first = [i for i in range(len(days)) if i == 0 or span[i] != span[i - 1]]
        ticks = first[:: -(-len(first) // 6)]  # at most 6 labels: they fit 80 columns
        plt.xticks(ticks, [str(days[i])[:7] if short else str(days[i])[:4] for i in ticks])
        plt.title(f"{who}: cumulative $ per contract over trade dates, all time")
        plot.refresh()
        worst = int(np.argmin(view.curve.drawdown))
        self.query_one("#results-equity-note", Static).update(
            f"{who}: {money(st.profit_dollars)} over {st.trades} trades from {view.curve.days[0]} to "
            f"{view.curve.days[-1]} · max drawdown {money(-(st.max_drawdown or 0))}"
            + (f" (to {view.curve.days[worst]})" if st.max_drawdown else "")
        )

    def _status(self, text: str | None = None) -> None:
        parts = []
        shown = [s for s in (self.rs.streams if self.rs else []) if s in self.stale]
        if shown:
            parts.append(stale_notice(shown))
        if self.rs is not None and self.rs.problems:
            parts.append(f"{len(self.rs.problems)} unreadable monthly file(s) left out: {self.rs.problems[0]}")
        if self.rs is not None and self.rs.no_point_value:
            parts.append(f"no point value for {', '.join(self.rs.no_point_value)} (n/a)")
        if text:
            parts.append(text)
        else:
            app = self.app
            parts.append(
                f"{key_label(app, 'results.prev_year', '{')} {key_label(app, 'results.next_year', '}')} year · "
                f"{key_label(app, 'results.session', 'f')} session · {key_label(app, 'results.slot', 'o')} slot · "
                f"{key_label(app, 'results.provisional', 'v')} provisional (*) · "
                f"{key_label(app, 'results.tab_matrix', '1')} {key_label(app, 'results.tab_stats', '2')} "
                f"{key_label(app, 'results.tab_equity', '3')} matrix, statistics, equity"
            )
        self.query_one("#results-status", Static).update(Text(" · ".join(parts)))

    # --- keys ---------------------------------------------------------------------------------
    def _months(self) -> list[Period]:
        if self.rs is None:
            return []
        m = self.rs.mask(self.flt)
        keys = np.unique(self.rs.year[m].astype(np.int32) * 12 + self.rs.month[m].astype(np.int32) - 1)
        return [Period(int(k // 12), int(k % 12) + 1) for k in keys]

    def action_step_month(self, delta: int) -> None:
        months = self._months()
        if not months or self.month is None:
            return
        later = [p for p in months if (p.year, p.month) > (self.month.year, self.month.month)]
        earlier = [p for p in months if (p.year, p.month) < (self.month.year, self.month.month)]
        target = (later[0] if later else None) if delta > 0 else (earlier[-1] if earlier else None)
        if target is not None:
            self.month, self.year = target, target.year
            self._recompute()

    def action_step_year(self, delta: int) -> None:
        months = self._months()
        years = sorted({p.year for p in months})
        if self.year is None or not years:
            return
        later = [y for y in years if y > self.year]
        earlier = [y for y in years if y < self.year]
        target = (later[0] if later else None) if delta > 0 else (earlier[-1] if earlier else None)
        if target is not None:
            self.year = target
            self.month = [p for p in months if p.year == target][-1]
            self._recompute()

    def action_step_stream(self, delta: int) -> None:
        if self.rs is None:
            return
        choices: list[str | None] = [None, *self.rs.shown_streams(self.flt)]
        i = choices.index(self.stream) if self.stream in choices else 0
        self.choose_stream(choices[(i + delta) % len(choices)])

    def choose_stream(self, stream: str | None) -> None:
        """Statistics and the equity curve of one stream (None: all streams)."""
        if stream != self.stream:
            self.stream = stream
            self._recompute()

    def _cycle(self, current: frozenset[str] | None, names: list[str]) -> frozenset[str] | None:
        choices: list[frozenset[str] | None] = [None, *(frozenset({n}) for n in names)]
        i = choices.index(current) if current in choices else 0
        return choices[(i + 1) % len(choices)]

    def action_step_session(self) -> None:
        if self.rs is not None:
            self.flt = replace(self.flt, sessions=self._cycle(self.flt.sessions, self.rs.sessions))
            self._refilter()

    def action_step_slot(self, *_: Any) -> None:
        if self.rs is not None:
            self.flt = replace(self.flt, slots=self._cycle(self.flt.slots, self.rs.slots))
            self._refilter()

    def action_toggle_provisional(self) -> None:
        self.flt = replace(self.flt, provisional=not self.flt.provisional)
        self._refilter()

    def _refilter(self) -> None:
        if self.rs is not None and self.stream is not None and self.stream not in self.rs.shown_streams(self.flt):
            self.stream = None
        months = self._months()
        if months and self.month not in months:
            in_year = [p for p in months if p.year == self.year]
            self.month = in_year[-1] if in_year else months[-1]
            self.year = self.month.year
        self._recompute()

    def action_tab(self, tab: str) -> None:
        self.query_one("#results-tabs", TabbedContent).active = tab

    def action_export(self) -> None:
        if self.rs is None or self.year is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        text = csv_text(self.rs, self.flt, self.year)
        name = f"results_{self.year}_{clock.now():%Y%m%d_%H%M%S}.csv"
        if self.app.is_web:
            # in a browser (qtsw web) the file goes to the person looking at it, not to the
            # server's disk: the browser downloads it
            self.app.deliver_text(io.StringIO(text), save_filename=name, mime_type="text/csv",
                                  encoding="utf-8")
            self.delivered = name
            self.notify(f"{name}: your browser downloads it", title="Results", markup=False)
            return
        path = self.settings.exports_dir / name
        try:
            write_bytes_atomic(path, text.encode())
        except OSError as exc:
            self.notify(f"Export failed: {path}: {exc.strerror or exc}", severity="error", markup=False)
            return
        self.exported = path
        self.notify(f"Exported to {path}", title="Results", markup=False)
