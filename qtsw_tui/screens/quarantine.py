"""The quarantine: each rejected file, when, which rule at which line, why; ``r`` puts the
selected file back into ``data/raw`` once the operator has fixed it (it goes through every
check again at the next run)."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from pipeline_core.quarantine import QuarantinedFile, quarantined, requeue
from pipeline_core.settings import Settings
from pipeline_core.usage import describe_os_error
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import key_label


class QuarantineScreen(Screen[None]):
    """The quarantined files, newest first; the selected one's full reason below."""

    BINDINGS = [
        Binding("escape,u", "app.pop_screen", "Back", id="quarantine.back"),
        Binding("r", "requeue", "Re-queue", id="quarantine.requeue"),
        Binding("f5", "reload", "Reload", id="quarantine.reload"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.files: list[QuarantinedFile] = []

    def compose(self) -> ComposeResult:
        yield Static("Quarantine: files the translator rejected", id="screen-title")
        table = DataTable(id="quarantine-table", cursor_type="row")
        table.add_column("File", key="file", width=30)
        table.add_column("Rejected", key="when", width=11)
        table.add_column("Rule", key="rule", width=16)
        table.add_column("Line", key="line", width=6)
        table.add_column("Reason", key="reason", width=60)
        yield table
        yield Static("", id="quarantine-detail", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="quarantine")
    def _load(self) -> None:
        files = quarantined(self.settings)
        self.app.call_from_thread(self._show, files)

    def _show(self, files: list[QuarantinedFile]) -> None:
        self.files = files
        table = self.query_one("#quarantine-table", DataTable)
        table.clear()
        for q in files:
            when = q.rejected_at.strftime("%m-%d %H:%M") if q.rejected_at else "-"
            table.add_row(q.name, when, q.rule, q.line, q.reason, key=q.name)
        if files:
            table.focus()
        self._describe()

    @on(DataTable.RowHighlighted, "#quarantine-table")
    def _highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._describe()

    def selected(self) -> QuarantinedFile | None:
        table = self.query_one("#quarantine-table", DataTable)
        if not self.files or table.cursor_row < 0 or table.cursor_row >= len(self.files):
            return None
        return self.files[table.cursor_row]

    def _describe(self) -> None:
        detail = self.query_one("#quarantine-detail", Static)
        q = self.selected()
        if q is None:
            detail.update(Text("No quarantined files." if not self.files else ""))
            return
        key = key_label(self.app, "quarantine.requeue", "r")
        when = q.rejected_at.strftime("%Y-%m-%d %H:%M:%S %Z") if q.rejected_at else "-"
        detail.update(Text(
            f"{q.name}: rejected {when} by run {q.run_id[:8]}: rule {q.rule}, line {q.line}: {q.reason}\n"
            f"Fix the file in {q.path.parent}, then {key} re-queues it: it goes back to data/raw and "
            "through every check at the next run."
        ))

    def action_requeue(self) -> None:
        q = self.selected()
        if q is None:
            self.notify("Nothing to re-queue.")
            return
        try:
            dest = requeue(self.settings, q.name)
        except OSError as exc:
            self.notify(f"Not re-queued: {describe_os_error(exc)}", severity="error", markup=False)
            return
        self.notify(f"{q.name} re-queued: {dest}; the next run checks it again.", markup=False)
        self.action_reload()
