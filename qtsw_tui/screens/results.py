"""Results: per stream, counts by Result, win rate and profit for a chosen month."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Select, Static

from pipeline_core import catalog, results
from pipeline_core.settings import Settings
from qtsw_tui.widgets.format import key_label
from qtsw_tui.widgets.header import stale_notice

RESULT_COLUMNS = ("Win", "BE", "Loss", "TIME", "NoTrade")


def month_label(year: int, month: int) -> str:
    return f"{year}-{month:02d}"


def profit_cell(profit: float) -> Text:
    style = "green" if profit > 0 else "red" if profit < 0 else ""
    return Text(f"{profit:+,.2f}", style=style, justify="right")


class ResultsScreen(Screen[None]):
    """Monthly results per stream; ``[`` / ``]`` step through the months."""

    BINDINGS = [
        Binding("escape,s", "app.pop_screen", "Back", id="results.back"),
        Binding("left_square_bracket", "step(-1)", "Prev month", id="results.prev"),
        Binding("right_square_bracket", "step(1)", "Next month", id="results.next"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.months: list[tuple[int, int]] = []
        self.month: tuple[int, int] | None = None
        self.summaries: list[Any] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="results-top"):
            yield Static("Results", id="screen-title")
            yield Select([], prompt="month", id="results-month", allow_blank=True)
        table = DataTable(id="results-table", cursor_type="row")
        table.add_column("Stream", key="stream", width=7)
        for name in RESULT_COLUMNS:
            table.add_column(name, key=name, width=max(4, len(name)))
        table.add_column("Trades", key="trades", width=6)
        table.add_column("Win%", key="winrate", width=6)
        table.add_column("Profit", key="profit", width=10)
        table.add_column("Prov", key="prov", width=4)
        yield table
        yield Static("", id="results-status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._load_months()

    @work(thread=True, exclusive=True, exit_on_error=False, group="results-months")
    def _load_months(self) -> None:
        months = sorted(results.available_months(self.settings))
        self.app.call_from_thread(self._show_months, months)

    def _show_months(self, months: list[tuple[int, int]]) -> None:
        self.months = months
        select = self.query_one("#results-month", Select)
        select.set_options([(month_label(y, m), (y, m)) for y, m in reversed(months)])
        if months:
            self.choose(months[-1])
        else:
            self.query_one("#results-status", Static).update("no monthly results yet")

    def choose(self, month: tuple[int, int]) -> None:
        """Show a month (also moves the chooser)."""
        self.month = month
        select = self.query_one("#results-month", Select)
        if select.value != month:
            select.value = month
        self._load_month(*month)

    def action_step(self, delta: int) -> None:
        if not self.months or self.month not in self.months:
            return
        i = self.months.index(self.month) + delta
        if 0 <= i < len(self.months):
            self.choose(self.months[i])

    @on(Select.Changed, "#results-month")
    def _month_chosen(self, message: Select.Changed) -> None:
        if isinstance(message.value, tuple) and message.value != self.month:
            self.choose(message.value)

    @work(thread=True, exclusive=True, exit_on_error=False, group="results-month")
    def _load_month(self, year: int, month: int) -> None:
        rows = results.summarize_month(self.settings, year, month)
        try:
            stale = catalog.stale_results(self.settings)
        except Exception:  # the catalogue's own trouble is shown by the counters
            stale = {}
        self.app.call_from_thread(self._show_month, (year, month), rows, stale)

    def _show_month(self, month: tuple[int, int], rows: list[Any], stale: dict[str, str] | None = None) -> None:
        if month != self.month:
            return  # the operator moved on meanwhile
        self.summaries = rows
        table = self.query_one("#results-table", DataTable)
        table.clear()
        tot_counts = dict.fromkeys(RESULT_COLUMNS, 0)
        for s in rows:
            counts = dict(s.counts)
            for name in RESULT_COLUMNS:
                tot_counts[name] += int(counts.get(name, 0))
            table.add_row(
                s.stream,
                *(Text(str(counts.get(name, 0)), justify="right") for name in RESULT_COLUMNS),
                Text(str(s.trades), justify="right"),
                Text("-" if s.win_rate is None else f"{100 * s.win_rate:.1f}", justify="right"),
                profit_cell(float(s.profit)),
                Text(str(s.provisional) if s.provisional else "", justify="right"),
                key=s.stream,
            )
        streams = len(rows)
        shown = [s.stream for s in rows if s.stream in (stale or {})]
        notice = (f"{stale_notice(shown)} · " if shown else "")
        self.query_one("#results-status", Static).update(
            notice
            + f"{month_label(*month)}: {streams} streams · "
            + " · ".join(f"{n} {k}" for k, n in tot_counts.items())
            + " · profit in points · Prov = provisional rows · "
            + f"{key_label(self.app, 'results.prev', '[')} {key_label(self.app, 'results.next', ']')} month"
        )
