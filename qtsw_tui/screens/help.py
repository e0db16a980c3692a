"""Help: every key of the console, as currently bound (remapped keys included)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# Keys that belong to panels and screens rather than the app (shown for completeness).
PANEL_KEYS = [
    ("Events", "f", "cycle the stage filter"),
    ("Events", "v", "verbose: show log, progress and metric events"),
    ("Events", "Esc", "clear the filter"),
    ("Stage pane", "End", "follow new output again"),
    ("History", "Enter", "open the run's detail"),
    ("Results", "[ / ]", "previous / next month"),
    ("Any screen", "Esc", "back"),
]


class HelpScreen(ModalScreen[None]):
    """All keys: the app's bindings (with their current keys) and the panel keys."""

    BINDINGS = [
        Binding("escape,question_mark,q", "app.pop_screen", "Back", id="help.back"),
    ]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, desc in self.keys:
            table.add_row(key, desc)
        table.add_row("", "")
        for where, key, desc in PANEL_KEYS:
            table.add_row(key, Text.assemble((f"{where}: ", "dim"), desc))
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys"
            box.border_subtitle = "Esc back"
            yield Static(table)
