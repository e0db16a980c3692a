"""Alerts: the active ones (worst first), then the recently recovered; ``a`` acknowledges the
alert under the cursor, which silences its reminders until it recovers."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import clock_time

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


class AlertsScreen(Screen[None]):
    """Active and recent alerts of the engine's alert monitor."""

    BINDINGS = [
        Binding("escape,exclamation_mark", "app.pop_screen", "Back", id="alerts.back"),
        Binding("a", "acknowledge", "Acknowledge", id="alerts.acknowledge"),
    ]

    def __init__(self, monitor: Any) -> None:
        super().__init__()
        self.monitor = monitor
        self.keys: list[str | None] = []  # per row: the key of an active alert, None for a recovered one

    def compose(self) -> ComposeResult:
        yield Static("Alerts", id="screen-title")
        table = DataTable(id="alerts-table", cursor_type="row")
        table.add_column("Severity", key="severity", width=9)
        table.add_column("Since", key="since", width=11)
        table.add_column("State", key="state", width=12)
        table.add_column("Alert", key="message")
        yield table
        yield Static("", id="alerts-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.monitor.listeners.append(self._changed)
        self.reload()

    def on_unmount(self) -> None:
        if self._changed in self.monitor.listeners:
            self.monitor.listeners.remove(self._changed)

    def _changed(self) -> None:
        # told by the engine (its loop or a delivery thread): repaint on the console's loop
        self.app.call_later(self.reload)

    def reload(self) -> None:
        table = self.query_one("#alerts-table", DataTable)
        row = table.cursor_row
        table.clear()
        self.keys = []
        active, recent = self.monitor.active(), self.monitor.recent(50)
        for a in active:
            state = Text("acknowledged", style="dim") if a.acknowledged else Text("active", style="bold")
            table.add_row(Text(a.severity, style=SEVERITY_STYLE.get(a.severity, "")),
                          clock_time(a.first_seen, "%m-%d %H:%M"), state, Text(a.message), key=f"a:{a.key}")
            self.keys.append(a.key)
        for i, a in enumerate(recent):
            table.add_row(Text(a.severity, style="dim"), clock_time(a.first_seen, "%m-%d %H:%M"),
                          Text("recovered", style="green"), Text(a.message, style="dim"), key=f"r:{i}:{a.key}")
            self.keys.append(None)
        if self.keys:
            table.move_cursor(row=min(max(row, 0), len(self.keys) - 1))
        open_ = sum(1 for a in active if not a.acknowledged)
        self.query_one("#alerts-status", Static).update(
            f"{len(active)} active ({open_} not acknowledged), {len(recent)} recovered"
            " · a: acknowledge · Esc: back")
        table.focus()

    def action_acknowledge(self) -> None:
        table = self.query_one("#alerts-table", DataTable)
        idx = table.cursor_row
        key = self.keys[idx] if 0 <= idx < len(self.keys) else None
        if key is None:
            self.notify("Only an active alert can be acknowledged.", severity="warning")
            return
        if self.monitor.acknowledge(key):
            self.notify(f"Acknowledged: no reminders for {key} until it recovers.")
        self.reload()
