"""Run history: past runs from ``logs/runs.jsonl``, newest first; Enter opens a run."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from pipeline_core import history
from pipeline_core.settings import Settings
from qtsw_tui.screens.run_detail import RunDetailScreen
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import clock_time, duration, run_seconds, short_id, state_mark
from qtsw_tui.widgets.header import StatusHeader

HISTORY_LIMIT = 1000
STAGE_LETTERS = (("translator", "T"), ("analyzer", "A"), ("merger", "M"))


def stages_cell(stages: dict[str, Any] | None) -> Text:
    """``T✓ A! M-``: each stage's letter and state mark."""
    t = Text()
    for name, letter in STAGE_LETTERS:
        state = (stages or {}).get(name)
        mark, style = state_mark(state) if state else ("?", "dim")
        if t:
            t.append(" ")
        t.append(f"{letter}{mark}", style=style)
    return t


def status_cell(status: str | None) -> Text:
    mark, style = state_mark(status)
    return Text(f"{mark} {status or '?'}", style=style)


class HistoryScreen(Screen[None]):
    """The past runs; ``Enter`` opens one (stages, durations, errors, events, logs)."""

    BINDINGS = [
        Binding("escape,h", "app.pop_screen", "Back", id="history.back"),
        Binding("f5", "reload", "Reload", id="history.reload"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.runs: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield StatusHeader(classes="screen-header")  # an active run stays in sight
        yield Static("Run history", id="screen-title")
        table = DataTable(id="history-table", cursor_type="row")
        table.add_column("Started", key="started", width=14)
        table.add_column("Run", key="run", width=8)
        table.add_column("Trigger", key="trigger", width=8)
        table.add_column("Status", key="status", width=11)
        table.add_column("Time", key="time", width=7)
        table.add_column("Stages", key="stages", width=9)
        yield table
        yield Static("", id="history-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="history")
    def _load(self) -> list[dict[str, Any]]:
        runs = history.read_runs(self.settings, limit=HISTORY_LIMIT)
        self.app.call_from_thread(self._show, runs)
        return runs

    def _show(self, runs: list[dict[str, Any]]) -> None:
        self.runs = list(reversed(runs))  # newest first
        table = self.query_one("#history-table", DataTable)
        table.clear()
        for i, r in enumerate(self.runs):
            table.add_row(
                clock_time(r.get("started"), "%m-%d %H:%M:%S"),
                short_id(r.get("run_id")),
                str(r.get("trigger", "")),
                status_cell(r.get("status")),
                duration(run_seconds(r)),
                stages_cell(r.get("stages")),
                key=f"{r.get('run_id', '')}#{i}",
            )
        n = len(self.runs)
        note = f"{n} run{'s' if n != 1 else ''}" if n else "no runs yet"
        if len(runs) >= HISTORY_LIMIT:
            note += f" (the newest {HISTORY_LIMIT})"
        self.query_one("#history-status", Static).update(f"{note} · Enter: details · Esc: back")
        table.focus()

    @on(DataTable.RowSelected, "#history-table")
    def _open(self, message: DataTable.RowSelected) -> None:
        idx = message.cursor_row
        if 0 <= idx < len(self.runs):
            self.app.push_screen(RunDetailScreen(self.settings, self.runs[idx]))
